"""The per-embryo report and the batch form of predict (docs/report.md).

    python -m blastjax.predict --workdir RUN --embryo_dir DIR --report out.html[,out.png]
    python -m blastjax.predict --workdir RUN --embryos_dir DIR --out predictions.csv

The report: P(blast) against hours observed with its interval, the decision at the
run's threshold, calibrated or not, the key frames with their saliency
(blastjax.explain), the model and run, and predict's data warnings. The HTML is one
self-contained file (images as base64 data URIs); the PNG draws the same content with
matplotlib. The batch form writes one row per sub-folder of --embryos_dir; a folder that
cannot be read is a row with its error in `note`, not a crash.

The interval is not a resampling of the one embryo (there is nothing to resample): it
is the run's test-set reliability at this probability -- the blast rate among the test
embryos of the run's predictions.csv whose P(blast) falls in the same bin of 0.1, with
its Wilson 95% interval. It is left out (and said why) when the run has no
predictions.csv of the same checkpoint step, or no test embryo in that bin.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import sys
from typing import Optional

import numpy as np
from PIL import Image

from blastjax import evaluate, plots, predict, results
from blastjax.explain import report as explain_report
from blastjax.explain.scores import eval_variables

NUM_BINS = 10  # the reliability diagram's bins (evaluate.reliability_bins)
WILSON_Z = 1.959963984540054  # two-sided 95%
FORMATS = (".html", ".png")


# ---------------------------------------------------------------------------- the run's facts


def run_threshold(workdir: str) -> tuple[float, str]:
  """(threshold, where it came from): metrics.json's `threshold`, else 0.5."""
  path = os.path.join(workdir, "metrics.json")
  try:
    with open(path) as f:
      value = json.load(f).get("threshold")
  except (OSError, ValueError, AttributeError):
    value = None
  if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
    return float(value), f"{path} threshold"
  return 0.5, "default 0.5 (no threshold in metrics.json)"


def wilson_interval(successes: int, n: int, z: float = WILSON_Z) -> list:
  """[low, high] Wilson score interval of a binomial proportion (NaN, NaN for n = 0)."""
  if n <= 0:
    return [float("nan"), float("nan")]
  p = successes / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return [max(0.0, centre - half), min(1.0, centre + half)]


def reliability_bin(prob: float, num_bins: int = NUM_BINS) -> int:
  """The equal-width bin of `prob`, as evaluate.reliability_bins draws it."""
  return min(int(prob * num_bins), num_bins - 1)


class TestReliability:
  """The run's test predictions (predictions.csv) for the report's interval."""

  def __init__(self, workdir: str, step: int):
    self.rows, self.reason = [], ""
    path = os.path.join(workdir, "predictions.csv")
    metrics_step = _metrics_step(workdir)
    if not os.path.exists(path):
      self.reason = f"no {path}: the run has no test predictions to calibrate against"
    elif metrics_step is not None and metrics_step != step:
      self.reason = (f"{path} is of checkpoint step {metrics_step}, the prediction of step {step}: "
                     "re-evaluate the run (--mode evaluate) for an interval")
    else:
      with open(path, newline="") as f:
        self.rows = [r for r in csv.DictReader(f) if r.get("label") in ("0", "1")]
      if not self.rows:
        self.reason = f"{path} has no labelled rows"

  def interval(self, prob: Optional[float], hours: Optional[float] = None) -> dict:
    """{'rate', 'low', 'high', 'n', 'blasts', 'bin'} of the test embryos in `prob`'s bin
    (at the cut-off `hours`: the prob_blast_<h>h column), or {'reason'} when none."""
    if prob is None:
      return {"reason": "no prediction"}
    if not self.rows:
      return {"reason": self.reason}
    column = "prob_blast" if hours is None else f"prob_blast_{hours:g}h"
    if column not in self.rows[0]:
      return {"reason": f"predictions.csv has no {column} column (not a cut-off of the run's evaluation)"}
    b = reliability_bin(prob)
    labels = [int(r["label"]) for r in self.rows if r[column] and reliability_bin(float(r[column])) == b]
    bounds = [b / NUM_BINS, (b + 1) / NUM_BINS]
    if not labels:
      return {"reason": f"no test embryo with {column} in [{bounds[0]:.1f}, {bounds[1]:.1f})", "bin": bounds}
    low, high = wilson_interval(sum(labels), len(labels))
    return {"rate": sum(labels) / len(labels), "low": low, "high": high, "n": len(labels),
            "blasts": sum(labels), "bin": bounds}


