"""`python -m blastjax.reproduce`: the papers' tables as data (every row's config loads and
validates, full and smoke), the table's numbers (intervals equal to the runs' own,
t-intervals over seeds and folds), a two-row table end to end (outputs, resume after
kill -9, --collect, missing runs, settings kept), and its errors."""

import json
import math
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from blastjax import config_presets, config_validation, evaluate, launch, reproduce, table_report, table_stats, tables
from blastjax.testing import tiny as th

RUN = dict(num_steps=8, checkpoint_every_steps=4, validation_fraction=0.0, eval_checkpoint="last")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return th.build_small_dataset(str(tmp_path_factory.mktemp("data")))


def _tiny_table(folder, data_dir, name="tiny", video_steps=8, **table_fields):
  image = th.write_config_file(os.path.join(folder, "image.py"), "tiny_image", data_dir=data_dir, **RUN)
  video = th.write_config_file(os.path.join(folder, "video.py"), "tiny_video", data_dir=data_dir,
                               **{**RUN, "num_steps": video_steps})
  rows = (tables.Row("image", "Tiny image", image, {"accuracy": 70.0}, 0.01, group="T"),
          tables.Row("video", "Tiny video", video, {"accuracy": 75.0, "auc": 0.8}, group="T"))
  return tables.Table(name, "Two tiny rows", "none.txt", rows, **table_fields)


# ------------------------------------------------------------------ the tables as data

BUILT_IN = [(name, row.key) for name, table in tables.TABLES.items() if name != "benchmark"
            for row in table.rows]


@pytest.mark.parametrize("smoke", [False, True], ids=["full", "smoke"])
@pytest.mark.parametrize("name,key", BUILT_IN, ids=[f"{n}-{k}" for n, k in BUILT_IN])
def test_every_row_of_every_table_loads_and_validates(name, key, smoke):
  table = tables.TABLES[name]
  settings = reproduce.Settings(name, smoke=smoke)
  row = next(r for r in table.rows if r.key == key)
  config = reproduce.row_config(table, row, settings)
  assert config_validation.validate(config) == [], (name, key)
  if smoke:
    assert config.dataset == "synthetic"
    for field, value in table.smoke.items():
      assert config[field] == value
  for field, value in row.overrides.items():
    assert config[field] == value


def test_the_benchmark_is_both_tables_and_the_papers_numbers_are_kept():
  t3, t4, both = (tables.TABLES[n] for n in ("benchmark_t3", "benchmark_t4", "benchmark"))
  assert len(t3.rows) == 14 and len(t4.rows) == 7 and both.rows == t3.rows + t4.rows
  paper = {row.key: (row.paper["accuracy"], row.paper_params) for row in both.rows}
  assert paper["r2p1d"] == (77.74, 31.30) and paper["densenet169"] == (74.72, 12.48)
  assert max(paper.values())[0] == 77.74 and max(v[0] for k, v in paper.items() if k in {r.key for r in t3.rows}) == 74.72
  ams = tables.TABLES["amsnet_t1"]
  assert [r.paper["early_area_from_0h"] for r in ams.rows][0::10] == [0.6987, 0.7633]
  assert len(ams.rows) == 11 and all(len(r.paper) == 15 for r in ams.rows)
  # Table 1's areas follow from its accuracies (trapezoid over the cut-offs / 168 h).
  for row in ams.rows:
    accuracy = [row.paper[f"accuracy_at_{h}h"] / 100 for h in tables.AMSNET_HOURS]
    assert abs(np.trapezoid(accuracy, tables.AMSNET_HOURS) / 168 - row.paper["early_area_from_0h"]) < 6e-4
  assert tables.TABLES["seizure"].repeat == "folds" and tables.TABLES["seizure"].count == 5


@pytest.mark.parametrize("key,count", [("resnet50", 23_512_130), ("densenet121", 6_955_906), ("r2p1d", 31_301_151),
                                       ("resnet_lstm", 22_191_106), ("mfnet", 7_690_306)])
def test_row_parameter_counts_are_the_models(key, count):
  """The table's blastjax count (train_step.count_parameters at the row's full config) and
  its nearness to the paper's count (to 0.06M: the paper's heads have other widths)."""
  from blastjax import train_step

  table = tables.TABLES["benchmark"]
  row = next(r for r in table.rows if r.key == key)
  counted = train_step.count_parameters(reproduce.row_config(table, row, reproduce.Settings("benchmark")))
  assert counted == count
  assert abs(counted / 1e6 - row.paper_params) < 0.06


