"""The files of an evaluation in a workdir: metrics.json, predictions.csv and the plots
(blastjax.plots), each written whole or not at all, so a full disk leaves the previous
file intact. Embryo ids that a spreadsheet would read as a formula stay text."""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Mapping, Optional, Sequence

import numpy as np

from blastjax import plots
from blastjax.plots import replacing


def read_metric_log(path: str) -> list:
  """The rows of a metrics.jsonl; a line that is not JSON (a cut-off last line) is skipped."""
  rows = []
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(row, dict) and "step" in row:
        rows.append(row)
  return rows


def _json_ready(value):
  """NaN/inf become null: metrics.json stays valid JSON for every reader."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, Mapping):
    return {str(k): _json_ready(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_ready(v) for v in value]
  if isinstance(value, np.generic):
    return _json_ready(value.item())
  return value


def write_json(path: str, payload: Mapping[str, object]) -> None:
  """Writes JSON atomically, so a crash never leaves half a file."""
  with replacing(path) as tmp, open(tmp, "w") as f:
    json.dump(_json_ready(payload), f, indent=2, sort_keys=True)
    f.write("\n")


def write_predictions(path: str, rows: Sequence[Mapping[str, object]]) -> None:
  """Per-embryo predictions as CSV (columns from the first row, in order), atomically."""
  if not rows:
    raise ValueError(f"no predictions to write to {path}")
  columns = list(rows[0].keys())
  with replacing(path) as tmp, open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: csv_cell(v) for k, v in row.items()})


# A cell starting with one of these is a formula to a spreadsheet (CSV injection): an
# embryo id '=HYPERLINK(...)' from a folder name must stay text.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
  """A value as written to a CSV cell: floats to 6 decimals, formula-like text quoted."""
  if isinstance(value, float):
    return f"{value:.6f}"
  if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
    return "'" + value
  return value


def write_training_curves(workdir: str, model: str = "") -> Optional[str]:
  """Draws workdir/training_curves.png from workdir/metrics.jsonl; returns its path, or
  None when the run has no log (a cross-validation's top level) or nothing logged."""
  log = os.path.join(workdir, "metrics.jsonl")
  rows = read_metric_log(log) if os.path.exists(log) else []
  if not any(row.get("kind") in ("train", "validation") for row in rows):
    return None
  path = os.path.join(workdir, "training_curves.png")
  plots.plot_training_curves(path, rows, model)
  return path


def write_evaluation(workdir: str, metrics: Mapping[str, object],
                     predictions: Sequence[Mapping[str, object]],
                     early: Optional[Mapping[str, object]] = None,
                     labels=None, probs=None, model: str = "") -> dict:
  """Writes metrics.json, predictions.csv and the plots into `workdir`.

  `predictions` rows carry at least `label` and `prob_blast` (plus embryo_id, patient_id,
  ...); the ROC plot is drawn from them unless `labels`/`probs` are given. Every plot's
  title names the run: `model`, the checkpoint step (`metrics['step']`) or the folds
  (`metrics['num_folds']`), and n. Returns the paths written, by kind.
  """
  os.makedirs(workdir, exist_ok=True)
  paths = {"metrics": os.path.join(workdir, "metrics.json"),
           "predictions": os.path.join(workdir, "predictions.csv"),
           "roc": os.path.join(workdir, "roc.png")}
  payload = dict(metrics)
  if early is not None:
    payload["early_prediction"] = dict(early)
  write_json(paths["metrics"], payload)
  write_predictions(paths["predictions"], predictions)
  if labels is None:
    labels = [int(r["label"]) for r in predictions]
    probs = [float(r["prob_blast"]) for r in predictions]
  run = plots.run_caption(model, metrics.get("step"), metrics.get("num_folds"))
  if len(set(np.asarray(labels).tolist())) == 2:
    plots.plot_roc(paths["roc"], labels, probs, run=run)
  else:
    del paths["roc"]
  paths["confusion_matrix"] = os.path.join(workdir, "confusion_matrix.png")
  plots.plot_confusion_matrix(paths["confusion_matrix"], labels, probs, run=run)
  paths["calibration"] = os.path.join(workdir, "calibration.png")
  plots.plot_calibration(paths["calibration"], labels, probs, run=run)
  if early is not None:
    paths["early_prediction"] = os.path.join(workdir, "early_prediction.png")
    plots.plot_early_prediction(paths["early_prediction"], early, run=run)
  return paths
