"""Evaluation as the field reports it.

Binary metrics (accuracy, balanced accuracy, ROC-AUC, sensitivity, specificity, macro
precision/recall/F1, confusion matrix), the early-prediction curve (metrics when only
the first X hours are observed, and the area under the accuracy curve), clip-probability
averaging for sliding-window evaluation, k-fold aggregation, and the files a run leaves
in its workdir: metrics.json, predictions.csv, roc.png, confusion_matrix.png,
calibration.png, early_prediction.png. Every evaluation also carries what makes a small
test set readable: 95% bootstrap intervals (`ci95`), the Brier score and the ECE.

Class 1 is `blast` (the positive class): sensitivity is the recall of blasts,
specificity the recall of non-blasts. `probs` are P(blast) = softmax(logits)[..., 1].
Everything here is numpy; matplotlib is imported only to draw.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Mapping, Optional, Sequence

import numpy as np

CLASS_NAMES = ("non_blast", "blast")


def _check_labels_probs(labels, probs) -> tuple[np.ndarray, np.ndarray]:
  labels = np.asarray(labels).astype(np.int64).reshape(-1)
  probs = np.asarray(probs, np.float64).reshape(-1)
  if labels.shape != probs.shape:
    raise ValueError(f"labels ({labels.shape[0]}) and probs ({probs.shape[0]}) differ in length")
  if labels.size == 0:
    raise ValueError("no examples to evaluate (empty labels)")
  if not np.isin(labels, (0, 1)).all():
    raise ValueError(f"labels must be 0 (non_blast) or 1 (blast); got values {sorted(set(labels.tolist()))}")
  if not np.isfinite(probs).all():
    raise ValueError(f"{int((~np.isfinite(probs)).sum())} probabilities are NaN or infinite")
  return labels, probs


def roc_auc(labels, probs) -> float:
  """Area under the ROC curve (Mann-Whitney U with tied scores counted half).

  NaN when only one class is present, where AUC is undefined.
  """
  labels, probs = _check_labels_probs(labels, probs)
  num_pos = int(labels.sum())
  num_neg = labels.size - num_pos
  if num_pos == 0 or num_neg == 0:
    return float("nan")
  order = np.argsort(probs, kind="mergesort")
  ranks = np.empty(labels.size, np.float64)
  sorted_probs = probs[order]
  # Average ranks over ties (1-based).
  _, first, counts = np.unique(sorted_probs, return_index=True, return_counts=True)
  tie_ranks = first + (counts + 1) / 2.0
  ranks[order] = np.repeat(tie_ranks, counts)
  rank_sum = ranks[labels == 1].sum()
  return float((rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))


def roc_curve(labels, probs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """False-positive rates, true-positive rates and thresholds, from (0,0) to (1,1)."""
  labels, probs = _check_labels_probs(labels, probs)
  order = np.argsort(-probs, kind="mergesort")
  probs, labels = probs[order], labels[order]
  distinct = np.r_[np.nonzero(np.diff(probs))[0], labels.size - 1]
  tps = np.cumsum(labels)[distinct]
  fps = (distinct + 1) - tps
  tpr = np.r_[0.0, tps / max(labels.sum(), 1)]
  fpr = np.r_[0.0, fps / max(labels.size - labels.sum(), 1)]
  thresholds = np.r_[np.inf, probs[distinct]]
  return fpr, tpr, thresholds


def _safe_div(num: float, den: float) -> float:
  return float(num / den) if den else float("nan")


def _per_class(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
  """(precision, recall, F1) of one class; an undefined value counts as 0.

  This is scikit-learn's `zero_division=0`: a class never predicted has precision 0,
  so a model predicting one class cannot score a high macro F1.
  """
  precision = tp / (tp + fp) if tp + fp else 0.0
  recall = tp / (tp + fn) if tp + fn else 0.0
  f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
  return float(precision), float(recall), float(f1)


def classification_metrics(labels, probs, threshold: float = 0.5) -> dict:
  """All binary metrics of one evaluation, as plain Python numbers (JSON-ready).

  A prediction is blast when P(blast) >= threshold. Sensitivity, specificity and AUC are
  NaN where undefined (a class absent from `labels`); balanced accuracy averages the
  recalls of the classes present (scikit-learn's `balanced_accuracy_score`); the macro
  precision, recall and F1 average both classes with undefined values counted as 0
  (scikit-learn's `average='macro', labels=[0, 1], zero_division=0`).
  """
  labels, probs = _check_labels_probs(labels, probs)
  preds = (probs >= threshold).astype(np.int64)
  tp = int(((preds == 1) & (labels == 1)).sum())
  tn = int(((preds == 0) & (labels == 0)).sum())
  fp = int(((preds == 1) & (labels == 0)).sum())
  fn = int(((preds == 0) & (labels == 1)).sum())
  sensitivity = _safe_div(tp, tp + fn)
  specificity = _safe_div(tn, tn + fp)
  present = [r for r in (specificity, sensitivity) if not math.isnan(r)]
  per_class = [_per_class(tn, fn, fp), _per_class(tp, fp, fn)]  # non_blast, blast
  precision, recall, f1 = (float(np.mean(values)) for values in zip(*per_class))
  return {
      "num_examples": int(labels.size),
      "num_blast": int(labels.sum()),
      "accuracy": _safe_div(tp + tn, labels.size),
      "balanced_accuracy": float(np.mean(present)),
      "auc": roc_auc(labels, probs),
      "sensitivity": sensitivity,
      "specificity": specificity,
      "precision_macro": precision,
      "recall_macro": recall,
      "f1_macro": f1,
      # rows: true class (non_blast, blast); columns: predicted class.
      "confusion_matrix": [[tn, fp], [fn, tp]],
      "threshold": float(threshold),
  }


INTERVAL_METRICS = ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity")
FIXED_THRESHOLD_RULE = "fixed at 0.5 (argmax of the two classes)"


def brier_score(labels, probs) -> float:
  """Mean squared error of P(blast) against the label (0 is perfect, 0.25 is a coin)."""
  labels, probs = _check_labels_probs(labels, probs)
  return float(np.mean((probs - labels) ** 2))


def expected_calibration_error(labels, probs, num_bins: int = 10) -> float:
  """ECE of P(blast): over `num_bins` equal-width bins of P(blast) in [0, 1], the
  example-weighted mean of |fraction of blasts - mean P(blast)| (the gaps that the
  reliability diagram shows)."""
  points = reliability_bins(labels, probs, num_bins)
  total = sum(count for _, _, count in points)
  return float(sum(count * abs(fraction - mean) for mean, fraction, count in points) / total)


def bootstrap_intervals(labels, probs, groups=None, threshold: float = 0.5, num_resamples: int = 1000,
                        seed: int = 0, level: float = 0.95) -> dict:
  """Percentile bootstrap intervals {metric: [low, high]} of INTERVAL_METRICS.

  Resamples the embryos with replacement, or whole groups (`groups`: e.g. the patient of
  each embryo, when the split keeps patients apart, so that embryos of one patient move
  together). Seeded: the same inputs give the same intervals. A resample where a metric
  is undefined (AUC with one class drawn) is left out of that metric's interval.
  """
  labels, probs = _check_labels_probs(labels, probs)
  groups = np.arange(labels.size) if groups is None else np.asarray(groups).reshape(-1)
  if groups.shape != labels.shape:
    raise ValueError(f"groups ({groups.size}) and labels ({labels.size}) differ in length")
  _, group_of = np.unique(groups, return_inverse=True)
  num_groups = int(group_of.max()) + 1
  rng = np.random.default_rng(seed)
  draws = {name: [] for name in INTERVAL_METRICS}
  for _ in range(num_resamples):
    times = np.bincount(rng.integers(0, num_groups, num_groups), minlength=num_groups)[group_of]
    chosen = np.repeat(np.arange(labels.size), times)
    resampled = classification_metrics(labels[chosen], probs[chosen], threshold)
    for name in INTERVAL_METRICS:
      draws[name].append(resampled[name])
  tail = (1.0 - level) / 2.0
  intervals = {}
  for name, values in draws.items():
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    intervals[name] = ([float(np.quantile(values, tail)), float(np.quantile(values, 1.0 - tail))]
                       if values.size else [float("nan"), float("nan")])
  return intervals


TEMPERATURE_RANGE = (0.05, 20.0)


def _logits(probs) -> np.ndarray:
  probs = np.clip(np.asarray(probs, np.float64), 1e-12, 1 - 1e-12)
  return np.log(probs) - np.log1p(-probs)


def apply_temperature(probs, temperature: float) -> np.ndarray:
  """P(blast) with its logit divided by `temperature` (1 = unchanged). The decision at
  0.5 does not move, so accuracy, sensitivity, specificity and AUC are unchanged."""
  if temperature == 1.0:
    return np.asarray(probs, np.float64)
  return 1.0 / (1.0 + np.exp(-_logits(probs) / temperature))


def fit_temperature(labels, probs, iterations: int = 60) -> float:
  """The temperature minimising the negative log-likelihood of `labels` (temperature
  scaling, Guo et al. 2017), by golden-section search over log T in TEMPERATURE_RANGE."""
  labels, probs = _check_labels_probs(labels, probs)
  logits = _logits(probs)

  def nll(log_t):
    z = logits / np.exp(log_t)
    return float(np.mean(np.logaddexp(0.0, z) - labels * z))

  low, high = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])
  ratio = (np.sqrt(5.0) - 1.0) / 2.0
  a, b = high - ratio * (high - low), low + ratio * (high - low)
  for _ in range(iterations):
    if nll(a) < nll(b):
      high, b = b, a
      a = high - ratio * (high - low)
    else:
      low, a = a, b
      b = low + ratio * (high - low)
  return float(np.exp((low + high) / 2.0))


def evaluation_metrics(labels, probs, groups=None, group_name: str = "embryos",
                       threshold: float = 0.5, seed: int = 0, intervals: bool = True) -> dict:
  """classification_metrics plus what makes a small test set readable: `ci95` (bootstrap
  over embryos, or over `groups`; skipped with intervals=False, e.g. for the loop's
  validation, which reads one scalar), `brier`, `ece`, and how the threshold was chosen."""
  metrics = classification_metrics(labels, probs, threshold)
  if intervals:
    metrics["ci95"] = bootstrap_intervals(labels, probs, groups, threshold, seed=seed)
    metrics["ci95_resampled"] = group_name if groups is not None else "embryos"
  metrics["brier"] = brier_score(labels, probs)
  metrics["ece"] = expected_calibration_error(labels, probs)
  metrics["threshold_rule"] = FIXED_THRESHOLD_RULE
  return metrics


def early_prediction(labels, probs_by_hours: Mapping[float, Sequence[float]],
                     threshold: float = 0.5) -> dict:
  """Accuracy and AUC when only the first X hours are observed, for each cut-off X.

  `area_under_accuracy_curve` is the trapezoidal area under accuracy(hours), divided by
  the hours spanned, so it is a mean accuracy over the observation window (in [0, 1]).
  """
  if not probs_by_hours:
    raise ValueError("early_prediction needs at least one hours cut-off")
  hours = sorted(float(h) for h in probs_by_hours)
  by_float = {float(h): p for h, p in probs_by_hours.items()}
  per_cutoff = [classification_metrics(labels, by_float[h], threshold) for h in hours]
  accuracy = [m["accuracy"] for m in per_cutoff]
  auc = [m["auc"] for m in per_cutoff]
  if len(hours) > 1:
    area = float(np.trapezoid(accuracy, hours) / (hours[-1] - hours[0]))
  else:
    area = float(accuracy[0])
  return {"hours": hours, "accuracy": accuracy, "auc": auc,
          "sensitivity": [m["sensitivity"] for m in per_cutoff],
          "specificity": [m["specificity"] for m in per_cutoff],
          "area_under_accuracy_curve": area}


def average_by_example(example_index, probs) -> tuple[np.ndarray, np.ndarray]:
  """Averages clip probabilities per example (Hara's sliding-window evaluation).

  Returns the sorted distinct example indices and the mean probability of each.
  """
  example_index = np.asarray(example_index).reshape(-1)
  probs = np.asarray(probs, np.float64).reshape(-1)
  if example_index.shape != probs.shape:
    raise ValueError(f"example_index ({example_index.size}) and probs ({probs.size}) differ in length")
  indices, inverse = np.unique(example_index, return_inverse=True)
  sums = np.bincount(inverse, weights=probs, minlength=indices.size)
  counts = np.bincount(inverse, minlength=indices.size)
  return indices, sums / counts


def aggregate_folds(fold_metrics: Sequence[Mapping[str, object]]) -> dict:
  """Mean, standard deviation (ddof=1) and per-fold values of each scalar metric."""
  if not fold_metrics:
    raise ValueError("aggregate_folds needs the metrics of at least one fold")
  out = {}
  for key, value in fold_metrics[0].items():
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      continue
    values = [float(m[key]) for m in fold_metrics]
    finite = [v for v in values if not math.isnan(v)]
    out[key] = {
        "mean": float(np.mean(finite)) if finite else float("nan"),
        "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0 if finite else float("nan"),
        "values": values,
    }
  return out


def format_metrics(metrics: Mapping[str, object], keys=("accuracy", "auc", "sensitivity",
                                                        "specificity", "balanced_accuracy")) -> str:
  """One line for the console: `accuracy=0.812 auc=0.874 ...` (mean ± std for folds)."""
  parts = []
  for key in keys:
    if key not in metrics:
      continue
    value = metrics[key]
    if isinstance(value, Mapping):
      parts.append(f"{key}={value['mean']:.3f}±{value['std']:.3f}")
    else:
      parts.append(f"{key}={float(value):.3f}")
  return " ".join(parts)


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
  """Writes JSON atomically (temp file + rename), so a crash never leaves half a file."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(_json_ready(payload), f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def write_predictions(path: str, rows: Sequence[Mapping[str, object]]) -> None:
  """Per-embryo predictions as CSV (columns from the first row, in order), atomically."""
  if not rows:
    raise ValueError(f"no predictions to write to {path}")
  columns = list(rows[0].keys())
  tmp = f"{path}.tmp"
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
  os.replace(tmp, path)


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_roc(path: str, labels, probs, title: str = "ROC", threshold: float = 0.5) -> None:
  """Saves the ROC curve with its AUC, the operating point at `threshold` and n as a PNG."""
  plt = _pyplot()
  fpr, tpr, _ = roc_curve(labels, probs)
  point = classification_metrics(labels, probs, threshold)
  fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
  ax.plot(fpr, tpr, lw=2, label=f"AUC = {roc_auc(labels, probs):.3f}")
  ax.plot([1 - point["specificity"]], [point["sensitivity"]], "o", color="C3",
          label=f"threshold {threshold:g}")
  ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1)
  ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"{title} (n = {point['num_examples']})",
         xlim=(0, 1), ylim=(0, 1.01))
  ax.legend(loc="lower right")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def plot_confusion_matrix(path: str, labels, probs, threshold: float = 0.5, title: str = "") -> None:
  """Saves the confusion matrix at `threshold` (rows: true class) as a PNG."""
  plt = _pyplot()
  metrics = classification_metrics(labels, probs, threshold)
  matrix = np.asarray(metrics["confusion_matrix"])
  fig, ax = plt.subplots(figsize=(4.2, 3.8), dpi=120)
  ax.imshow(matrix, cmap="Blues", vmin=0)
  for (row, col), count in np.ndenumerate(matrix):
    ax.text(col, row, str(count), ha="center", va="center",
            color="white" if count > matrix.max() / 2 else "black")
  ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES,
         xlabel="predicted", ylabel="true",
         title=f"{title + ', ' if title else ''}threshold {threshold:g} (n = {metrics['num_examples']})")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def reliability_bins(labels, probs, num_bins: int = 10) -> list:
  """(mean P(blast), fraction of blasts, count) of each non-empty equal-width bin."""
  labels, probs = _check_labels_probs(labels, probs)
  bins = np.minimum((probs * num_bins).astype(np.int64), num_bins - 1)
  return [(float(probs[bins == b].mean()), float(labels[bins == b].mean()), int((bins == b).sum()))
          for b in np.unique(bins)]