def test_table_errors_name_what_is_wrong(tmp_path):
  with pytest.raises(tables.TableError, match="no such table; built in: benchmark_t3"):
    tables.get_table("benchmark_t5")
  with pytest.raises(tables.TableError, match="metric 'acc' is unknown"):
    tables.Table("x", "x", "", (tables.Row("a", "A", "r50.py", {"acc": 1.0}),))
  with pytest.raises(tables.TableError, match="row keys a appear twice"):
    tables.Table("x", "x", "", (tables.Row("a", "A", "r.py"), tables.Row("a", "B", "r.py")))
  with pytest.raises(tables.TableError, match="must be a folder name"):
    tables.Table("x", "x", "", (tables.Row("a/b", "A", "r.py"),))
  path = tmp_path / "t.json"
  for content, message in [("{", "not valid JSON"), ('{"rows": 3}', "a list 'rows'"),
                           ('{"rows": [], "colour": 1}', "unknown field.*colour"),
                           ('{"rows": [{"key": "a"}]}', "row 1: missing config, label"),
                           ('{"rows": [{"key": "a", "label": "A", "config": "c.py", "seed": 1}]}',
                            "row 1: unknown seed"),
                           ('{"rows": []}', "has no rows")]:
    path.write_text(content)
    with pytest.raises(tables.TableError, match=message):
      tables.get_table(str(path))
  with pytest.raises(tables.TableError, match="no such file"):
    tables.get_table(str(tmp_path / "none.json"))


def test_a_json_table_reads_relative_configs_from_its_folder(tmp_path):
  (tmp_path / "sub").mkdir()
  path = tmp_path / "sub" / "t.json"
  path.write_text(json.dumps({"name": "mine", "metric": "auc", "columns": ["accuracy"], "rows": [
      {"key": "a", "label": "A", "config": "./a.py:smoke", "paper": {"auc": 0.9}},
      {"key": "b", "label": "B", "config": "resnet50.py"}]}))
  table = tables.get_table(str(path))
  assert table.rows[0].config == str(tmp_path / "sub" / "a.py") + ":smoke"
  assert table.rows[1].config == "resnet50.py" and table.metrics == ("auc", "accuracy")


def test_config_overrides_are_typed_as_the_field():
  config = config_presets.load_config("r2p1d.py", "smoke")
  for field, text, value in [("batch_size", "4", 4), ("learning_rate", "1e-4", 1e-4), ("progress", "false", False),
                             ("early_hours", "30,60", (30, 60)), ("early_hours", "(20.0, 40.0)", (20.0, 40.0)),
                             ("model", "mc3_18", "mc3_18"), ("augmentation.preset", "none", "none"),
                             ("dataset_options.num_embryos", "50", 50)]:
    config_validation.set_field_from_text(config, field, text)
    assert config_validation.parse_field_text(config, field, text) == value
    assert (config[field.split(".")[0]][field.split(".")[1]] if "." in field else config[field]) == value
  for field, text, message in [("batch_size", "four", "--config.batch_size=four: expected int"),
                               ("progress", "maybe", "expected bool"), ("nope", "1", "config field 'nope' is unknown"),
                               ("model.size", "1", "config.model is not a config section")]:
    with pytest.raises(ValueError, match=message):
      config_validation.set_field_from_text(config, field, text)


def test_combined_config_arguments_and_missing_files():
  assert config_presets.combined_arg("count", "smoke") == "count,smoke"
  assert config_presets.load_config("resnet_lstm.py:count", "smoke").model_kwargs.hidden_size == 944
  with pytest.raises(FileNotFoundError, match="'nope.py': neither a file nor a file of"):
    config_presets.load_config("nope.py")


# ------------------------------------------------------------------ the table's numbers

def _predictions(n=40, seed=0, early=(24.0, 48.0, 80.0)):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n)
  rows = []
  for i, label in enumerate(labels):
    row = {"embryo_id": f"E{i}", "patient_id": f"P{i % 7}", "label": str(label),
           "prob_blast": str(float(np.clip(0.3 * label + rng.random() * 0.7, 0, 1)))}
    for hours in early:
      row[f"prob_blast_{hours:g}h"] = str(float(rng.random()))
    rows.append(row)
  return table_stats.Predictions(rows, "test")


def test_one_run_intervals_are_the_runs_own_bootstrap():
  p = _predictions()
  for by_patient in (False, True):
    groups = p.patients if by_patient else None
    reference = evaluate.bootstrap_intervals(p.labels, p.probs, groups)
    got = table_stats.one_run(p, ["accuracy", "auc", "f1_macro"], by_patient)
    for name in ("accuracy", "auc"):
      assert [got[name]["low"], got[name]["high"]] == reference[name]
    assert got["accuracy"]["value"] == evaluate.classification_metrics(p.labels, p.probs)["accuracy"]
    assert got["f1_macro"]["low"] <= got["f1_macro"]["value"] <= got["f1_macro"]["high"]
  assert "patients" in table_stats.one_run(p, ["accuracy"], True)["accuracy"]["method"]


