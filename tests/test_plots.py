"""The plots a run leaves in its workdir: titles naming the run (model, checkpoint step,
n), training_curves.png from metrics.jsonl, the early-prediction curve's per-cut-off
intervals, and train rows of metrics.jsonl as means over their logging window (also
across a resume from a checkpoint between two log steps)."""

import json
import os

import numpy as np
import pytest

from blastjax import evaluate, plots, results, train
from blastjax.testing import tiny as th
from blastjax.train_data import make_data, open_source


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return th.build_small_dataset(str(tmp_path_factory.mktemp("data")))


@pytest.fixture
def saved_figures(monkeypatch):
  """{file name: figure} of every figure saved while the test runs."""
  figures = {}
  real = plots.save_figure

  def save_figure(fig, path):
    figures[os.path.basename(path)] = fig
    real(fig, path)

  monkeypatch.setattr(plots, "save_figure", save_figure)
  return figures


def _title(fig) -> str:
  return fig.axes[0].get_title()


def _sample(n=24, seed=0):
  rng = np.random.default_rng(seed)
  labels = np.r_[np.zeros(n // 2, int), np.ones(n - n // 2, int)]
  probs = np.clip(0.25 * labels + 0.75 * rng.random(n), 0, 1)
  return labels, probs


def test_every_plot_of_an_evaluation_names_model_step_and_n(tmp_path, saved_figures):
  labels, probs = _sample()
  rows = [{"embryo_id": f"e{i}", "patient_id": "p0", "label": int(l), "prob_blast": float(p)}
          for i, (l, p) in enumerate(zip(labels, probs))]
  metrics = {**evaluate.classification_metrics(labels, probs), "step": 400}
  early = evaluate.early_prediction(labels, {24: probs * 0.9, 48: probs})
  results.write_evaluation(str(tmp_path), metrics, rows, early, model="resnet50")
  names = {"roc.png", "confusion_matrix.png", "calibration.png", "early_prediction.png"}
  assert set(saved_figures) == names
  for name in names:
    title = _title(saved_figures[name])
    assert title.startswith("resnet50, step 400, n = 24 embryos\n"), (name, title)
  assert "threshold 0.5" in _title(saved_figures["roc.png"])
  assert "ECE" in _title(saved_figures["calibration.png"])
  # cross-validation's summary names the folds instead of a step
  summary = {**evaluate.aggregate_folds([metrics, metrics]), "num_folds": 2}
  results.write_evaluation(str(tmp_path / "cv"), summary, rows, model="resnet50")
  assert _title(saved_figures["roc.png"]).startswith("resnet50, 2 folds, n = 24 embryos")


def test_early_prediction_intervals_bracket_the_curve_and_match_the_test_metrics():
  labels, probs = _sample(30)
  patients = np.repeat(np.arange(10), 3)
  by_hours = {24: np.clip(probs + 0.2, 0, 1), 48: probs * 0.8 + 0.1, 72: probs}
  curve = evaluate.early_prediction(labels, by_hours, intervals=True, groups=patients, group_name="patients")
  assert curve["ci95_resampled"] == "patients" and curve["num_embryos"] == 30
  for name in ("accuracy", "auc"):
    assert len(curve["ci95"][name]) == 3
    for value, (low, high) in zip(curve[name], curve["ci95"][name]):
      assert low <= value <= high and low < high
  # The last cut-off sees the whole video: the same resamples give the test metrics' ci95.
  full = evaluate.bootstrap_intervals(labels, probs, patients)
  assert curve["ci95"]["accuracy"][-1] == full["accuracy"] and curve["ci95"]["auc"][-1] == full["auc"]
  again = evaluate.early_prediction(labels, by_hours, intervals=True, groups=patients, group_name="patients")
  assert again["ci95"] == curve["ci95"]  # seeded
  assert "ci95" not in evaluate.early_prediction(labels, by_hours)  # off unless asked


def test_early_prediction_plot_draws_the_intervals_as_bands(tmp_path):
  labels, probs = _sample()
  curve = evaluate.early_prediction(labels, {24: probs * 0.9, 48: probs}, intervals=True)
  fig = plots.plot_early_prediction(str(tmp_path / "early.png"), results._json_ready(curve), run="m, step 3")
  ax = fig.axes[0]
  assert len(ax.collections) == 2  # one band each for accuracy and AUC
  assert {"accuracy 95% interval", "AUC 95% interval"} <= set(ax.get_legend_handles_labels()[1])
  assert _title(fig).startswith("m, step 3, n = 24 embryos")
  assert os.path.getsize(tmp_path / "early.png") > 0


def test_training_curves_have_one_panel_per_metric(tmp_path):
  rows = [{"step": s, "kind": "train", "loss": 1.0 / s, "accuracy": 0.5, "grad_norm": 1.0,
           "learning_rate": 1e-3 * s, "window_steps": 2} for s in (2, 4, 6)]
  rows += [{"step": s, "kind": "validation", "loss": 0.7, "accuracy": 0.6, "auc": 0.7, "balanced_accuracy": 0.6,
            "sensitivity": 0.5, "specificity": 0.7, "calibrated": False} for s in (3, 6)]
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in rows)
    f.write('{"step": 8, "ki')  # a cut-off last line is skipped
  path = results.write_training_curves(str(tmp_path), "tiny_image")
  assert path == str(tmp_path / "training_curves.png") and os.path.getsize(path) > 0
  assert results.write_training_curves(str(tmp_path / "none")) is None


def _curve_figure(rows, tmp_path):
  return plots.plot_training_curves(str(tmp_path / "curves.png"), rows, "tiny_image")


def test_training_curve_panels_and_title(tmp_path):
  rows = [{"step": s, "kind": "train", "loss": 1.0, "accuracy": 0.5, "learning_rate": 1e-3} for s in (1, 2)]
  fig = _curve_figure(rows + [{"step": 2, "kind": "validation", "loss": 0.7, "accuracy": 0.6, "auc": 0.7}],
                      tmp_path)
  assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy", "learning rate", "validation AUC"]
  assert [line.get_label() for line in fig.axes[0].lines] == ["train", "validation"]
  assert fig.get_suptitle() == "tiny_image, step 2: training curves"


def test_train_window_state_round_trips_through_json():
  window = train.TrainWindow()
  for loss in (0.1, 0.7, 0.3):
    window.add({"loss": loss, "accuracy": 0.5})
  restored = train.TrainWindow(json.loads(json.dumps(window.state_dict())))
  restored.add({"loss": 0.9, "accuracy": 1.0})
  means = restored.take()
  assert means == {"loss": (0.1 + 0.7 + 0.3 + 0.9) / 4, "accuracy": 0.625, "window_steps": 4}
  assert restored.state_dict() == {"count": 0, "sums": {}}


def test_a_run_titles_its_plots_and_draws_its_training_curves(tmp_path, data_dir, saved_figures):
  config = th.tiny_config("tiny_image", data_dir=data_dir, num_steps=6, log_every_steps=2, eval_every_steps=3,
                          checkpoint_every_steps=3)
  workdir = str(tmp_path / "run")
  result = train.train_and_evaluate(config, workdir)
  n = result["num_embryos"]
  for name in ("roc.png", "confusion_matrix.png", "calibration.png", "early_prediction.png"):
    assert _title(saved_figures[name]).startswith(f"tiny_image, step {result['step']}, n = {n} embryos")
  curves = saved_figures["training_curves.png"]
  assert os.path.getsize(os.path.join(workdir, "training_curves.png")) > 0
  assert curves.get_suptitle() == "tiny_image, step 6: training curves"
  assert {"loss", "accuracy", "learning rate", "validation AUC"} <= {ax.get_title() for ax in curves.axes}
  with open(os.path.join(workdir, "metrics.json")) as f:
    early = json.load(f)["early_prediction"]
  assert early["ci95_resampled"] == result["ci95_resampled"]
  for name in ("accuracy", "auc"):
    for value, bounds in zip(early[name], early["ci95"][name]):
      if value is not None:
        assert bounds[0] <= value <= bounds[1]
  os.remove(os.path.join(workdir, "training_curves.png"))
  saved_figures.clear()
  train.evaluate_workdir(workdir, config)  # --mode evaluate rewrites every plot
  assert os.path.exists(os.path.join(workdir, "training_curves.png"))
  assert {"roc.png", "training_curves.png"} <= set(saved_figures)


class _Crash(Exception):
  pass


def _train_rows(workdir):
  return [row for row in results.read_metric_log(os.path.join(workdir, "metrics.jsonl")) if row["kind"] == "train"]


def test_train_rows_are_window_means_also_across_a_resume(tmp_path, data_dir, monkeypatch):
  run = dict(num_steps=8, validation_fraction=0.0, early_hours=(), keep_checkpoints=3)
  config = th.tiny_config("tiny_image", data_dir=data_dir, log_every_steps=1, checkpoint_every_steps=8, **run)
  data = make_data(config, open_source(config))
  train.train(config, str(tmp_path / "every_step"), data)
  per_step = {row["step"]: row for row in _train_rows(str(tmp_path / "every_step"))}
  assert sorted(per_step) == list(range(1, 9)) and all(r["window_steps"] == 1 for r in per_step.values())

  # Log every 4 steps, checkpoints every 3: the run crashes in the save of step 6 and
  # resumes from step 3, in the middle of the window of steps 1-4.
  config = th.tiny_config("tiny_image", data_dir=data_dir, log_every_steps=4, checkpoint_every_steps=3, **run)
  real = train._Saver.checkpoint

  def checkpoint(self, step, *args, **kwargs):
    if step == 6:
      raise _Crash(step)
    return real(self, step, *args, **kwargs)

  windowed = str(tmp_path / "windowed")
  monkeypatch.setattr(train._Saver, "checkpoint", checkpoint)
  with pytest.raises(_Crash):
    train.train(config, windowed, data)
  monkeypatch.setattr(train._Saver, "checkpoint", real)
  train.train(config, windowed, data)

  rows = _train_rows(windowed)
  assert [row["step"] for row in rows] == [4, 8]
  for row, window in zip(rows, (range(1, 5), range(5, 9))):
    assert row["window_steps"] == 4
    for key in ("loss", "accuracy", "grad_norm"):
      assert row[key] == sum(per_step[s][key] for s in window) / 4, key
    assert row["learning_rate"] == per_step[row["step"]]["learning_rate"]