def _metrics_step(workdir: str) -> Optional[int]:
  try:
    with open(os.path.join(workdir, "metrics.json")) as f:
      step = json.load(f).get("step")
  except (OSError, ValueError, AttributeError):
    return None
  return int(step) if isinstance(step, int) else None


# ---------------------------------------------------------------------------- prediction


def embryo_result(predictor: predict.Predictor, embryo_dir: str, hours=None) -> dict:
  """predict.predict_embryo with an already built Predictor (one restore and compile for
  many embryos); the same dict, the same probabilities."""
  example = predict.read_embryo(os.path.expanduser(embryo_dir))
  return {**predict.predict_example(predictor, example, hours), "_example": example}


def key_frames(predictor: predict.Predictor, example: dict, checkpoint: str = "", count: int = 3,
               steps: int = 32) -> dict:
  """The explanation of predict --explain, in memory: {'method', 'layer', 'frames': [{'hours',
  'share', 'attribution', 'image': PNG bytes or None}]} of the `count` top frames by |IG|."""
  state, _ = predict.restore_variables(predictor.workdir, checkpoint or predictor.config.eval_checkpoint)
  batch = next(iter(predictor._loader(example, None)))
  explained = explain_report.explain_batch(predictor.model, eval_variables(state), predictor.spec, batch,
                                           count, steps)
  kind = predictor.spec.input_kind
  gray = None if kind == "features" else explain_report.display_frames(explained["_x"], kind)
  maps, pixels = explained["_maps"], explained["_pixels"]
  frames = []
  for t in explained["top_frames"]:
    info = explained["frames"][t]
    frames.append({"position": t, "hours": info["hours"], "share": info["share"],
                   "attribution": info["attribution"],
                   "image": None if gray is None else _panel_png(gray[t], maps, pixels, t)})
  return {"method": explained["method"], "layer": explained["layer"], "frames": frames,
          "score": explained["score"]}


def _panel_png(gray, maps, pixels, t: int) -> bytes:
  """[frame | spatial map | |IG| map] of frame t as PNG bytes (explain's overlays)."""
  panels = [explain_report.overlay(gray, np.zeros_like(gray))]
  if maps is not None:
    panels.append(explain_report.overlay(gray, maps[min(t, len(maps) - 1)]))
  if pixels is not None:
    peak = np.abs(pixels[t]).max()
    panels.append(explain_report.overlay(gray, np.abs(pixels[t]) / peak if peak > 0 else 0 * pixels[t]))
  size = explain_report.DISPLAY_SIZE
  sheet = Image.new("RGB", (size * len(panels), size))
  for i, panel in enumerate(panels):
    sheet.paste(panel, (i * size, 0))
  buffer = io.BytesIO()
  sheet.save(buffer, format="PNG")
  return buffer.getvalue()


def build_report(workdir: str, embryo_dir: str, hours=None, checkpoint: str = "", frames: int = 3) -> dict:
  """Everything the report shows, as one dict (the HTML and the PNG draw from it)."""
  workdir = os.path.expanduser(workdir)
  predictor = predict.Predictor(workdir, checkpoint)
  result = embryo_result(predictor, embryo_dir, hours)
  example = result.pop("_example")
  threshold, threshold_source = run_threshold(workdir)
  reliability = TestReliability(workdir, predictor.step)
  return {**result, "workdir": os.path.abspath(workdir), "model": predictor.config.model,
          "checkpoint": checkpoint or predictor.config.eval_checkpoint,
          "calibrated": predictor.temperature != 1.0, "threshold": threshold,
          "threshold_source": threshold_source, "decision": decision(result["prob_blast"], threshold),
          "interval": reliability.interval(result["prob_blast"]),
          "by_hours_interval": {h: reliability.interval(p, h) for h, p in result["by_hours"].items()},
          "explanation": key_frames(predictor, example, checkpoint, frames)}


def decision(prob: Optional[float], threshold: float) -> str:
  if prob is None:
    return ""
  return evaluate.CLASS_NAMES[int(prob >= threshold)]


# ---------------------------------------------------------------------------- the HTML


def data_uri(png: bytes) -> str:
  return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _interval_text(interval: dict) -> str:
  if "rate" not in interval:
    return f"not shown: {interval.get('reason', '')}"
  return (f"{interval['low']:.3f} to {interval['high']:.3f} (blast rate {interval['rate']:.3f}: "
          f"{interval['blasts']} of {interval['n']} test embryos with P(blast) in "
          f"[{interval['bin'][0]:.1f}, {interval['bin'][1]:.1f}))")


def _calibration_text(report: dict) -> str:
  if report["calibrated"]:
    return f"calibrated (temperature {report['temperature']:.3f}, calibration.json)"
  return "uncalibrated (no calibration.json for this step)"