def test_early_metrics_are_evaluate_early_prediction():
  p = _predictions()
  curve = evaluate.early_prediction(p.labels, p.early)
  values = table_stats.metric_values(p, ["early_area", "early_area_from_0h", "accuracy_at_48h", "auc_at_80h"])
  assert values["early_area"] == pytest.approx(curve["area_under_accuracy_curve"], abs=1e-12)
  assert values["early_area_from_0h"] == pytest.approx(curve["area_under_accuracy_curve_from_0h"], abs=1e-12)
  assert values["accuracy_at_48h"] == curve["accuracy"][1] and values["auc_at_80h"] == curve["auc"][2]
  with pytest.raises(KeyError, match="no early-prediction cut-off at 96 h .*24, 48, 80"):
    table_stats.metric_values(p, ["accuracy_at_96h"])


def test_over_runs_is_the_mean_and_a_t_interval():
  runs = [{"accuracy": a} for a in (0.70, 0.74, 0.78)]
  got = table_stats.over_runs(runs, ["accuracy"], "seeds")["accuracy"]
  mean, std = 0.74, 0.04
  half = 4.303 * std / math.sqrt(3)  # t_{0.975, 2}
  assert got["value"] == pytest.approx(mean) and got["std"] == pytest.approx(std)
  assert (got["low"], got["high"]) == (pytest.approx(mean - half), pytest.approx(mean + half))
  assert got["values"] == [0.70, 0.74, 0.78] and "3 seeds" in got["method"]
  assert table_stats.t_quantile(1) == 12.706 and table_stats.t_quantile(100) == 1.96


# ------------------------------------------------------------------ a table end to end

def test_a_two_row_table_runs_collects_and_reports_missing_runs(tmp_path, data_dir):
  table = _tiny_table(str(tmp_path), data_dir)
  workdir = str(tmp_path / "table")
  settings = reproduce.Settings("tiny", overrides=(("progress", "false"),))
  report = reproduce.reproduce(table, workdir, settings)
  for kind in ("json", "csv", "md", "png"):
    assert os.path.getsize(os.path.join(workdir, f"table.{kind}")) > 0
  assert [r["runs"]["present"] for r in report["rows"]] == [1, 1] and not report["missing_runs"]
  image = report["rows"][0]
  with open(os.path.join(workdir, "image", "seed_0", "metrics.json")) as f:
    run_metrics = json.load(f)
  assert image["values"]["accuracy"]["value"] == run_metrics["accuracy"]
  assert [image["values"]["accuracy"]["low"], image["values"]["accuracy"]["high"]] == run_metrics["ci95"]["accuracy"]
  assert image["values"]["early_area"]["value"] == pytest.approx(
      run_metrics["early_prediction"]["area_under_accuracy_curve"])
  assert image["params"] > 0 and image["paper_params_m"] == 0.01
  text = open(os.path.join(workdir, "table.md")).read()
  assert "| Tiny image |" in text and "Accuracy paper" in text and "70.00" in text and "1/1" in text
  csv_text = open(os.path.join(workdir, "table.csv")).read().splitlines()
  assert csv_text[0].startswith("key,label,group,config") and len(csv_text) == 3

  # The same call again trains nothing; one run's results gone: --collect says it is missing.
  tic = time.perf_counter()
  reproduce.reproduce(table, workdir, settings)
  assert time.perf_counter() - tic < 60
  os.remove(os.path.join(workdir, "video", "seed_0", "metrics.json"))
  report = reproduce.reproduce(table, workdir, settings, collect_only=True)
  assert report["rows"][1]["runs"]["present"] == 0 and report["rows"][1]["values"] == {}
  assert [m["workdir"] for m in report["missing_runs"]] == [os.path.join(workdir, "video", "seed_0")]
  assert "missing: " + os.path.join(workdir, "video", "seed_0") in table_report.markdown(report)
  assert "| Tiny video |" in table_report.markdown(report) and "missing" in table_report.markdown(report)

  # Other settings in the same folder are refused, naming the difference.
  with pytest.raises(launch.UsageError, match="holds a table made with other settings .*smoke: False -> True"):
    reproduce.reproduce(table, workdir, reproduce.Settings("tiny", smoke=True, overrides=settings.overrides))


