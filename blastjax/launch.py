"""One run of the training system, as every command launches it: the checks that need no
work (config fields, model, devices, dataset, splits), then train (and evaluate),
evaluate or cross-validate under the workdir's lock. `blastjax.main` runs one;
`blastjax.reproduce` runs a table of them.

Problems found before any work are a UsageError (one line per problem, nothing
written); what fails during the run is the library's own error (rundir.CheckpointError,
train.NonFiniteLossError, OSError).
"""

from __future__ import annotations

import logging as py_logging
import sys

from blastjax import config_validation
from blastjax.data import dataset


def quiet_libraries() -> None:
  """Third-party absl logging (JAX, orbax, TFDS) at WARNING, so that a command prints its
  own lines; `--verbosity=0` (INFO) or higher brings theirs back. Call it from an absl
  command's main, after the flags are parsed."""
  from absl import flags, logging as absl_logging

  if not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)


def log_to_stdout() -> None:
  """The `blastjax` logger's INFO lines on stdout, unprefixed (what a user of the CLI reads)."""
  logger = py_logging.getLogger("blastjax")
  if not any(getattr(h, "blastjax_console", False) for h in logger.handlers):
    handler = py_logging.StreamHandler(sys.stdout)
    handler.setFormatter(py_logging.Formatter("%(message)s"))
    handler.blastjax_console = True
    logger.addHandler(handler)
  logger.setLevel(py_logging.INFO)
  logger.propagate = False


def fail(message: str, status: int) -> None:
  for line in str(message).splitlines() or ["unknown error"]:
    print(f"error: {line}", file=sys.stderr, flush=True)
  sys.exit(status)


class UsageError(ValueError):
  """A problem found before any work; reported as one line per problem."""


def dataset_problems(config) -> list:
  """The dataset exists (or can be built) -- checked before the workdir is touched."""
  try:
    builder = dataset.get_builder(config.dataset, config.data_dir or None, **dict(config.dataset_options))
  except ValueError as error:
    return [f"config.dataset={config.dataset!r}: {error}"]
  if config.dataset != "synthetic" and not builder.is_prepared() and not config.manual_dir:
    return [f"config.dataset={config.dataset!r} is not built in {builder.data_dir} and config.manual_dir "
            "is empty: set --config.manual_dir to the folder holding the data"]
  return []


def preflight(config) -> None:
  """Every check that needs no work: fields, model, devices, dataset."""
  from blastjax import parallel  # heavy (jax, optax): not needed to report a flag error

  try:
    num_devices, device_problems = len(parallel.selected_devices(config)), []
  except ValueError as error:
    num_devices, device_problems = None, [str(error)]
  except TypeError:  # a mistyped num_devices; validate() names it
    num_devices, device_problems = None, []
  problems = config_validation.validate(config, num_devices) + device_problems
  if not problems:
    problems = dataset_problems(config)
  if problems:
    raise UsageError("\n".join(problems))


def load_workdir_config(workdir: str):
  """The config.json of a finished run (--mode evaluate), a UsageError when there is none."""
  from blastjax import rundir  # heavy (orbax), as below

  try:
    return rundir.read_config(workdir, "--mode evaluate")
  except rundir.RunDirError as error:
    raise UsageError(str(error)) from error


def checked_source(config, mode: str):
  """The dataset (built on first use), once the run's splits are known to suit it (the
  split exists, the training side holds a batch): a UsageError before the workdir is touched."""
  from blastjax import train_data  # heavy, as in preflight

  source = train_data.open_source(config)
  try:
    train_data.check_splits(config, source, cross_validation=mode == "cross_validation")
  except train_data.SplitError as error:
    raise UsageError(str(error)) from error
  return source


def run(config, workdir: str, mode: str) -> dict:
  from blastjax import rundir, train, train_data  # heavy (jax, orbax, grain), as in preflight

  if mode == "evaluate":
    try:
      return train.evaluate_workdir(workdir)
    except train_data.NotBuiltError as error:
      raise UsageError(str(error)) from error
  source = checked_source(config, mode)
  rundir.check_writable(workdir)
  try:
    with rundir.training_lock(workdir):
      rundir.check_resume(workdir, config)
      rundir.record_config(workdir, config)
      if mode == "cross_validation":
        return train.cross_validate(config, workdir, source=source)
      return train.train_and_evaluate(config, workdir, source)
  except rundir.RunDirError as error:
    raise UsageError(str(error)) from error