def curve_png(report: dict, dpi: int = 110) -> bytes:
  """P(blast) against hours observed, with the intervals as error bars, as PNG bytes."""
  plt = plots._pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=dpi)
  _draw_curve(ax, report)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  plt.close(fig)
  return buffer.getvalue()


def _curve_points(report: dict) -> list:
  """(hours, prob, interval) of each cut-off with a prediction, then all frames."""
  points = [(h, p, report["by_hours_interval"][h]) for h, p in report["by_hours"].items() if p is not None]
  if not any(abs(h - report["observed_hours"]) < 1e-6 for h, _, _ in points):
    points.append((report["observed_hours"], report["prob_blast"], report["interval"]))
  return sorted(points, key=lambda point: point[0])


def _draw_curve(ax, report: dict) -> None:
  points = _curve_points(report)
  hours = [h for h, _, _ in points]
  ax.plot(hours, [p for _, p, _ in points], "o-", color="C0", label="P(blast)")
  for h, p, interval in points:
    if "rate" in interval:
      ax.errorbar([h], [interval["rate"]], yerr=[[interval["rate"] - interval["low"]],
                                                 [interval["high"] - interval["rate"]]],
                  fmt="s", color="C1", capsize=3, ms=4)
  if any("rate" in i for _, _, i in points):
    ax.plot([], [], "s", color="C1", label="test blast rate in bin, Wilson 95%")
  ax.axhline(report["threshold"], ls="--", color="gray", lw=1, label=f"threshold {report['threshold']:g}")
  ax.set(xlabel="hours observed", ylabel="P(blast)", ylim=(-0.02, 1.02))
  ax.legend(loc="best", fontsize=7)
  ax.set_title("P(blast) by hours observed", fontsize=9)


STYLE = ("body{font-family:sans-serif;margin:1.5em;max-width:60em;color:#222}"
         "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
         "figure{display:inline-block;margin:.4em}figcaption{font-size:.85em}.warn{color:#a40}")


def render_html(report: dict) -> str:
  """The report as one self-contained HTML page (no external resources)."""
  e = lambda value: html.escape(str(value), quote=True)
  prob = report["prob_blast"]
  parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>Embryo {e(report['embryo_id'])}: P(blast) report</title><style>{STYLE}</style></head><body>",
           f"<h1>Embryo <span id=\"embryo-id\">{e(report['embryo_id'])}</span></h1>", "<table>",
           f'<tr><th>P(blast), all frames (up to {report["observed_hours"]:.1f} h)</th>'
           f'<td id="prob-blast" data-value="{prob!r}">{prob:.4f}</td></tr>',
           f'<tr><th>calibration</th><td id="calibration">{e(_calibration_text(report))}</td></tr>',
           f'<tr><th>interval</th><td id="interval">{e(_interval_text(report["interval"]))}</td></tr>',
           f'<tr><th>decision at threshold <span id="threshold">{report["threshold"]:g}</span></th>'
           f'<td id="decision">{e(report["decision"])}</td></tr>',
           f'<tr><th>threshold from</th><td>{e(report["threshold_source"])}</td></tr>', "</table>",
           "<h2>P(blast) by hours observed</h2>",
           f'<img id="curve" alt="P(blast) by hours observed" src="{data_uri(curve_png(report))}">',
           "<table><tr><th>hours observed</th><th>P(blast)</th><th>decision</th><th>interval</th></tr>"]
  for hours, p in report["by_hours"].items():
    shown = "n/a" if p is None else f"{p:.4f}"
    parts.append(f'<tr class="by-hours" data-hours="{hours!r}" data-value="{"" if p is None else repr(p)}">'
                 f"<td>first {hours:g} h</td><td>{shown}</td><td>{e(decision(p, report['threshold']))}</td>"
                 f"<td>{e(_interval_text(report['by_hours_interval'][hours]))}</td></tr>")
  parts.append("</table>")
  parts += _html_frames(report["explanation"], e)
  parts += ["<h2>Model and run</h2><table>",
            f'<tr><th>model</th><td id="model">{e(report["model"])}</td></tr>',
            f'<tr><th>checkpoint step</th><td id="step">{int(report["step"])}</td></tr>',
            f'<tr><th>checkpoint</th><td>{e(report["checkpoint"])}</td></tr>',
            f'<tr><th>workdir</th><td id="workdir">{e(report["workdir"])}</td></tr></table>',
            "<h2>Data warnings</h2>"]
  notes = report["notes"]
  parts.append("<ul id=\"notes\">" + "".join(f'<li class="warn">{e(n)}</li>' for n in notes) + "</ul>"
               if notes else '<p id="notes">none: the folder matches the training data</p>')
  parts.append("<p><small>The interval is the run's test-set reliability near this probability, not a "
               "resampling of this embryo (docs/report.md).</small></p></body></html>")
  return "\n".join(parts)