def test_seeds_and_folds(tmp_path, data_dir):
  table = _tiny_table(str(tmp_path), data_dir)
  seeds = reproduce.plan(table, str(tmp_path / "s"), reproduce.Settings("tiny", repeat="seeds", count=3))
  assert [(p.row.key, p.unit, p.config.seed) for p in seeds[:3]] == [("image", "seed 0", 0), ("image", "seed 1", 1),
                                                                    ("image", "seed 2", 2)]
  assert seeds[1].workdir.endswith(os.path.join("image", "seed_1")) and len(seeds) == 6
  settings = reproduce.Settings("tiny", repeat="folds", count=2, rows=("image",),
                                overrides=(("progress", "false"), ("split", "patient")))
  report = reproduce.reproduce(table, str(tmp_path / "f"), settings)
  (row,) = report["rows"]
  cell = row["values"]["accuracy"]
  assert cell["n"] == 2 and "2 folds" in cell["method"]
  with open(tmp_path / "f" / "image" / "folds_2" / "metrics.json") as f:
    folds = json.load(f)
  assert cell["values"] == pytest.approx(folds["accuracy"]["values"])
  assert cell["value"] == pytest.approx(folds["accuracy"]["mean"])


def test_problems_in_any_row_stop_the_table_before_any_work(tmp_path, data_dir):
  table = _tiny_table(str(tmp_path), data_dir)
  workdir = str(tmp_path / "bad")
  with pytest.raises(launch.UsageError) as error:
    reproduce.reproduce(table, workdir, reproduce.Settings("tiny", overrides=(("batch_size", "1000"),)))
  lines = str(error.value).splitlines()
  assert lines[0].startswith("image (seed 0): ") and any(line.startswith("video (seed 0): ") for line in lines)
  assert "batch_size=1000" in str(error.value)
  assert not os.path.exists(os.path.join(workdir, "image"))
  with pytest.raises(launch.UsageError, match="row image: --config.batch_size=x: expected int"):
    reproduce.reproduce(table, workdir, reproduce.Settings("tiny", overrides=(("batch_size", "x"),)))
  with pytest.raises(launch.UsageError, match="--rows nope: not rows of tiny; its rows: image, video"):
    reproduce.reproduce(table, workdir, reproduce.Settings("tiny", rows=("nope",)))
  needy = _tiny_table(str(tmp_path), data_dir, needs={"init_from": "pretrained weights"})
  with pytest.raises(launch.UsageError, match="needs --config.init_from: pretrained weights"):
    reproduce.reproduce(needy, workdir, reproduce.Settings("tiny"))


def _reproduce_command(*args):
  return th._command("blastjax.reproduce", *args)


def test_a_killed_table_resumes_where_it_stopped(tmp_path, data_dir):
  """kill -9 during the second row's training: the rerun skips the first row and resumes
  the second from its checkpoint; the command line prints the table."""
  table = _tiny_table(str(tmp_path), data_dir, video_steps=200)
  path = tmp_path / "tiny.json"
  path.write_text(json.dumps({"name": "tiny", "title": table.title, "rows": [
      {"key": r.key, "label": r.label, "config": r.config, "paper": dict(r.paper)} for r in table.rows]}))
  workdir = str(tmp_path / "killed")
  command = _reproduce_command("--table", str(path), "--workdir", workdir, "--config.progress=false",
                               "--config.checkpoint_every_steps=2")
  env = th.subprocess_env()
  process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  checkpoints = os.path.join(workdir, "video", "seed_0", "checkpoints")
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline and process.poll() is None:
    if os.path.isdir(checkpoints) and any(n.isdigit() for n in os.listdir(checkpoints)):
      process.send_signal(signal.SIGKILL)
      break
    time.sleep(0.01)
  assert process.wait() == -signal.SIGKILL, "the table ended before the kill point"
  assert os.path.exists(os.path.join(workdir, "image", "seed_0", "metrics.json"))
  assert not os.path.exists(os.path.join(workdir, "video", "seed_0", "metrics.json"))

  done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "1 of 2 runs already finished: skipped" in done.stdout
  assert "run 2/2: video (seed 0)" in done.stdout and "resumed from" in done.stdout
  assert "| Tiny video |" in done.stdout and "| Tiny image |" in done.stdout

  collected = subprocess.run(_reproduce_command("--workdir", workdir, "--collect"), env=env, capture_output=True,
                             text=True, timeout=300)
  assert collected.returncode == 0, collected.stderr[-3000:]
  assert "| Tiny video |" in collected.stdout and "2 of 2 runs" not in collected.stdout

  bad = subprocess.run(_reproduce_command("--table", str(path), "--workdir", str(tmp_path / "x"),
                                          "--config.nope=1"), env=env, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "config field 'nope' is unknown" in bad.stderr
  assert not os.path.exists(tmp_path / "x")
