"""The numbers of a reproduced table: each metric of a run from its predictions.csv, a
bootstrap interval for one run, and mean with a t-interval over several (seeds, folds).

A run's value is recomputed from predictions.csv (label, prob_blast, the
prob_blast_<H>h columns of early prediction, patient_id) rather than read from
metrics.json, so every metric a table names -- the early-prediction area too -- gets an
interval by the same bootstrap as the run's own `ci95` (blastjax.evaluate's resamples,
seeded: the same intervals for the same predictions).
"""

from __future__ import annotations

import csv
import math
import re
from typing import Mapping, Sequence

import numpy as np

from blastjax import evaluate, tables

# Student's t quantile t_{0.975, df} for df = 1..30 (scipy.stats.t.ppf(0.975, df)).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)
NUM_RESAMPLES = 1000
EARLY_COLUMN = re.compile(r"^prob_blast_(\d+(?:\.\d+)?)h$")


def t_quantile(df: int) -> float:
  """t_{0.975} with `df` degrees of freedom (1.96 beyond 30)."""
  return _T975[df - 1] if df <= len(_T975) else 1.96


class Predictions:
  """One run's test predictions: labels, P(blast), P(blast) per early cut-off, patients."""

  def __init__(self, rows: Sequence[Mapping[str, str]], source: str = ""):
    if not rows:
      raise ValueError(f"{source}: no predictions")
    self.source = source
    self.labels = np.asarray([int(r["label"]) for r in rows], np.int64)
    self.probs = np.asarray([float(r["prob_blast"]) for r in rows], np.float64)
    self.patients = np.asarray([str(r.get("patient_id", i)) for i, r in enumerate(rows)])
    self.early = {}
    for column in rows[0]:
      match = EARLY_COLUMN.match(column)
      if match:
        self.early[float(match.group(1))] = np.asarray([float(r[column]) for r in rows], np.float64)

  @classmethod
  def read(cls, path: str) -> "Predictions":
    with open(path, newline="") as f:
      return cls(list(csv.DictReader(f)), path)

  def subset(self, chosen: np.ndarray) -> "Predictions":
    out = object.__new__(Predictions)
    out.source, out.labels, out.probs = self.source, self.labels[chosen], self.probs[chosen]
    out.patients = self.patients[chosen]
    out.early = {h: p[chosen] for h, p in self.early.items()}
    return out

  def cutoff(self, hours: float) -> np.ndarray:
    if hours not in self.early:
      known = ", ".join(f"{h:g}" for h in sorted(self.early)) or "none"
      raise KeyError(f"{self.source}: no early-prediction cut-off at {hours:g} h (the run's: {known}); "
                     "set config.early_hours to include it")
    return self.early[hours]


def metric_values(predictions: Predictions, names: Sequence[str]) -> dict:
  """{name: value} of `names` (blastjax.tables' metric names) on `predictions`; NaN where
  undefined (AUC of one class)."""
  out = {}
  classification = None
  for name in names:
    if name in tables.CLASSIFICATION_METRICS:
      if classification is None:
        classification = evaluate.classification_metrics(predictions.labels, predictions.probs)
      out[name] = classification[name]
    elif name in tables.EARLY_METRICS:
      out[name] = _early_area(predictions, from_0h=name == "early_area_from_0h")
    else:
      kind, hours = tables.AT_HOURS.match(name).groups()
      probs = predictions.cutoff(float(hours))
      if kind == "accuracy":
        out[name] = float(((probs >= 0.5).astype(np.int64) == predictions.labels).mean())
      else:
        out[name] = evaluate.roc_auc(predictions.labels, probs)
  return out


def _early_area(predictions: Predictions, from_0h: bool) -> float:
  """evaluate.early_prediction's area (over the hours spanned, or from 0 h), accuracies only."""
  if not predictions.early:
    raise KeyError(f"{predictions.source}: the run has no early-prediction columns (config.early_hours is empty)")
  hours = sorted(predictions.early)
  accuracy = [float(((predictions.early[h] >= 0.5).astype(np.int64) == predictions.labels).mean()) for h in hours]
  return evaluate.accuracy_area(hours, accuracy, from_0h)


def bootstrap(predictions: Predictions, names: Sequence[str], by_patient: bool,
              num_resamples: int = NUM_RESAMPLES, seed: int = 0) -> dict:
  """{name: [low, high]}: 95% percentile intervals over resampled test embryos (whole
  patients when `by_patient`, as the run's ci95 when its split keeps patients apart)."""
  groups = predictions.patients if by_patient else np.arange(predictions.labels.size)
  draws = {name: [] for name in names}
  for chosen in evaluate.bootstrap_resamples(groups, num_resamples, seed):
    for name, value in metric_values(predictions.subset(chosen), names).items():
      draws[name].append(value)
  return {name: evaluate.percentile_interval(values) for name, values in draws.items()}


def one_run(predictions: Predictions, names: Sequence[str], by_patient: bool) -> dict:
  """{name: {value, low, high, method}} of a single run."""
  values = metric_values(predictions, names)
  intervals = bootstrap(predictions, names, by_patient)
  method = (f"bootstrap over the {np.unique(predictions.patients).size} test patients" if by_patient
            else f"bootstrap over the {predictions.labels.size} test embryos")
  return {name: {"value": values[name], "low": intervals[name][0], "high": intervals[name][1],
                 "method": method, "n": 1} for name in names}


def over_runs(per_run: Sequence[Mapping[str, float]], names: Sequence[str], what: str) -> dict:
  """{name: {value (mean), low, high (t-interval), std, values, method}} over runs."""
  out = {}
  for name in names:
    values = [float(run[name]) for run in per_run]
    finite = np.asarray([v for v in values if math.isfinite(v)])
    mean = float(finite.mean()) if finite.size else float("nan")
    std = float(finite.std(ddof=1)) if finite.size > 1 else float("nan")
    half = t_quantile(finite.size - 1) * std / math.sqrt(finite.size) if finite.size > 1 else float("nan")
    out[name] = {"value": mean, "low": mean - half, "high": mean + half, "std": std, "values": values,
                 "method": f"mean and 95% t-interval over {len(values)} {what}", "n": len(values)}
  return out