def _html_frames(explanation: dict, e) -> list:
  method = {"grad_cam": "Grad-CAM", "attention_rollout": "attention rollout"}.get(explanation["method"], "")
  head = (f"<h2>Key frames</h2><p>The frames with the largest integrated-gradients attribution; panels: "
          f"frame{', ' + method + ' map' if method else ''}, |IG| map"
          f"{' (layer ' + e(explanation['layer']) + ')' if explanation['layer'] else ''}.</p>")
  parts = [head]
  for frame in explanation["frames"]:
    caption = f"{frame['hours']:.1f} h, IG share {frame['share']:.3f} ({frame['attribution']:+.4f})"
    if frame["image"] is None:
      parts.append(f'<p class="frame">{e(caption)}</p>')
    else:
      parts.append(f'<figure class="frame"><img alt="{e(caption)}" src="{data_uri(frame["image"])}">'
                   f"<figcaption>{e(caption)}</figcaption></figure>")
  return parts


# ---------------------------------------------------------------------------- the PNG


def _summary_lines(report: dict) -> list:
  return [f"Embryo {report['embryo_id']}: P(blast) = {report['prob_blast']:.4f} "
          f"(all frames, up to {report['observed_hours']:.1f} h), {_calibration_text(report)}",
          f"decision at threshold {report['threshold']:g}: {report['decision']}",
          f"interval: {_interval_text(report['interval'])}",
          f"model {report['model']}, checkpoint step {int(report['step'])} ({report['checkpoint']}), "
          f"run {report['workdir']}"]


def save_png(report: dict, path: str) -> None:
  """The report drawn with matplotlib (summary, curve, key frames, warnings), whole or not at all."""
  plt = plots._pyplot()
  frames = [f for f in report["explanation"]["frames"] if f["image"] is not None]
  heights = [1.2, 3.0] + ([2.4] if frames else [])
  fig = plt.figure(figsize=(10, sum(heights)), dpi=100)
  grid = fig.add_gridspec(len(heights), max(1, len(frames)), height_ratios=heights)
  text = fig.add_subplot(grid[0, :])
  text.axis("off")
  notes = report["notes"] or ["none: the folder matches the training data"]
  text.text(0, 1, "\n".join(_summary_lines(report) + ["data warnings: " + "; ".join(notes)]),
            va="top", fontsize=8, family="monospace", wrap=True)
  _draw_curve(fig.add_subplot(grid[1, :]), report)
  for i, frame in enumerate(frames):
    ax = fig.add_subplot(grid[2, i])
    ax.imshow(np.asarray(Image.open(io.BytesIO(frame["image"]))))
    ax.axis("off")
    ax.set_title(f"{frame['hours']:.1f} h, IG share {frame['share']:.3f}", fontsize=8)
  fig.tight_layout()
  plots.save_figure(fig, path)
  plt.close(fig)


def write_report(report: dict, paths) -> list:
  """Writes the report to each path (.html or .png), each whole or not at all."""
  for path in paths:
    if path.lower().endswith(".png"):
      save_png(report, path)
    else:
      with plots.replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(render_html(report))
  return list(paths)


def check_report_paths(paths) -> list:
  """--report paths, each .html or .png, in existing folders; ValueError naming the bad one."""
  checked = []
  for path in paths:
    path = os.path.expanduser(path)
    if os.path.splitext(path)[1].lower() not in FORMATS:
      raise ValueError(f"--report {path!r}: give a .html or a .png path (or both, comma-separated)")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
      raise ValueError(f"--report {path!r}: the folder {folder} does not exist")
    checked.append(path)
  return checked


# ---------------------------------------------------------------------------- the batch


def embryo_folders(embryos_dir: str) -> list:
  """The sub-folders of --embryos_dir (one embryo each), sorted by name."""
  if not os.path.isdir(embryos_dir):
    raise predict.PredictError(f"--embryos_dir {embryos_dir!r} is not a directory")
  names = sorted(n for n in os.listdir(embryos_dir) if os.path.isdir(os.path.join(embryos_dir, n)))
  if not names:
    raise predict.PredictError(f"--embryos_dir {embryos_dir!r} has no sub-folders (one per embryo)")
  return [os.path.join(embryos_dir, n) for n in names]


