"""The entry point: config errors (one line, non-zero exit, nothing written), config
files from any directory, `~` in paths, evaluate mode on an existing workdir,
patient-grouped cross-validation."""

import json
import os
import subprocess

import numpy as np
import pytest

from blastjax.testing import tiny as th
from blastjax import main, parallel, train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return th.build_small_dataset(str(tmp_path_factory.mktemp("data")))


@pytest.mark.parametrize("override,message", [
    ("--config.model=no_such_model", "error: config.model: unknown model 'no_such_model'"),
    ("--config.no_such_field=1", "error: --config.no_such_field=1: config field 'no_such_field' is unknown"),
])
def test_config_errors_are_one_line_and_write_nothing(tmp_path, override, message):
  workdir = tmp_path / "run"
  command = th.main_command("--config", os.path.join(th.REPO, "configs", "resnet18.py:smoke"), override,
                            "--workdir", str(workdir))
  done = subprocess.run(command, env=th.subprocess_env(), capture_output=True, text=True, timeout=300,
                        cwd=th.REPO)
  assert done.returncode == 2
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith(message), done.stderr[-2000:]
  assert not workdir.exists()


@pytest.mark.parametrize("config,message", [
    ("configs/nope.py", "error: --config configs/nope.py: no such config file 'configs/nope.py'"),
    ("configs/r2p1d.py:tiny", "error: --config configs/r2p1d.py:tiny: config argument 'tiny' unknown; "
                              "choose none (the paper's setup) or 'smoke'"),
])
def test_config_file_errors_are_one_line_and_write_nothing(tmp_path, config, message):
  workdir = tmp_path / "run"
  done = subprocess.run(th.main_command("--config", config, "--workdir", str(workdir)), env=th.subprocess_env(),
                        capture_output=True, text=True, timeout=300, cwd=th.REPO)
  assert done.returncode == 2, done.stderr[-2000:]
  assert "Traceback" not in done.stderr
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith(message), done.stderr[-2000:]
  if config.endswith("nope.py"):
    assert "r2p1d.py" in errors[0]  # the choices: the config files beside the missing one
  assert not workdir.exists()


def installed_package_env(site: str) -> dict:
  """An environment where blastjax is importable as an installed package would be: the
  package directories alone on the path (no repository root, so no `configs` package)."""
  os.makedirs(site, exist_ok=True)
  for name in ("blastjax", "tfds_builders"):
    os.symlink(os.path.join(th.REPO, name), os.path.join(site, name))
  env = th.subprocess_env()
  env["PYTHONPATH"] = site
  return env


def test_config_file_loads_from_any_directory(tmp_path):
  """An absolute config path from another working directory: past config loading (the
  model override is then refused by validation, before any work)."""
  cwd = tmp_path / "elsewhere"
  cwd.mkdir()
  config = os.path.join(th.REPO, "configs", "r2p1d.py") + ":smoke"
  done = subprocess.run(th.main_command("--config", config, "--config.model=no_such_model",
                                        "--workdir", str(tmp_path / "run")),
                        env=installed_package_env(str(tmp_path / "site")), capture_output=True, text=True,
                        timeout=300, cwd=cwd)
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert done.returncode == 2 and errors == [errors[0]], done.stderr[-2000:]
  assert errors[0].startswith("error: config.model: unknown model 'no_such_model'"), done.stderr[-2000:]


def test_home_in_paths_is_expanded_by_the_cli(tmp_path):
  home, cwd = tmp_path / "home", tmp_path / "cwd"
  home.mkdir()
  cwd.mkdir()
  config = th.write_config_file(str(tmp_path / "tiny.py"), "tiny_image", num_steps=2, early_hours=(),
                                validation_fraction=0.0)
  env = {**th.subprocess_env(), "HOME": str(home)}
  done = subprocess.run(th.main_command(f"--config={config}", "--config.data_dir=~/tfds", "--workdir=~/run"),
                        env=env, capture_output=True, text=True, timeout=600, cwd=cwd)
  assert done.returncode == 0, done.stderr[-3000:]
  assert os.listdir(cwd) == []  # no literal ./~
  assert (home / "tfds" / "embryo_timelapse").is_dir() and (home / "run" / "metrics.json").exists()
  with open(home / "run" / "config.json") as f:
    assert json.load(f)["data_dir"] == str(home / "tfds")


def test_home_in_paths_is_expanded_by_the_python_api(tmp_path, monkeypatch):
  home, cwd = tmp_path / "home", tmp_path / "cwd"
  home.mkdir()
  cwd.mkdir()
  monkeypatch.setenv("HOME", str(home))
  monkeypatch.chdir(cwd)
  config = th.tiny_config("tiny_image", data_dir="~/tfds", num_steps=2, early_hours=(), validation_fraction=0.0)
  result = train.train_and_evaluate(config, "~/run")
  assert result["step"] == 2
  assert os.listdir(cwd) == []  # no literal ./~
  assert (home / "tfds" / "embryo_timelapse").is_dir() and (home / "run" / "metrics.json").exists()
  assert train.evaluate_workdir("~/run", config)["step"] == 2


def test_preflight_names_each_problem():
  config = th.tiny_config("tiny_video", batch_size=6, image_size=4, sampling="last_frame", dataset="nope")
  with pytest.raises(main.UsageError) as error:
    main.preflight(config)
  lines = str(error.value).splitlines()
  assert any("batch_size=6 is not divisible by the 4 devices" in line for line in lines)
  assert any("image_size=4" in line and "at least 8" in line for line in lines)
  assert any("sampling='last_frame'" in line for line in lines)
  config = th.tiny_config("tiny_video", dataset="nope")
  with pytest.raises(main.UsageError, match="config.dataset='nope'"):
    main.preflight(config)


