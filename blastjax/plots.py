"""The plots of an evaluation, each titled with the run (model, checkpoint step or
folds) and n: ROC with its operating point, the confusion matrix, the reliability
diagram, accuracy and AUC against hours observed (with their 95% bands) and the
training curves. Each is written whole or not at all (`save_figure`); matplotlib is
imported only to draw."""

from __future__ import annotations

import contextlib
import math
import os
from typing import Mapping, Sequence

import numpy as np

from blastjax import evaluate


@contextlib.contextmanager
def replacing(path: str):
  """Yields a temporary path to write; renamed to `path` when the block succeeds and
  removed when it fails (a full disk), so `path` is written whole or not at all."""
  tmp = f"{path}.tmp"
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def save_figure(fig, path: str) -> None:
  """Saves a matplotlib figure whole or not at all."""
  with replacing(path) as tmp:
    fig.savefig(tmp, format=os.path.splitext(path)[1][1:] or "png")


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def run_caption(model: str = "", step=None, num_folds=None) -> str:
  """What every plot's title names the run by: 'resnet50, step 400' (or '..., 5 folds')."""
  parts = [str(model)] if model else []
  if isinstance(step, (int, np.integer)) and not isinstance(step, bool):
    parts.append(f"step {int(step)}")
  if num_folds:
    parts.append(f"{int(num_folds)} folds")
  return ", ".join(parts)


def _set_title(ax, run: str, num_embryos: int, detail: str) -> None:
  """Line 1: the run and n; line 2: what this plot shows."""
  head = f"{run + ', ' if run else ''}n = {num_embryos} embryos"
  ax.set_title(f"{head}\n{detail}", fontsize=9)


def plot_roc(path: str, labels, probs, threshold: float = 0.5, run: str = ""):
  """Saves the ROC curve with its AUC, the operating point at `threshold` and n as a PNG;
  returns the (closed) figure."""
  plt = _pyplot()
  fpr, tpr, _ = evaluate.roc_curve(labels, probs)
  point = evaluate.classification_metrics(labels, probs, threshold)
  fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
  ax.plot(fpr, tpr, lw=2, label=f"AUC = {evaluate.roc_auc(labels, probs):.3f}")
  ax.plot([1 - point["specificity"]], [point["sensitivity"]], "o", color="C3",
          label=f"threshold {threshold:g}: sensitivity {point['sensitivity']:.2f}, "
                f"specificity {point['specificity']:.2f}")
  ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1)
  ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
  _set_title(ax, run, point["num_examples"], f"ROC, operating point at threshold {threshold:g}")
  ax.legend(loc="lower right", fontsize=8)
  return _saved(plt, fig, path)


def _saved(plt, fig, path: str):
  fig.tight_layout()
  save_figure(fig, path)
  plt.close(fig)  # a closed figure keeps its axes and titles (what the tests read)
  return fig


def plot_confusion_matrix(path: str, labels, probs, threshold: float = 0.5, run: str = ""):
  """Saves the confusion matrix at `threshold` (rows: true class) as a PNG; returns the
  (closed) figure."""
  plt = _pyplot()
  metrics = evaluate.classification_metrics(labels, probs, threshold)
  matrix = np.asarray(metrics["confusion_matrix"])
  fig, ax = plt.subplots(figsize=(4.2, 3.8), dpi=120)
  ax.imshow(matrix, cmap="Blues", vmin=0)
  for (row, col), count in np.ndenumerate(matrix):
    ax.text(col, row, str(count), ha="center", va="center",
            color="white" if count > matrix.max() / 2 else "black")
  ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=evaluate.CLASS_NAMES, yticklabels=evaluate.CLASS_NAMES,
         xlabel="predicted", ylabel="true")
  _set_title(ax, run, metrics["num_examples"], f"confusion matrix at threshold {threshold:g}")
  return _saved(plt, fig, path)


def plot_calibration(path: str, labels, probs, run: str = ""):
  """Saves the reliability diagram (fraction of blasts against mean P(blast) per bin,
  marker size by count) with the ECE and the Brier score as a PNG; returns the (closed)
  figure."""
  plt = _pyplot()
  points = evaluate.reliability_bins(labels, probs)
  fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
  ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1, label="perfect calibration")
  ax.plot([p for p, _, _ in points], [f for _, f, _ in points], "-", color="C0")
  ax.scatter([p for p, _, _ in points], [f for _, f, _ in points], s=[12 + 8 * c for _, _, c in points],
             color="C0", label="bins of 0.1 (size: embryos)")
  ax.set(xlabel="mean P(blast)", ylabel="fraction of blasts", xlim=(0, 1), ylim=(0, 1.01))
  _set_title(ax, run, len(np.asarray(labels).reshape(-1)),
             f"calibration: ECE {evaluate.expected_calibration_error(labels, probs):.3f}, "
             f"Brier {evaluate.brier_score(labels, probs):.3f}")
  ax.legend(loc="upper left", fontsize=8)
  return _saved(plt, fig, path)


def _floats(values) -> np.ndarray:
  """None (a NaN read back from metrics.json) as NaN, so matplotlib leaves a gap."""
  return np.asarray([np.nan if v is None else v for v in values], np.float64)


