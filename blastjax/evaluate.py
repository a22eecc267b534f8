"""Evaluation as the field reports it.

Binary metrics (accuracy, balanced accuracy, ROC-AUC, sensitivity, specificity, macro
precision/recall/F1, confusion matrix), the early-prediction curve (metrics when only
the first X hours are observed, and the area under the accuracy curve), clip-probability
averaging for sliding-window evaluation and k-fold aggregation. Every evaluation also
carries what makes a small test set readable: 95% bootstrap intervals (`ci95`, and per
cut-off on the early-prediction curve), the Brier score and the ECE. The files and plots
they become: blastjax.results, blastjax.plots.

Class 1 is `blast` (the positive class): sensitivity is the recall of blasts,
specificity the recall of non-blasts. `probs` are P(blast) = softmax(logits)[..., 1].
Everything here is numpy.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

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


def binary_cross_entropy(labels, probs, eps: float = 1e-7) -> float:
  """Mean binary cross-entropy of P(blast) against the label, P clipped to [eps, 1 - eps]
  (a confident mistake costs -log(eps) ~ 16, not infinity)."""
  labels, probs = _check_labels_probs(labels, probs)
  p = np.clip(probs.astype(np.float64), eps, 1.0 - eps)
  return float(-np.mean(labels * np.log(p) + (1.0 - labels) * np.log1p(-p)))


def expected_calibration_error(labels, probs, num_bins: int = 10) -> float:
  """ECE of P(blast): over `num_bins` equal-width bins of P(blast) in [0, 1], the
  example-weighted mean of |fraction of blasts - mean P(blast)| (the gaps that the
  reliability diagram shows)."""
  points = reliability_bins(labels, probs, num_bins)
  total = sum(count for _, _, count in points)
  return float(sum(count * abs(fraction - mean) for mean, fraction, count in points) / total)


def bootstrap_resamples(groups, num_resamples: int = 1000, seed: int = 0):
  """Yields `num_resamples` index arrays into the embryos, each a resample of the groups
  with replacement (every embryo of a group drawn k times appears k times). Seeded: the
  same groups and seed give the same resamples, so two statistics resampled with the
  same seed (the test metrics and the early-prediction curve) see the same draws."""
  _, group_of = np.unique(np.asarray(groups).reshape(-1), return_inverse=True)
  num_groups = int(group_of.max()) + 1
  rng = np.random.default_rng(seed)
  for _ in range(num_resamples):
    times = np.bincount(rng.integers(0, num_groups, num_groups), minlength=num_groups)[group_of]
    yield np.repeat(np.arange(group_of.size), times)


def percentile_interval(values, level: float = 0.95) -> list:
  """[low, high] percentile interval of the finite `values` (NaN, NaN when none is)."""
  values = np.asarray(values, np.float64)
  values = values[np.isfinite(values)]
  if not values.size:
    return [float("nan"), float("nan")]
  tail = (1.0 - level) / 2.0
  return [float(np.quantile(values, tail)), float(np.quantile(values, 1.0 - tail))]


def _groups_of(labels, groups) -> np.ndarray:
  groups = np.arange(labels.size) if groups is None else np.asarray(groups).reshape(-1)
  if groups.shape != labels.shape:
    raise ValueError(f"groups ({groups.size}) and labels ({labels.size}) differ in length")
  return groups


def bootstrap_intervals(labels, probs, groups=None, threshold: float = 0.5, num_resamples: int = 1000,
                        seed: int = 0, level: float = 0.95) -> dict:
  """Percentile bootstrap intervals {metric: [low, high]} of INTERVAL_METRICS.

  Resamples the embryos with replacement, or whole groups (`groups`: e.g. the patient of
  each embryo, when the split keeps patients apart, so that embryos of one patient move
  together). Seeded: the same inputs give the same intervals. A resample where a metric
  is undefined (AUC with one class drawn) is left out of that metric's interval.
  """
  labels, probs = _check_labels_probs(labels, probs)
  draws = {name: [] for name in INTERVAL_METRICS}
  for chosen in bootstrap_resamples(_groups_of(labels, groups), num_resamples, seed):
    resampled = classification_metrics(labels[chosen], probs[chosen], threshold)
    for name in INTERVAL_METRICS:
      draws[name].append(resampled[name])
  return {name: percentile_interval(values, level) for name, values in draws.items()}


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


def early_prediction(labels, probs_by_hours: Mapping[float, Sequence[float]], threshold: float = 0.5,
                     intervals: bool = False, groups=None, group_name: str = "embryos", seed: int = 0) -> dict:
  """Accuracy and AUC when only the first X hours are observed, for each cut-off X.

  `area_under_accuracy_curve` is the trapezoidal area under accuracy(hours), divided by
  the hours spanned, so it is a mean accuracy over the observation window (in [0, 1]).
  `area_under_accuracy_curve_from_0h` divides the same area by the last cut-off instead
  (hours from 0), as AMSNet's Table 1 "AUC" (its rows reproduce to 1e-4).

  With `intervals`, `ci95` holds the 95% bootstrap interval [low, high] of accuracy and
  AUC at each cut-off (early_intervals: embryos resampled, or `groups`, as the test
  metrics' `ci95`), and `ci95_resampled` says of what.
  """
  if not probs_by_hours:
    raise ValueError("early_prediction needs at least one hours cut-off")
  hours = sorted(float(h) for h in probs_by_hours)
  by_float = {float(h): p for h, p in probs_by_hours.items()}
  per_cutoff = [classification_metrics(labels, by_float[h], threshold) for h in hours]
  accuracy = [m["accuracy"] for m in per_cutoff]
  auc = [m["auc"] for m in per_cutoff]
  area, area_from_0h = accuracy_area(hours, accuracy), accuracy_area(hours, accuracy, from_0h=True)
  curve = {"hours": hours, "accuracy": accuracy, "auc": auc,
           "sensitivity": [m["sensitivity"] for m in per_cutoff],
           "specificity": [m["specificity"] for m in per_cutoff],
           "area_under_accuracy_curve": area, "area_under_accuracy_curve_from_0h": area_from_0h,
           "num_embryos": per_cutoff[0]["num_examples"]}
  if intervals:
    curve["ci95"] = early_intervals(labels, [by_float[h] for h in hours], groups, threshold, seed=seed)
    curve["ci95_resampled"] = group_name if groups is not None else "embryos"
  return curve


def accuracy_area(hours: Sequence[float], accuracy: Sequence[float], from_0h: bool = False) -> float:
  """The trapezoidal area under accuracy(hours) (hours ascending) divided by the hours
  spanned (a mean accuracy over the window) or, `from_0h`, by the last cut-off (AMSNet's
  Table 1 "AUC"); one cut-off's area is its accuracy."""
  if len(hours) == 1:
    return float(accuracy[0])
  area = float(np.trapezoid(accuracy, hours))
  return area / hours[-1] if from_0h else area / (hours[-1] - hours[0])


def early_intervals(labels, probs_per_cutoff: Sequence[Sequence[float]], groups=None, threshold: float = 0.5,
                    num_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
  """{"accuracy": [[low, high] per cut-off], "auc": [...]}: percentile bootstrap
  intervals of each cut-off's accuracy and AUC.

  Every cut-off is scored on the same resamples (bootstrap_resamples with `seed`, as
  bootstrap_intervals draws them), so a cut-off whose probabilities are the full
  video's gets the test metrics' ci95 of accuracy and AUC.
  """
  labels = np.asarray(labels).astype(np.int64).reshape(-1)
  probs = [_check_labels_probs(labels, p)[1] for p in probs_per_cutoff]
  correct = [(p >= threshold).astype(np.int64) == labels for p in probs]
  draws = {"accuracy": [[] for _ in probs], "auc": [[] for _ in probs]}
  for chosen in bootstrap_resamples(_groups_of(labels, groups), num_resamples, seed):
    for i, p in enumerate(probs):
      draws["accuracy"][i].append(float(correct[i][chosen].mean()))
      draws["auc"][i].append(roc_auc(labels[chosen], p[chosen]))
  return {name: [percentile_interval(values, level) for values in per_cutoff]
          for name, per_cutoff in draws.items()}


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


def reliability_bins(labels, probs, num_bins: int = 10) -> list:
  """(mean P(blast), fraction of blasts, count) of each non-empty equal-width bin."""
  labels, probs = _check_labels_probs(labels, probs)
  bins = np.minimum((probs * num_bins).astype(np.int64), num_bins - 1)
  return [(float(probs[bins == b].mean()), float(labels[bins == b].mean()), int((bins == b).sum()))
          for b in np.unique(bins)]