def batch_rows(workdir: str, embryos_dir: str, hours=None, checkpoint: str = "", progress: bool = True) -> list:
  """One predictions row per sub-folder of `embryos_dir`; a folder that cannot be
  predicted is a row with empty values and its error in `note`."""
  from tqdm import tqdm

  workdir, embryos_dir = os.path.expanduser(workdir), os.path.expanduser(embryos_dir)
  folders = embryo_folders(embryos_dir)
  predictor = predict.Predictor(workdir, checkpoint)
  threshold, _ = run_threshold(workdir)
  reliability = TestReliability(workdir, predictor.step)
  cutoffs = sorted(float(h) for h in hours or [])
  rows = []
  for folder in tqdm(folders, desc="predicting", unit="embryo", disable=not progress, dynamic_ncols=True):
    try:
      result = embryo_result(predictor, folder, cutoffs)
    except Exception as error:  # pylint: disable=broad-except -- one bad folder is a row, not the end
      rows.append(_failed_row(os.path.basename(folder), cutoffs, error))
      continue
    rows.append(_row(result, predictor, threshold, reliability))
  return rows


def _row(result: dict, predictor, threshold: float, reliability: TestReliability) -> dict:
  interval = reliability.interval(result["prob_blast"])
  row = {"embryo_id": str(result["embryo_id"]), "prob_blast": result["prob_blast"],
         "calibrated": int(predictor.temperature != 1.0), "threshold": threshold,
         "predicted": int(result["prob_blast"] >= threshold), "decision": decision(result["prob_blast"], threshold),
         "interval_low": interval.get("low", ""), "interval_high": interval.get("high", ""),
         "interval_n": interval.get("n", "")}
  for cutoff, prob in result["by_hours"].items():
    row[f"prob_blast_{cutoff:g}h"] = "" if prob is None else prob
  row["note"] = "; ".join(result["notes"])
  return row


def _failed_row(embryo_id: str, cutoffs, error: Exception) -> dict:
  row = {"embryo_id": embryo_id, "prob_blast": "", "calibrated": "", "threshold": "", "predicted": "",
         "decision": "", "interval_low": "", "interval_high": "", "interval_n": ""}
  row.update({f"prob_blast_{c:g}h": "" for c in cutoffs})
  message = str(error).splitlines()[0] if str(error) else ""
  kind = "" if isinstance(error, predict.PredictError) else f"{type(error).__name__}: "
  row["note"] = f"error: {kind}{message}"
  return row


# ---------------------------------------------------------------------------- the command


def run_from_flags(FLAGS) -> int:
  """predict's --report / --embryos_dir / --out modes; returns the exit status."""
  try:
    hours = predict.parse_hours(FLAGS.hours)
    if not FLAGS.workdir:
      raise ValueError("--workdir is required")
    if FLAGS.embryos_dir or FLAGS.out:
      return _batch(FLAGS, hours)
    if not FLAGS.embryo_dir:
      raise ValueError("--report needs --embryo_dir (one embryo; --embryos_dir with --out for many)")
    paths = check_report_paths(FLAGS.report)
  except ValueError as error:
    if isinstance(error, predict.PredictError):
      raise
    print(f"error: {error}", file=sys.stderr)
    return 2
  report = build_report(FLAGS.workdir, FLAGS.embryo_dir, hours, FLAGS.checkpoint, FLAGS.explain_frames)
  print(predict.format_result(report))
  for path in write_report(report, paths):
    print(f"wrote {path}")
  if FLAGS.explain:  # the files of predict --explain as well
    print(explain_report.format_explanation(explain_report.explain_embryo(
        FLAGS.workdir, FLAGS.embryo_dir, FLAGS.explain_dir, FLAGS.checkpoint, FLAGS.explain_frames)))
  return 0


def _batch(FLAGS, hours) -> int:
  if not (FLAGS.embryos_dir and FLAGS.out):
    raise ValueError("--embryos_dir and --out go together (every sub-folder one embryo, one CSV row each)")
  if FLAGS.report or FLAGS.embryo_dir:
    raise ValueError("--embryos_dir writes --out only; --report and --embryo_dir are for one embryo")
  out = os.path.expanduser(FLAGS.out)
  if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
    raise ValueError(f"--out {FLAGS.out!r}: the folder {os.path.dirname(os.path.abspath(out))} does not exist")
  rows = batch_rows(FLAGS.workdir, FLAGS.embryos_dir, hours, FLAGS.checkpoint)
  results.write_predictions(out, rows)
  failed = sum(1 for r in rows if r["prob_blast"] == "")
  print(f"wrote {out}: {len(rows)} embryos, {failed} failed" + (" (error in the note column)" if failed else ""))
  return 1 if failed == len(rows) else 0
