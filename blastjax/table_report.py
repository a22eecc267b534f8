"""A reproduced table's outputs: what the runs present say (`collect`), and table.json,
table.csv, table.md and table.png in the table's folder (`write`).

Every file is rebuilt from the runs' own files (predictions.csv, metrics.json,
config.json), so `--collect` after a partial table gives the rows present and names the
runs missing.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from typing import Optional


from blastjax import results, table_stats, tables
from blastjax.plots import replacing


def _units(plan) -> list:
  """The folders holding one evaluated run each: the run itself, or each fold of it."""
  if not os.path.exists(os.path.join(plan.workdir, "metrics.json")):
    return []
  if plan.mode != "cross_validation":
    return [plan.workdir] if os.path.exists(os.path.join(plan.workdir, "predictions.csv")) else []
  folds = [os.path.join(plan.workdir, f"fold_{i}") for i in range(int(plan.config.num_folds))]
  return [f for f in folds if os.path.exists(os.path.join(f, "predictions.csv"))]


def _resampled_by_patient(unit: str) -> bool:
  with open(os.path.join(unit, "metrics.json")) as f:
    return json.load(f).get("ci95_resampled") == "patients"


def _available(predictions, names) -> tuple:
  """(the metrics the run can give, {metric: why not} for the others)."""
  ok, problems = [], {}
  for name in names:
    try:
      table_stats.metric_values(predictions, [name])
      ok.append(name)
    except KeyError as error:
      problems[name] = str(error.args[0])
  return ok, problems


def _row_values(table, units: list, repeat: str) -> tuple:
  predictions = [table_stats.Predictions.read(os.path.join(u, "predictions.csv")) for u in units]
  names, problems = _available(predictions[0], table.metrics)
  if len(units) == 1:
    values = table_stats.one_run(predictions[0], names, _resampled_by_patient(units[0]))
  else:
    per_run = [table_stats.metric_values(p, names) for p in predictions]
    values = table_stats.over_runs(per_run, names, "folds" if repeat == "folds" else "seeds")
  return values, problems, int(predictions[0].labels.size)


def _parameters(plan) -> Optional[int]:
  """The parameter count of the row's model as the run was configured (its config.json
  when present), None when the model cannot be built here."""
  from blastjax import rundir, train_step  # heavy (jax, the zoo)

  config = plan.config
  if os.path.exists(os.path.join(plan.workdir, rundir.CONFIG)):
    config = rundir.read_config(plan.workdir, "reproduce")
  try:
    return train_step.count_parameters(config)
  except (KeyError, ValueError, TypeError):
    return None


def machine() -> str:
  import jax

  device = jax.devices()[0]
  kind = getattr(device, "device_kind", device.platform)
  return (f"{platform.node()}: {platform.machine()}, {os.cpu_count()} CPU cores, "
          f"{jax.device_count()} x {kind} ({jax.default_backend()}), jax {jax.__version__}")


def collect(table: tables.Table, plans: list, settings, failures=()) -> dict:
  """table.json's content: per row the paper's values and blastjax's (with intervals),
  the parameter counts, and which runs are present, missing or failed."""
  failed = {plan.workdir: message for plan, message in failures}
  rows, missing_runs = [], []
  for key in dict.fromkeys(p.row.key for p in plans):
    row_plans = [p for p in plans if p.row.key == key]
    row = row_plans[0].row
    units, missing = [], []
    for plan in row_plans:
      found = _units(plan)
      units.extend(found)
      if not found:
        missing.append({"run": plan.unit, "workdir": plan.workdir, "failed": failed.get(plan.workdir, "")})
    values, problems, num_test = (_row_values(table, units, settings.repeat) if units else ({}, {}, 0))
    params = _parameters(row_plans[0])
    rows.append({"key": row.key, "label": row.label, "group": row.group, "config": row.config,
                 "paper": dict(row.paper), "paper_params_m": row.paper_params,
                 "params": params, "values": values, "unavailable": problems, "num_test_embryos": num_test,
                 "runs": {"expected": len(row_plans), "present": len(row_plans) - len(missing),
                          "missing": missing}})
    missing_runs.extend(missing)
  return {"table": table.name, "title": table.title, "source": table.source, "notes": table.notes,
          "metric": table.metric, "metrics": list(table.metrics), "settings": settings.to_json(),
          "repeat": settings.repeat, "count": settings.count, "smoke": settings.smoke,
          "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "machine": machine(), "command": command(table, settings), "rows": rows,
          "missing_runs": missing_runs}


def command(table, settings) -> str:
  parts = ["python -m blastjax.reproduce", f"--table {settings.table}", "--workdir DIR"]
  if settings.smoke:
    parts.append("--smoke")
  if settings.repeat != table.repeat or settings.count != table.count:
    parts.append(f"--{settings.repeat} {settings.count}")
  if settings.rows:
    parts.append(f"--rows {','.join(settings.rows)}")
  parts.extend(f"--config.{field}={value}" for field, value in settings.overrides)
  return " ".join(parts)


# ------------------------------------------------------------------------ formatting

METRIC_LABELS = {"accuracy": "Accuracy", "auc": "AUC", "balanced_accuracy": "Bal. acc.",
                 "sensitivity": "Sensitivity", "specificity": "Specificity", "precision_macro": "Precision",
                 "recall_macro": "Recall", "f1_macro": "F1", "early_area": "Early area",
                 "early_area_from_0h": "AUC (acc. curve)"}


def metric_label(name: str) -> str:
  match = tables.AT_HOURS.match(name)
  if match:
    kind, hours = match.groups()
    day = float(hours) / 24.0
    return f"{'Acc.' if kind == 'accuracy' else 'AUC'} Day {day:g}"
  return METRIC_LABELS.get(name, name)


def _scaled(name: str, value) -> float:
  return float(value) * 100.0 if tables.is_percent(name) else float(value)


def _number(name: str, value) -> str:
  if value is None or not math.isfinite(float(value)):
    return "–"
  return f"{_scaled(name, value):.2f}" if tables.is_percent(name) else f"{float(value):.3f}"


def _paper(name: str, row: dict) -> str:
  value = row["paper"].get(name)
  if value is None:
    return "–"
  return f"{value:.2f}" if tables.is_percent(name) else f"{value:.4g}"


def ours(name: str, row: dict) -> str:
  """`72.9 [65.1, 80.2]` (percent metrics in %), or why it is missing."""
  cell = row["values"].get(name)
  if cell is None:
    return "missing" if not row["values"] else "n/a"
  low, high = cell["low"], cell["high"]
  interval = f" [{_number(name, low)}, {_number(name, high)}]" if math.isfinite(low) and math.isfinite(high) else ""
  return _number(name, cell["value"]) + interval


def _params_m(count) -> str:
  if count is None:
    return "–"
  return f"{count / 1e6:.2f}" if count >= 5_000 else f"{count / 1e6:.4f}"


def markdown(report: dict) -> str:
  """The table in the paper's layout: per row the paper's value of each metric it gives
  next to blastjax's with its 95% interval, the parameter counts, the runs present."""
  metrics = report["metrics"]
  paper_metrics = [m for m in metrics if any(m in row["paper"] for row in report["rows"])]
  header = ["Method", "Params (M) paper", "Params (M) blastjax"]
  for name in metrics:
    if name in paper_metrics:
      header.append(f"{metric_label(name)} paper")
    header.append(f"{metric_label(name)} blastjax")
  header.append("Runs")
  lines = [f"# {report['title']}", "",
           f"Paper: `{report['source']}`. Command: `{report['command']}`.",
           f"Machine: {report['machine']}. Created {report['created']}."
           + (" Smoke sizes (tiny models, synthetic data): not the paper's setup." if report["smoke"] else ""),
           "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in report["rows"]:
    cells = [row["label"], "–" if row["paper_params_m"] is None else f"{row['paper_params_m']:.2f}",
             _params_m(row["params"])]
    for name in metrics:
      if name in paper_metrics:
        cells.append(_paper(name, row))
      cells.append(ours(name, row))
    runs = row["runs"]
    cells.append(f"{runs['present']}/{runs['expected']}")
    lines.append("| " + " | ".join(cells) + " |")
  methods = sorted({cell["method"] for row in report["rows"] for cell in row["values"].values()})
  lines += ["", "blastjax's intervals: 95%, " + "; ".join(methods) + "." if methods else
            "", "Percent metrics in %, the others as fractions (the papers' units)."]
  if report["notes"]:
    lines += ["", report["notes"]]
  for run in report["missing_runs"]:
    lines.append(f"- missing: {run['workdir']}" + (f" (failed: {run['failed']})" if run["failed"] else ""))
  return "\n".join(lines) + "\n"


def write_csv(path: str, report: dict) -> None:
  rows = []
  for row in report["rows"]:
    out = {"key": row["key"], "label": row["label"], "group": row["group"], "config": row["config"],
           "paper_params_m": row["paper_params_m"], "params": row["params"],
           "runs_present": row["runs"]["present"], "runs_expected": row["runs"]["expected"]}
    for name in report["metrics"]:
      cell = row["values"].get(name, {})
      out[f"paper_{name}"] = row["paper"].get(name)
      out[name] = cell.get("value")
      out[f"{name}_low"] = cell.get("low")
      out[f"{name}_high"] = cell.get("high")
    rows.append(out)
  results.write_predictions(path, rows)


def plot(path: str, report: dict):
  """The table's metric per row: blastjax's value with its interval, the paper's beside it."""
  from blastjax import plots

  name = report["metric"]
  nan = float("nan")
  cells = [row["values"].get(name) or {"value": nan, "low": nan, "high": nan} for row in report["rows"]]
  return plots.plot_table(
      path, [row["label"] for row in report["rows"]],
      values=[_scaled(name, c["value"]) for c in cells], lows=[_scaled(name, c["low"]) for c in cells],
      highs=[_scaled(name, c["high"]) for c in cells],
      references=[_scaled_paper(name, row) for row in report["rows"]],
      xlabel=metric_label(name) + (" (%)" if tables.is_percent(name) else ""),
      title=report["title"] + (" (smoke sizes)" if report["smoke"] else ""))


def _scaled_paper(name: str, row: dict) -> float:
  value = row["paper"].get(name)
  return float("nan") if value is None else float(value)


def write(workdir: str, report: dict) -> dict:
  """table.json, table.csv, table.md and table.png in `workdir`; returns their paths."""
  paths = {kind: os.path.join(workdir, f"table.{kind}") for kind in ("json", "csv", "md", "png")}
  results.write_json(paths["json"], report)
  write_csv(paths["csv"], report)
  with replacing(paths["md"]) as tmp, open(tmp, "w", encoding="utf-8") as f:
    f.write(markdown(report))
  plot(paths["png"], report)
  return paths