def plot_early_prediction(path: str, early: Mapping[str, Sequence[float]], run: str = ""):
  """Saves accuracy and AUC against hours observed as a PNG, with their 95% bootstrap
  intervals as bands when the curve has them (`ci95`); returns the (closed) figure."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  hours = np.asarray(early["hours"], np.float64)
  intervals = early.get("ci95") or {}
  for name, label, marker, color in (("accuracy", "accuracy", "o", "C0"), ("auc", "AUC", "s", "C1")):
    ax.plot(hours, _floats(early[name]), marker=marker, color=color, label=label)
    if name in intervals:
      bounds = np.asarray([_floats(b) for b in intervals[name]], np.float64).reshape(-1, 2)
      ax.fill_between(hours, bounds[:, 0], bounds[:, 1], color=color, alpha=0.2, lw=0,
                      label=f"{label} 95% interval")
  ax.axhline(0.5, ls="--", color="gray", lw=1)
  ax.set(xlabel="hours observed", ylabel="score", ylim=(0, 1.01))
  num = early.get("num_embryos")
  _set_title(ax, run, num if num is not None else "?",
             f"early prediction (area under accuracy = {early['area_under_accuracy_curve']:.3f})")
  ax.legend(loc="lower right", fontsize=8)
  return _saved(plt, fig, path)


# (metric, panel title, kinds of metrics.jsonl row drawn in it): one panel each.
TRAINING_CURVE_PANELS = (
    ("loss", "loss", ("train", "validation")),
    ("accuracy", "accuracy", ("train", "validation")),
    ("learning_rate", "learning rate", ("train",)),
    ("auc", "validation AUC", ("validation",)),
    ("balanced_accuracy", "validation balanced accuracy", ("validation",)),
    ("sensitivity", "validation sensitivity", ("validation",)),
    ("specificity", "validation specificity", ("validation",)),
)


def _series(rows, kind: str, key: str):
  points = [(row["step"], row[key]) for row in rows
            if row.get("kind") == kind and isinstance(row.get(key), (int, float))
            and not isinstance(row.get(key), bool)]
  return [p[0] for p in points], [p[1] for p in points]


def plot_training_curves(path: str, rows: Sequence[Mapping[str, object]], model: str = ""):
  """Saves metrics.jsonl's curves against the step as a PNG, one panel per metric of
  TRAINING_CURVE_PANELS that the log has (train rows: means over their logging window;
  validation rows: the validation split's metrics); returns the (closed) figure."""
  plt = _pyplot()
  panels = []
  for key, title, kinds in TRAINING_CURVE_PANELS:
    lines = [(kind, *_series(rows, kind, key)) for kind in kinds]
    lines = [line for line in lines if line[1]]
    if lines:
      panels.append((key, title, lines))
  if not panels:
    raise ValueError(f"no train or validation rows to draw in {path}")
  cols = min(4, len(panels))
  nrows = math.ceil(len(panels) / cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), dpi=110, squeeze=False)
  for ax in axes.flat[len(panels):]:
    fig.delaxes(ax)
  for ax, (key, title, lines) in zip(axes.flat, panels):
    for kind, steps, values in lines:
      ax.plot(steps, values, marker="." if len(steps) < 50 else None, label=kind,
              color="C0" if kind == "train" else "C1")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    if key == "learning_rate":
      ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
      ax.yaxis.get_offset_text().set_fontsize(7)
    if len(lines) > 1:
      ax.legend(fontsize=7)
  final = max(int(row["step"]) for row in rows)
  fig.suptitle(f"{run_caption(model, final)}: training curves", fontsize=10)
  return _saved(plt, fig, path)


def plot_table(path: str, labels, values, lows, highs, references, xlabel: str, title: str,
               reference_label: str = "paper"):
  """One point per row with its interval [low, high] (blastjax's), and a cross at the
  reference value (the paper's) where there is one (NaN: none); returns the figure."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(labels) + 1.6))
  y = np.arange(len(labels))[::-1]
  values, lows, highs, references = (_floats(v) for v in (values, lows, highs, references))
  shown = np.isfinite(values)
  bounded = shown & np.isfinite(lows) & np.isfinite(highs)
  if bounded.any():
    ax.errorbar(values[bounded], y[bounded], xerr=[values[bounded] - lows[bounded], highs[bounded] - values[bounded]],
                fmt="o", color="tab:blue", capsize=3, label="blastjax (95% interval)")
  if (shown & ~bounded).any():
    ax.plot(values[shown & ~bounded], y[shown & ~bounded], "o", color="tab:blue",
            label=None if bounded.any() else "blastjax")
  if np.isfinite(references).any():
    ax.plot(references[np.isfinite(references)], y[np.isfinite(references)], "x", color="tab:red", markersize=8,
            label=reference_label)
  ax.set_yticks(y)
  ax.set_yticklabels(list(labels))
  ax.set_xlabel(xlabel)
  ax.set_title(title, fontsize=10)
  ax.grid(axis="x", alpha=0.3)
  if ax.get_legend_handles_labels()[1]:
    ax.legend(loc="best", fontsize=8)
  return _saved(plt, fig, path)
