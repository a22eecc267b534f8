"""A paper's table in one command: every (row, seed or fold) trained and evaluated as its
own run, then the table in the paper's layout with 95% intervals beside the paper's values.

    python -m blastjax.reproduce --table benchmark_t4 --workdir runs/t4
    python -m blastjax.reproduce --table benchmark_t4 --workdir /tmp/t4 --smoke
    python -m blastjax.reproduce --table benchmark --workdir runs/bench --seeds 3 --config.dataset=folder \\
        --config.manual_dir=~/embryos
    python -m blastjax.reproduce --table seizure --workdir runs/seizure --folds 5
    python -m blastjax.reproduce --table benchmark --workdir runs/bench --collect

Tables (blastjax.tables): benchmark_t3, benchmark_t4, benchmark, amsnet_t1, hara_freeze,
seizure, or a table .json file of one's own. Each run is DIR/<row>/seed_<s> (a training
run of `python -m blastjax.main`) or DIR/<row>/folds_<k> (its --mode cross_validation),
run through blastjax.launch as main runs it: the same checks, lock, resume and files.
Rerunning the same command skips the finished runs and resumes the unfinished one from
its last checkpoint; DIR/reproduce.json records the command's settings (table, --smoke,
seeds or folds, rows, overrides) so a rerun or --collect uses the same ones.
`--config.<field>=<value>` applies to every row (after the row's own settings).

Outputs in DIR: table.md, table.csv, table.json, table.png (the paper's metric per row
with its interval, the paper's value beside it); the table is printed at the end. A
single run's interval is a bootstrap over its test embryos (patients when its split keeps
them apart); over seeds or folds it is the mean with a 95% t-interval. Exit status 2 for
a problem found before any work, 1 when a run failed (the others still run and the
table shows the failed row as missing).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Optional

import ml_collections

from blastjax import compilation_cache, config_presets, config_validation, launch, tables

logger = logging.getLogger("blastjax")
SETTINGS = "reproduce.json"
RUNS_FOLDER_SEED = "seed_{}"
RUNS_FOLDER_FOLDS = "folds_{}"


@dataclasses.dataclass
class Plan:
  """One run of a table: its row, its repetition (a seed, or the k folds), where it goes."""

  row: tables.Row
  unit: str           # 'seed 0' or '5 folds'
  workdir: str
  config: ml_collections.ConfigDict
  mode: str           # 'train' or 'cross_validation'

  @property
  def name(self) -> str:
    return f"{self.row.key} ({self.unit})"


@dataclasses.dataclass(frozen=True)
class Settings:
  """What decides the runs of a table (recorded in DIR/reproduce.json)."""

  table: str
  smoke: bool = False
  repeat: str = "seeds"
  count: int = 1
  rows: tuple = ()
  overrides: tuple = ()   # ((field, value text), ...) in the order given

  def to_json(self) -> dict:
    return {**dataclasses.asdict(self), "rows": list(self.rows), "overrides": [list(o) for o in self.overrides]}

  @classmethod
  def from_json(cls, data: dict) -> "Settings":
    return cls(data["table"], bool(data["smoke"]), data["repeat"], int(data["count"]), tuple(data["rows"]),
               tuple(tuple(o) for o in data["overrides"]))


def read_settings(workdir: str) -> Optional[Settings]:
  path = os.path.join(workdir, SETTINGS)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return Settings.from_json(json.load(f))


def write_settings(workdir: str, settings: Settings) -> None:
  from blastjax import results  # matplotlib-free writer, atomic

  os.makedirs(workdir, exist_ok=True)
  results.write_json(os.path.join(workdir, SETTINGS), settings.to_json())


def check_same_settings(workdir: str, settings: Settings) -> None:
  """A UsageError when DIR already holds a table made with other settings."""
  saved = read_settings(workdir)
  if saved is None or saved == settings:
    return
  differences = [f"{f.name}: {getattr(saved, f.name)!r} -> {getattr(settings, f.name)!r}"
                 for f in dataclasses.fields(Settings) if getattr(saved, f.name) != getattr(settings, f.name)]
  raise launch.UsageError(f"{workdir} holds a table made with other settings ({'; '.join(differences)}); "
                          "rerun with the same flags (they are in its reproduce.json), add --collect to "
                          "rebuild its outputs, or use a new --workdir")


def selected_rows(table: tables.Table, names: tuple) -> tuple:
  if not names:
    return table.rows
  known = {row.key: row for row in table.rows}
  unknown = [n for n in names if n not in known]
  if unknown:
    raise launch.UsageError(f"--rows {','.join(unknown)}: not rows of {table.name}; its rows: {', '.join(known)}")
  return tuple(known[n] for n in names)


def row_config(table: tables.Table, row: tables.Row, settings: Settings) -> ml_collections.ConfigDict:
  """The row's config file (with `:smoke` and the table's smoke fields under --smoke), the
  row's own fields, then the command's --config overrides."""
  try:
    config = config_presets.load_config(row.config, "smoke" if settings.smoke else "")
  except (FileNotFoundError, config_presets.ConfigArgumentError) as error:
    raise launch.UsageError(f"row {row.key}: {error}") from error
  config = ml_collections.ConfigDict(config.to_dict())  # unlocked, so overrides can be set
  fields = {**(table.smoke if settings.smoke else {}), **row.overrides}
  try:
    for field, value in fields.items():
      config_validation.set_field(config, field, value)
    for field, text in settings.overrides:
      config_validation.set_field_from_text(config, field, text)
  except ValueError as error:
    raise launch.UsageError(f"row {row.key}: {error}") from error
  return config


def plan(table: tables.Table, workdir: str, settings: Settings) -> list:
  """Every run of the table, in row order, with its config and workdir."""
  plans = []
  for row in selected_rows(table, settings.rows):
    base = row_config(table, row, settings)
    if settings.repeat == "folds":
      config = ml_collections.ConfigDict(base.to_dict())
      config.num_folds = settings.count
      plans.append(Plan(row, f"{settings.count} folds", os.path.join(workdir, row.key,
                                                                      RUNS_FOLDER_FOLDS.format(settings.count)),
                        config, "cross_validation"))
      continue
    for seed in range(settings.count):
      config = ml_collections.ConfigDict(base.to_dict())
      config.seed = base.seed + seed
      plans.append(Plan(row, f"seed {config.seed}", os.path.join(workdir, row.key,
                                                                 RUNS_FOLDER_SEED.format(config.seed)),
                        config, "train"))
  return plans


def needs_problems(table: tables.Table, plans: list, settings: Settings) -> list:
  """The fields a full run of `table` must be given (e.g. init_from for fine-tuning)."""
  if settings.smoke:
    return []
  problems = []
  for field, why in table.needs.items():
    if any(not plan.config.get(field) for plan in plans):
      problems.append(f"table {table.name} needs --config.{field}: {why} (or --smoke to try it untrained)")
  return problems


def preflight(plans: list) -> list:
  """Every run checked before the first one starts (fields, model, devices, dataset, the
  splits): a bad override fails now, not hours into the table. Returns the prepared plans."""
  problems, prepared = [], []
  for plan in plans:
    try:
      plan.config = config_validation.prepare(plan.config)
      launch.preflight(plan.config)
      launch.checked_source(plan.config, plan.mode)
      differences = config_differences(plan)
      if differences:
        raise launch.UsageError(
            f"{plan.workdir} holds a run with another config ({'; '.join(differences[:6])}); use a new "
            "--workdir or the same flags as before")
    except launch.UsageError as error:
      problems.extend(f"{plan.name}: {line}" for line in str(error).splitlines())
    prepared.append(plan)
  if problems:
    raise launch.UsageError("\n".join(dict.fromkeys(problems)))
  return prepared


# Fields that change neither the model nor the numbers: a finished run made with other
# values of these is still finished.
NOT_RESULTS = ("progress", "worker_count", "num_devices", "parallel", "prefetch_to_device", "data_dir",
               "log_every_steps", "keep_checkpoints", "multihost")


def config_differences(plan: Plan) -> list:
  """What differs, beyond what a resume may change, between the plan's config and the run
  its workdir holds (a training run with checkpoints; a cross-validation's config.json)."""
  from blastjax import rundir  # heavy (orbax)

  if plan.mode == "cross_validation":
    return rundir.config_differences(plan.workdir, plan.config)
  return rundir.resume_problems(plan.workdir, plan.config)


def is_finished(plan: Plan) -> bool:
  """The run wrote its metrics.json with this very config (fields in NOT_RESULTS aside)."""
  from blastjax import rundir

  if not os.path.exists(os.path.join(plan.workdir, "metrics.json")):
    return False
  if not os.path.exists(os.path.join(plan.workdir, rundir.CONFIG)):
    return False
  return not rundir.config_differences(plan.workdir, plan.config, ignore=NOT_RESULTS)


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def run_all(plans: list) -> list:
  """Runs the unfinished plans in order; returns [(plan, error message)] of the failed."""
  from blastjax import rundir, train  # heavy

  todo = [p for p in plans if not is_finished(p)]
  done = len(plans) - len(todo)
  if done:
    logger.info("%d of %d runs already finished: skipped", done, len(plans))
  failures, spent = [], []
  for number, plan in enumerate(plans, 1):
    if plan not in todo:
      continue
    left = len(todo) - len(spent)
    eta = f", ETA {_duration(sum(spent) / len(spent) * left)} for the {left} left" if spent else ""
    logger.info("run %d/%d: %s -> %s%s", number, len(plans), plan.name, plan.workdir, eta)
    tic = time.perf_counter()
    try:
      launch.run(plan.config, plan.workdir, plan.mode)
    except (launch.UsageError, rundir.CheckpointError, train.NonFiniteLossError) as error:
      message = " ".join(str(error).split())
      logger.info("run %d/%d: %s failed: %s", number, len(plans), plan.name, message)
      failures.append((plan, message))
    spent.append(time.perf_counter() - tic)
  return failures


def reproduce(table: tables.Table, workdir: str, settings: Settings, collect_only: bool = False) -> dict:
  """Runs (unless `collect_only`) and collects `table` under `workdir`; returns table.json's
  content. Raises launch.UsageError before any work for a problem in any row."""
  from blastjax import table_report

  workdir = config_validation.expand_path(workdir)
  check_same_settings(workdir, settings)
  plans = plan(table, workdir, settings)
  failures = []
  if not collect_only:
    problems = needs_problems(table, plans, settings)
    if problems:
      raise launch.UsageError("\n".join(problems))
    plans = preflight(plans)
    write_settings(workdir, settings)
    failures = run_all(plans)
  report = table_report.collect(table, plans, settings, failures)
  table_report.write(workdir, report)
  print(table_report.markdown(report), flush=True)
  return report


# ------------------------------------------------------------------------ command line

def split_overrides(argv: list) -> tuple:
  """(argv without the --config.<field> overrides, ((field, value text), ...)); an override
  takes its value after `=` or as the next argument, as absl's --config.<field> does."""
  rest, overrides, index = [], [], 0
  while index < len(argv):
    arg = argv[index]
    if arg.startswith("--config."):
      field, equals, value = arg[len("--config."):].partition("=")
      if not equals:
        if index + 1 >= len(argv):
          launch.fail(f"{arg}: give a value (--config.{field}=VALUE)", 2)
        index += 1
        value = argv[index]
      overrides.append((field, value))
    else:
      rest.append(arg)
    index += 1
  return rest, tuple(overrides)


def settings_from_flags(flag_values, table: tables.Table, overrides: tuple) -> Settings:
  if flag_values.seeds and flag_values.folds:
    raise launch.UsageError("--seeds and --folds: give one (seeds repeat each row's run, folds "
                            "cross-validate each row)")
  repeat, count = table.repeat, table.count
  if flag_values.seeds:
    repeat, count = "seeds", flag_values.seeds
  elif flag_values.folds:
    repeat, count = "folds", flag_values.folds
  if repeat == "folds" and count < 2:
    raise launch.UsageError(f"--folds {count}: cross-validation needs at least 2 folds")
  name = os.path.abspath(flag_values.table) if flag_values.table.endswith(".json") else table.name
  return Settings(name, bool(flag_values.smoke), repeat, int(count), tuple(flag_values.rows or ()), overrides)


def _define_flags():
  from absl import flags

  flags.DEFINE_string("table", None, "Table name (" + ", ".join(tables.TABLES) + ") or a table .json file.")
  flags.DEFINE_string("workdir", None, "Folder of the table: one run per row and seed (or fold), the outputs.")
  flags.DEFINE_integer("seeds", 0, "Runs per row with seeds 0..N-1 (0: the table's default).", lower_bound=0)
  flags.DEFINE_integer("folds", 0, "Patient-grouped folds per row (--mode cross_validation; 0: the table's "
                       "default).", lower_bound=0)
  flags.DEFINE_boolean("smoke", False, "Every row's :smoke variant at the table's smoke sizes (synthetic data).")
  flags.DEFINE_boolean("collect", False, "Only rebuild the outputs from the runs present (with the "
                       "settings in the workdir's reproduce.json); say which are missing.")
  flags.DEFINE_list("rows", [], "Only these rows (their keys; default: all).")
  compilation_cache.define_flag()
  return flags.FLAGS


_OVERRIDES: tuple = ()


def parse_flags(argv):
  """absl flags, with every --config.<field>=<value> kept aside for the rows' configs."""
  global _OVERRIDES
  flag_values = _define_flags()
  rest, _OVERRIDES = split_overrides(list(argv))
  try:
    return flag_values(rest)
  except Exception as error:  # absl's flags.Error: one line, like blastjax.main
    launch.fail(f"{error}; see --help", 2)


def main(argv) -> None:
  from absl import flags

  flag_values = flags.FLAGS
  if len(argv) > 1:
    launch.fail(f"unexpected arguments {argv[1:]}; use --table, --workdir and --config.<field>=<value>", 2)
  if not flag_values.workdir:
    launch.fail("--workdir is required", 2)
  launch.quiet_libraries()
  launch.log_to_stdout()
  compilation_cache.enable_from_flags()  # the rows' runs share their compiled steps across seeds and reruns
  workdir = config_validation.expand_path(flag_values.workdir)
  try:
    if flag_values.collect:
      settings = read_settings(workdir)
      if settings is None:
        raise launch.UsageError(f"--collect: {workdir} has no {SETTINGS}; no table was run there")
      table = tables.get_table(settings.table)
    else:
      if not flag_values.table:
        raise launch.UsageError("--table is required: " + ", ".join(tables.TABLES) + " or a table .json file")
      table = tables.get_table(flag_values.table)
      settings = settings_from_flags(flag_values, table, _OVERRIDES)
    report = reproduce(table, workdir, settings, collect_only=flag_values.collect)
  except (launch.UsageError, tables.TableError) as error:
    launch.fail(str(error), 2)
  except OSError as error:
    where = f"{error.filename}: " if error.filename else ""
    launch.fail(f"{where}{error.strerror or error}: free disk space or fix the permissions and rerun the same "
                "command (finished runs are kept; the unfinished one resumes)", 1)
  if report["missing_runs"]:
    failed = [run for run in report["missing_runs"] if run["failed"]]
    logger.info("%d run(s) missing%s: rerun the same command to run them", len(report["missing_runs"]),
                f", {len(failed)} failed" if failed else "")
    if failed or not flag_values.collect:
      raise SystemExit(1)


def entry() -> None:
  from absl import app

  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  entry()
