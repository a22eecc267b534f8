"""The papers' tables as data, for `python -m blastjax.reproduce`.

A table names its rows (a config file of configs/ with its argument, and the paper's
own numbers), the metric the paper reports, the other metrics shown beside it, and how
a row is repeated (seeds, or patient-grouped folds). Nothing here runs anything; the
runner is blastjax.reproduce. A user's own table is the same description as a JSON
file (`--table my_table.json`, see `from_json`).

Units follow the papers: a metric in PERCENT_METRICS is a percentage in `paper` (the
benchmark's 69.43), every other metric a fraction (AMSNet's 0.7633, an F1 of 0.844).

Metric names: every key of evaluate.classification_metrics (accuracy, auc,
balanced_accuracy, sensitivity, specificity, precision_macro, recall_macro, f1_macro),
`early_area` (the area under accuracy-vs-hours divided by the hours spanned),
`early_area_from_0h` (divided by the last cut-off: AMSNet's Table 1 "AUC"),
`accuracy_at_<H>h` and `auc_at_<H>h` (the early-prediction curve at cut-off H hours).
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Mapping, Optional

CLASSIFICATION_METRICS = ("accuracy", "auc", "balanced_accuracy", "sensitivity", "specificity",
                          "precision_macro", "recall_macro", "f1_macro")
EARLY_METRICS = ("early_area", "early_area_from_0h")
AT_HOURS = re.compile(r"^(accuracy|auc)_at_(\d+(?:\.\d+)?)h$")
PERCENT_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity")
REPEATS = ("seeds", "folds")


class TableError(ValueError):
  """A table (built in or a user's JSON file) that cannot be run; the message says why."""


def check_metric(name: str) -> str:
  if name in CLASSIFICATION_METRICS or name in EARLY_METRICS or AT_HOURS.match(name):
    return name
  raise TableError(f"metric {name!r} is unknown; use one of {', '.join(CLASSIFICATION_METRICS + EARLY_METRICS)}"
                   ", accuracy_at_<H>h or auc_at_<H>h")


def is_percent(metric: str) -> bool:
  """Whether the paper states `metric` in percent (accuracy-like metrics)."""
  match = AT_HOURS.match(metric)
  return metric in PERCENT_METRICS or bool(match and match.group(1) == "accuracy")


@dataclasses.dataclass(frozen=True)
class Row:
  """One row: `config` is a config file (a name in configs/ or a path) with an optional
  `:argument`; `paper` the paper's values by metric; `paper_params` its parameter count
  in millions (None where the paper gives none); `overrides` config fields of this row."""

  key: str
  label: str
  config: str
  paper: Mapping[str, float] = dataclasses.field(default_factory=dict)
  paper_params: Optional[float] = None
  overrides: Mapping[str, object] = dataclasses.field(default_factory=dict)
  group: str = ""


@dataclasses.dataclass(frozen=True)
class Table:
  """A paper's table. `metric` is the one the paper reports (the PNG's axis), `columns`
  the others shown; `repeat`/`count` how each row is repeated by default (seeds: one run
  per seed, mean and t-interval over seeds when more than one; folds: one
  cross-validation of `count` patient-grouped folds per row, mean and t-interval over the
  folds); `smoke` config fields every row takes under --smoke (on top of its `:smoke`
  variant), `needs` fields a full (non-smoke) run must be given, with why."""

  name: str
  title: str
  source: str
  rows: tuple
  metric: str = "accuracy"
  columns: tuple = ("auc", "balanced_accuracy", "early_area")
  repeat: str = "seeds"
  count: int = 1
  smoke: Mapping[str, object] = dataclasses.field(default_factory=dict)
  needs: Mapping[str, str] = dataclasses.field(default_factory=dict)
  notes: str = ""

  def __post_init__(self):
    if self.repeat not in REPEATS:
      raise TableError(f"table {self.name!r}: repeat={self.repeat!r}; choose seeds or folds")
    if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
      raise TableError(f"table {self.name!r}: count={self.count!r} must be a positive integer")
    if not self.rows:
      raise TableError(f"table {self.name!r} has no rows")
    keys = [row.key for row in self.rows]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
      raise TableError(f"table {self.name!r}: row keys {', '.join(duplicated)} appear twice")
    for key in keys:
      if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", key):
        raise TableError(f"table {self.name!r}: row key {key!r} must be a folder name (letters, digits, _ . -)")
    for name in (self.metric,) + tuple(self.columns):
      check_metric(name)
    for row in self.rows:
      for name in row.paper:
        check_metric(name)

  @property
  def metrics(self) -> tuple:
    """The primary metric, then the columns (each once)."""
    return tuple(dict.fromkeys((self.metric,) + tuple(self.columns)))


BENCHMARK_SOURCE = "cleavage_stage_blastocyst_dataset.txt"
BENCHMARK_NOTES = ("The benchmark's protocol: half/half class-balanced split by embryo, no validation, "
                   "the last checkpoint tested (Table 2's setup per config file).")


def _benchmark_row(key, label, config, accuracy, params, group):
  return Row(key, label, config, {"accuracy": accuracy}, params, group=group)


# Table 3: (row key, label, config file, accuracy %, parameters M).
_T3 = (("mobilenet_v3", "MobileNetV3", "mobilenet_v3.py", 66.79, 4.20),
       ("inception_v3", "InceptionV3", "inception_v3.py", 72.08, 21.79),
       ("resnet18", "ResNet18", "resnet18.py", 70.94, 11.68),
       ("resnet50", "ResNet50", "resnet50.py", 69.43, 23.56),
       ("resnet101", "ResNet101", "resnet101.py", 67.92, 42.50),
       ("resnet152", "ResNet152", "resnet152.py", 69.06, 58.14),
       ("resnext50", "ResNeXt50", "resnext50.py", 70.19, 22.98),
       ("resnext101", "ResNeXt101", "resnext101.py", 66.42, 86.74),
       ("wide_resnet50", "Wide-ResNet50", "wide_resnet50.py", 67.17, 66.83),
       ("wide_resnet101", "Wide-ResNet101", "wide_resnet101.py", 66.42, 124.84),
       ("densenet121", "Dense-121", "densenet121.py", 73.58, 6.95),
       ("densenet169", "Dense-169", "densenet169.py", 74.72, 12.48),
       ("vit_b_16", "ViT-base", "vit_b_16.py", 70.57, 85.40),
       ("vit_l_16", "ViT-large", "vit_l_16.py", 69.81, 302.78))
# Table 4. ResNet-LSTM/GRU: `:count`, the networks whose counts are the paper's (configs' docs).
_T4 = (("resnet_lstm", "ResNet-LSTM", "resnet_lstm.py:count", 73.96, 22.19),
       ("resnet_gru", "ResNet-GRU", "resnet_gru.py:count", 75.47, 19.56),
       ("i3d", "I3D", "i3d.py", 72.08, 25.84),
       ("r3d", "ResNet3D", "r3d.py", 73.96, 33.15),
       ("mc", "ResNet-MC", "mc.py", 75.09, 11.47),
       ("r2p1d", "ResNet-R(2+1)D", "r2p1d.py", 77.74, 31.30),
       ("mfnet", "MFNet", "mfnet.py", 73.96, 7.69))
T3_ROWS = tuple(_benchmark_row(*row, group="Table 3") for row in _T3)
T4_ROWS = tuple(_benchmark_row(*row, group="Table 4") for row in _T4)
# --smoke sizes of the benchmark rows (on top of each config's `:smoke`): few enough steps
# that the seven Table 4 rows train in minutes on a 2-core CPU (measured: docs/reproduce.md).
BENCHMARK_SMOKE = {"num_steps": 40, "checkpoint_every_steps": 20, "log_every_steps": 10}

# AMSNet Table 1: accuracy (%) when the first Day 0.5 ... Day 7 are observed, and the area.
AMSNET_HOURS = tuple(12 * day for day in range(1, 15))
_T1 = (("baseline", "Baseline (ResNet-50)", "baseline", 1,
        (62.15, 64.24, 68.40, 70.83, 71.88, 71.60, 69.69, 74.74, 77.18, 81.04, 80.99, 82.33, 84.21, 100.00), 0.6987),
       ("tsm_1", "Baseline+TSM", "tsm,planes=1", 1,
        (64.24, 68.58, 72.57, 71.53, 74.31, 73.69, 73.87, 76.31, 81.01, 86.23, 89.92, 89.27, 90.18, 100.00), 0.7354),
       ("tsm_3", "Baseline+TSM", "tsm,planes=3", 3,
        (66.49, 67.88, 71.53, 73.09, 72.92, 72.65, 74.74, 77.35, 84.15, 86.23, 88.97, 89.27, 88.42, 100.00), 0.7360),
       ("tsm_5", "Baseline+TSM", "tsm,planes=5", 5,
        (67.54, 69.27, 74.13, 73.09, 74.48, 74.91, 74.74, 76.66, 81.53, 84.79, 87.07, 88.01, 89.47, 100.00), 0.7371),
       ("tsm_7", "Baseline+TSM", "tsm,planes=7", 7,
        (67.54, 68.92, 71.88, 73.26, 73.61, 74.74, 73.35, 79.62, 81.36, 85.69, 88.40, 88.33, 89.12, 100.00), 0.7372),
       ("channel_3", "Baseline+TSM+Channel", "channel,planes=3", 3,
        (67.54, 70.66, 74.13, 75.69, 74.48, 74.56, 78.75, 81.71, 83.80, 86.94, 88.78, 89.27, 88.77, 100.00), 0.7509),
       ("channel_5", "Baseline+TSM+Channel", "channel,planes=5", 5,
        (67.01, 71.01, 75.00, 75.17, 76.91, 78.05, 78.05, 78.92, 83.10, 88.01, 90.11, 88.33, 89.12, 100.00), 0.7538),
       ("channel_7", "Baseline+TSM+Channel", "channel,planes=7", 7,
        (67.88, 71.70, 75.69, 75.52, 76.91, 77.53, 78.57, 78.75, 82.75, 87.12, 89.73, 88.96, 90.53, 100.00), 0.7555),
       ("amsnet_3", "Baseline+TSM+MFS (AMSNet)", "full,planes=3", 3,
        (68.92, 71.70, 75.17, 75.87, 73.44, 76.48, 79.09, 81.53, 85.19, 88.19, 91.45, 90.22, 90.88, 100.00), 0.7598),
       ("amsnet_5", "Baseline+TSM+MFS (AMSNet)", "full,planes=5", 5,
        (68.58, 72.57, 75.52, 76.91, 76.74, 77.88, 78.75, 80.31, 84.15, 87.84, 91.26, 88.96, 90.18, 100.00), 0.7609),
       ("amsnet_7", "Baseline+TSM+MFS (AMSNet)", "full,planes=7", 7,
        (67.88, 72.57, 75.00, 76.91, 76.39, 78.40, 78.57, 82.23, 84.15, 88.55, 91.83, 89.27, 90.88, 100.00), 0.7633))


def _amsnet_row(key, label, arg, planes, accuracies, area):
  paper = {f"accuracy_at_{h}h": a for h, a in zip(AMSNET_HOURS, accuracies)}
  paper["early_area_from_0h"] = area
  return Row(key, f"{label} #F={planes}", f"amsnet.py:{arg}", paper, group="Table 1")


AMSNET_ROWS = tuple(_amsnet_row(*row) for row in _T1)

# Hara Fig. 2: fine-tuning Kinetics ResNet-18 with the layers up to convX frozen (">convX":
# the layers above it trained; config.freeze names the first trained module) or none ("All").
_FREEZE = (("all", "All", ""), ("above_conv1", ">conv1", "layer1"), ("above_conv2", ">conv2", "layer2"),
           ("above_conv3", ">conv3", "layer3"), ("above_conv4", ">conv4", "layer4"),
           ("above_conv5", ">conv5", "fc"))
HARA_ROWS = tuple(Row(key, label, "hara_resnet3d.py:finetune,depth=18", overrides={"freeze": freeze},
                      group="Fig. 2") for key, label, freeze in _FREEZE)

SEIZURE_ROWS = (Row("i3d_lstm", "I3D features + LSTM", "seizure_i3d_lstm.py",
                    {"f1_macro": 0.844, "precision_macro": 0.857, "recall_macro": 0.838, "auc": 0.90},
                    paper_params=None, group="Sec. 4"),)

TABLES = {
    "benchmark_t3": Table("benchmark_t3", "Table 3: single-frame networks", BENCHMARK_SOURCE, T3_ROWS,
                          smoke=BENCHMARK_SMOKE, notes=BENCHMARK_NOTES),
    "benchmark_t4": Table("benchmark_t4", "Table 4: multi-frame networks", BENCHMARK_SOURCE, T4_ROWS,
                          smoke=BENCHMARK_SMOKE, notes=BENCHMARK_NOTES),
    "benchmark": Table("benchmark", "Tables 3 and 4: single- and multi-frame networks", BENCHMARK_SOURCE,
                       T3_ROWS + T4_ROWS, smoke=BENCHMARK_SMOKE, notes=BENCHMARK_NOTES),
    "amsnet_t1": Table("amsnet_t1", "Table 1: ablation (accuracy when the first Day 0.5 ... 7 are observed)",
                       "amsnet_early_blastocyst_prediction.txt", AMSNET_ROWS, metric="early_area_from_0h",
                       columns=tuple(f"accuracy_at_{h}h" for h in AMSNET_HOURS) + ("auc_at_72h", "auc_at_96h",
                                                                                   "auc_at_120h"),
                       smoke={"num_steps": 40, "checkpoint_every_steps": 20, "log_every_steps": 10},
                       notes="Each row's config is configs/amsnet.py with the row's variant; early "
                             "prediction at 12, 24, ..., 168 h. The synthetic data has 3 focal planes: "
                             "rows with 5 or 7 need data that has them (--smoke keeps 3)."),
    "hara_freeze": Table("hara_freeze", "Fig. 2: fine-tuning depth (ResNet-18, Kinetics-pretrained)",
                         "hara_3d_cnn_good_practice.txt", HARA_ROWS,
                         smoke={"num_steps": 40, "checkpoint_every_steps": 20, "log_every_steps": 10},
                         needs={"init_from": "the Kinetics ResNet-18 converted by scripts/convert_weights.py "
                                             "(fine-tuning frozen random layers measures nothing)"},
                         notes="The paper gives Fig. 2 as bars, without numbers: the paper column is empty; "
                               "its finding is that >conv4 is best on UCF-101 and HMDB-51."),
    "seizure": Table("seizure", "5-fold patient-grouped cross-validation (macro averages)",
                     "seizure_i3d_lstm.txt", SEIZURE_ROWS, metric="f1_macro",
                     columns=("precision_macro", "recall_macro", "auc", "accuracy", "balanced_accuracy"),
                     repeat="folds", count=5, smoke={"num_steps": 40, "log_every_steps": 10},
                     notes="The paper reports mean ± std over its 5 folds; blastjax's interval is a 95% "
                           "t-interval over the folds."),
}


def get_table(name_or_path: str) -> Table:
  """A built-in table by name, or a user's table from a JSON file (`from_json`)."""
  if name_or_path in TABLES:
    return TABLES[name_or_path]
  if name_or_path.endswith(".json"):
    return from_json(name_or_path)
  raise TableError(f"--table {name_or_path!r}: no such table; built in: {', '.join(TABLES)} "
                   "(or the path of a table .json file)")


ROW_FIELDS = {f.name for f in dataclasses.fields(Row)}
TABLE_FIELDS = {f.name for f in dataclasses.fields(Table)} - {"rows"}


def from_json(path: str) -> Table:
  """A table from a JSON file: {"name", "title", "source", "metric", "columns", "repeat",
  "count", "smoke", "needs", "notes", "rows": [{"key", "label", "config", "paper",
  "paper_params", "overrides", "group"}]} (only name, rows and each row's key, label and
  config are required). A relative row config is relative to the JSON file's folder."""
  import os

  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except FileNotFoundError as error:
    raise TableError(f"--table {path}: no such file") from error
  except json.JSONDecodeError as error:
    raise TableError(f"--table {path}: not valid JSON ({error})") from error
  if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
    raise TableError(f"--table {path}: expected an object with a list 'rows'")
  unknown = sorted(set(data) - TABLE_FIELDS - {"rows"})
  if unknown:
    raise TableError(f"--table {path}: unknown field(s) {', '.join(unknown)}; known: "
                     f"{', '.join(sorted(TABLE_FIELDS | {'rows'}))}")
  rows = []
  for number, row in enumerate(data["rows"], 1):
    where = f"--table {path}: row {number}"
    if not isinstance(row, dict):
      raise TableError(f"{where}: expected an object")
    missing = sorted({"key", "label", "config"} - set(row))
    extra = sorted(set(row) - ROW_FIELDS)
    if missing or extra:
      raise TableError(f"{where}: " + "; ".join(
          ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(extra)}"] if extra else [])))
    config = row["config"]
    file, colon, arg = config.partition(":")
    if not os.path.isabs(file) and (os.sep in file or file.startswith(".")):
      config = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), file)) + colon + arg
    rows.append(Row(**{**row, "config": config}))
  fields = {k: tuple(v) if k == "columns" else v for k, v in data.items() if k != "rows"}
  fields.setdefault("name", os.path.splitext(os.path.basename(path))[0])
  fields.setdefault("title", fields["name"])
  fields.setdefault("source", "")
  return Table(rows=tuple(rows), **fields)