def test_num_devices_selects_a_subset_and_refuses_too_many(tmp_path, data_dir):
  with pytest.raises(main.UsageError, match=r"config.num_devices=5: process 0 has only 4 devices"):
    main.preflight(th.tiny_config("tiny_image", num_devices=5))
  with pytest.raises(main.UsageError, match="batch_size=6 is not divisible by the 4 devices"):
    main.preflight(th.tiny_config("tiny_image", num_devices=4, batch_size=6))
  config = th.tiny_config("tiny_image", data_dir=data_dir, num_devices=2, batch_size=6, eval_batch_size=6,
                          num_steps=2, early_hours=(), validation_fraction=0.0)
  main.preflight(config)  # 6 divides over 2 devices
  assert [d.id for d in parallel.selected_devices(config)] == [0, 1]
  result = train.train_and_evaluate(config, str(tmp_path / "two"))
  assert result["step"] == 2


def test_train_then_evaluate_mode_reproduces_metrics(tmp_path, data_dir):
  config = th.tiny_config("tiny_video", data_dir=data_dir, num_steps=6, eval_every_steps=3)
  workdir = str(tmp_path / "run")
  main.run(config, workdir, "train")
  for name in ("config.json", "metrics.json", "predictions.csv", "roc.png", "early_prediction.png",
               "metrics.jsonl", "calibration.json", "confusion_matrix.png", "calibration.png"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  with open(os.path.join(workdir, "metrics.json")) as f:
    trained = json.load(f)
  assert trained["early_prediction"]["hours"] == [40.0, 80.0]
  low, high = trained["ci95"]["accuracy"]
  assert low <= trained["accuracy"] <= high and trained["ci95_resampled"] == "embryos"
  assert trained["calibrated"] and trained["temperature"] > 0 and 0 <= trained["ece"] <= 1
  with open(os.path.join(workdir, "predictions.csv")) as f:
    header = f.readline().strip().split(",")
  assert header[:5] == ["embryo_id", "patient_id", "label", "prob_blast", "predicted"]
  assert "prob_blast_40h" in header
  os.remove(os.path.join(workdir, "metrics.json"))
  main.run(main.load_workdir_config(workdir), workdir, "evaluate")
  with open(os.path.join(workdir, "metrics.json")) as f:
    evaluated = json.load(f)
  assert evaluated == trained


def test_cross_validation_groups_patients(tmp_path, data_dir):
  config = th.tiny_config("tiny_image", data_dir=data_dir, num_steps=2, num_folds=2, early_hours=(),
                          validation_fraction=0.0)
  workdir = str(tmp_path / "cv")
  summary = train.cross_validate(config, workdir)
  assert summary["num_folds"] == 2
  assert len(summary["accuracy"]["values"]) == 2
  assert np.isclose(summary["accuracy"]["mean"], np.mean(summary["accuracy"]["values"]))
  import csv
  with open(os.path.join(workdir, "predictions.csv")) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 32 and {r["fold"] for r in rows} == {"0", "1"}
  by_patient = {}
  for row in rows:
    by_patient.setdefault(row["patient_id"], set()).add(row["fold"])
  assert all(len(folds) == 1 for folds in by_patient.values())
  assert os.path.exists(os.path.join(workdir, "fold_1", "metrics.json"))


def _tensorboard_events(directory):
  """Every Event of the TensorBoard files under `directory` (TFRecord framing: length,
  its CRC, the record, its CRC), read with tensorboardX's protobufs."""
  import struct

  from tensorboardX.proto import event_pb2

  events = []
  for root, _, files in os.walk(directory):
    for name in sorted(files):
      with open(os.path.join(root, name), "rb") as f:
        data = f.read()
      offset = 0
      while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        record = data[offset + 12:offset + 12 + length]
        offset += 12 + length + 4
        event = event_pb2.Event()
        event.ParseFromString(record)
        events.append(event)
  return events


def test_observable_run_logs_validation_and_tensorboard_without_constants(tmp_path, data_dir, caplog, capsys):
  """Validation metrics reach the console and validation and test show progress bars;
  TensorBoard has the learning rate, the hyperparameters and the config, and no constant
  counts; eval_checkpoint='last' writes no best/ checkpoint."""
  config = th.tiny_config("tiny_image", data_dir=data_dir, num_steps=4, checkpoint_every_steps=2,
                          eval_every_steps=2, early_hours=(40.0,), eval_checkpoint="last", progress=True)
  workdir = tmp_path / "run"
  with caplog.at_level("INFO", logger="blastjax"):
    train.train_and_evaluate(config, str(workdir))
  bars = capsys.readouterr().err
  assert "validation (step 2)" in bars and "validation (step 4)" in bars and "test: 100%" in bars
  assert "2/2 [" in bars  # the test bar: the full videos, then the 40 h cut-off
  validations = [r.getMessage() for r in caplog.records if " validation (" in r.getMessage()]
  assert len(validations) == 2 and validations[0].startswith("step 2 validation (") and "auc=" in validations[0]
  events = _tensorboard_events(workdir / "tensorboard")
  tags = {value.tag for event in events for value in event.summary.value}
  assert {"train/loss", "train/learning_rate", "validation/auc", "validation/loss"} <= tags
  assert not {"train/window_steps", "validation/num_embryos", "validation/temperature"} & tags
  assert {"_hparams_/experiment", "_hparams_/session_start_info", "config/text_summary"} <= tags
  start = next(v for e in events for v in e.summary.value if v.tag == "_hparams_/session_start_info")
  assert b"tiny_image" in start.metadata.plugin_data.content
  assert os.listdir(workdir / "checkpoints")
  assert not (workdir / "best").exists() or not os.listdir(workdir / "best")