def plot_calibration(path: str, labels, probs, title: str = "") -> None:
  """Saves the reliability diagram (fraction of blasts against mean P(blast) per bin,
  marker size by count) with the ECE and the Brier score as a PNG."""
  plt = _pyplot()
  points = reliability_bins(labels, probs)
  fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
  ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1, label="perfect calibration")
  ax.plot([p for p, _, _ in points], [f for _, f, _ in points], "-", color="C0")
  ax.scatter([p for p, _, _ in points], [f for _, f, _ in points], s=[12 + 8 * c for _, _, c in points],
             color="C0", label="bins of 0.1 (size: embryos)")
  ax.set(xlabel="mean P(blast)", ylabel="fraction of blasts", xlim=(0, 1), ylim=(0, 1.01),
         title=f"{title + ': ' if title else ''}ECE {expected_calibration_error(labels, probs):.3f}, "
               f"Brier {brier_score(labels, probs):.3f} (n = {len(np.asarray(labels))})")
  ax.legend(loc="upper left", fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def plot_early_prediction(path: str, early: Mapping[str, Sequence[float]]) -> None:
  """Saves accuracy and AUC against hours observed as a PNG."""
  plt = _pyplot()

  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  ax.plot(early["hours"], early["accuracy"], marker="o", label="accuracy")
  auc = [np.nan if a is None else a for a in early["auc"]]
  ax.plot(early["hours"], auc, marker="s", label="AUC")
  ax.axhline(0.5, ls="--", color="gray", lw=1)
  ax.set(xlabel="hours observed", ylabel="score", ylim=(0, 1.01),
         title=f"Early prediction (area under accuracy = {early['area_under_accuracy_curve']:.3f})")
  ax.legend(loc="lower right")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def write_evaluation(workdir: str, metrics: Mapping[str, object],
                     predictions: Sequence[Mapping[str, object]],
                     early: Optional[Mapping[str, object]] = None,
                     labels=None, probs=None) -> dict:
  """Writes metrics.json, predictions.csv and the plots into `workdir`.

  `predictions` rows carry at least `label` and `prob_blast` (plus embryo_id, patient_id,
  ...); the ROC plot is drawn from them unless `labels`/`probs` are given. Returns the
  paths written, by kind.
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
  if len(set(np.asarray(labels).tolist())) == 2:
    plot_roc(paths["roc"], labels, probs)
  else:
    del paths["roc"]
  paths["confusion_matrix"] = os.path.join(workdir, "confusion_matrix.png")
  plot_confusion_matrix(paths["confusion_matrix"], labels, probs)
  paths["calibration"] = os.path.join(workdir, "calibration.png")
  plot_calibration(paths["calibration"], labels, probs)
  if early is not None:
    paths["early_prediction"] = os.path.join(workdir, "early_prediction.png")
    plot_early_prediction(paths["early_prediction"], early)
  return paths
