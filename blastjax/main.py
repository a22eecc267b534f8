"""Entry point: train (then evaluate), evaluate a workdir, or cross-validate.

    python -m blastjax.main --config configs/r2p1d.py:smoke --workdir /tmp/x
    python -m blastjax.main --config configs/resnet50.py --config.batch_size=8 --workdir runs/r50
    python -m blastjax.main --mode evaluate --workdir runs/r50
    python -m blastjax.main --mode cross_validation --config configs/r2p1d.py --workdir runs/cv

Rerunning the same command on the same workdir resumes from its last complete
checkpoint. A config file loads from any working directory; `~` is expanded in
--workdir, --config and every path field. Config problems (a missing config file, an
unknown `:arg`, a bad field) are reported one per line before anything is written,
with exit status 2; failures during the run (non-finite loss, unwritable workdir)
exit with status 1 and one line saying what to do.

The library reports progress through the `blastjax` logger; this command prints its
INFO lines on stdout as plain lines (split sizes, resume, test metrics). absl's own
logging (JAX, orbax) stays at WARNING unless --verbosity is given.
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

from blastjax import compilation_cache, config_presets, config_validation
# One run's checks and launch (re-exported: main.preflight, main.run, ...).
from blastjax.launch import (UsageError, checked_source, dataset_problems, fail,  # noqa: F401
                             load_workdir_config, log_to_stdout, preflight, quiet_libraries, run)

MODES = ("train", "evaluate", "cross_validation")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/r2p1d.py:smoke "
                                          "(--mode evaluate reads the workdir's config.json instead).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, metrics, plots.")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "train (then evaluate), evaluate, cross_validation.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "Multi-host: host:port of process 0 "
                                   "(else $JAX_COORDINATOR_ADDRESS / cluster auto-detection).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "Multi-host: this process's index.")
compilation_cache.define_flag()


def initialize_distributed(config) -> None:
  """jax.distributed.initialize() when the config or the flags ask for several hosts."""
  import jax

  if not (config.multihost or _COORDINATOR.value or _NUM_PROCESSES.value):
    return
  kwargs = {}
  if _COORDINATOR.value:
    kwargs["coordinator_address"] = _COORDINATOR.value
  if _NUM_PROCESSES.value:
    kwargs["num_processes"] = _NUM_PROCESSES.value
  if _PROCESS_ID.value >= 0:
    kwargs["process_id"] = _PROCESS_ID.value
  # Cross-process collectives between CPU devices (tests, CPU clusters) need gloo.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)


def main(argv) -> None:
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}; use --config, --workdir, --mode", 2)
  workdir = config_validation.expand_path(_WORKDIR.value)
  if not workdir:
    fail("--workdir is required", 2)
  config = _CONFIG.value
  if config is None and _MODE.value != "evaluate":
    fail("--config is required (e.g. --config configs/r2p1d.py:smoke)", 2)
  quiet_libraries()
  log_to_stdout()
  compilation_cache.enable_from_flags()
  from blastjax import rundir, train  # heavy, as in preflight

  try:
    if _MODE.value == "evaluate":
      config = load_workdir_config(workdir)
    config = config_validation.prepare(config)  # `~` in paths; simulator options of other datasets
    initialize_distributed(config)
    preflight(config)
    run(config, workdir, _MODE.value)
  except UsageError as error:
    fail(str(error), 2)
  except (rundir.CheckpointError, train.NonFiniteLossError) as error:
    fail(str(error), 1)
  except OSError as error:  # a full disk or a read-only folder while writing results
    where = f"{error.filename}: " if error.filename else ""
    fail(f"{where}{error.strerror or error}: free disk space or fix the permissions and rerun the same "
         "command (it resumes; result files are replaced whole, never left half-written)", 1)


def config_flag(argv):
  """(index in argv, value) of the last --config, in either form absl takes; None if absent."""
  found = None
  for index, arg in enumerate(argv[1:], 1):
    if arg == "--":
      break
    name, equals, value = arg.partition("=")
    if name in ("--config", "-config"):
      if equals:
        found = (index, value)
      elif index + 1 < len(argv):
        found = (index + 1, argv[index + 1])
  return found


def missing_config(value: str, path: str) -> str:
  """The error line for a --config file that does not exist, with the files beside it."""
  folder = os.path.dirname(path) or "."
  names = config_presets.config_names(folder) if os.path.isdir(folder) else []
  where = "" if os.path.isabs(path) else f" (relative to the working directory {os.getcwd()})"
  choices = (f"; config files in {folder}: {', '.join(names)}" if names
             else "; give the path of a config file or a built-in name (e.g. r2p1d.py:smoke): "
             + ", ".join(config_presets.config_names()))
  return f"--config {value}: no such config file {path!r}{where}{choices}"


def checked_config_path(argv) -> list:
  """argv with the --config path made a file's (`~` expanded; a built-in config's name,
  `r2p1d` or `r2p1d.py`, replaced by its packaged file), once the file is known to exist
  (ml_collections would only raise a traceback on first use of the config)."""
  found = config_flag(argv)
  if found is None:
    return argv
  index, value = found
  path, colon, arg = value.partition(":")
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    try:  # a built-in config by name (`r2p1d.py`, `r2p1d`), from any working directory
      path = config_presets.config_file(path)
    except FileNotFoundError:
      fail(missing_config(value, path), 2)
  argv = list(argv)
  argv[index] = argv[index][:len(argv[index]) - len(value)] + path + colon + arg
  return argv


def config_argument_error(error: BaseException):
  """The innermost ConfigArgumentError behind a flag error (ml_collections re-raises
  get_config's error with its traceback in the message), or None."""
  found, seen = None, set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, config_presets.ConfigArgumentError):
      found = error
    error = error.__cause__ or error.__context__
  return found


def parse_flags(argv):
  """absl flag parsing with one clear line for a missing --config file, an unknown
  config argument (`configs/x.py:arg`) or a bad --config override."""
  argv = checked_config_path(argv)
  known = set(config_validation.default_config().keys())
  for arg in argv[1:]:
    if arg.startswith("--config."):
      field = arg[len("--config."):].split("=", 1)[0].split(".", 1)[0]
      if field not in known:
        fail(f"{arg}: config field {field!r} is unknown; known fields: {', '.join(sorted(known))}", 2)
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    argument_error = config_argument_error(error)
    if argument_error is not None:
      fail(f"--config {config_flag(argv)[1]}: {argument_error}", 2)
    fail(f"{error}; see --helpfull", 2)
  except (AttributeError, KeyError, TypeError, ValueError) as error:
    fail(f"could not apply the config overrides: {error}", 2)


def entry() -> None:
  app.run(main, flags_parser=parse_flags)


def evaluate_entry() -> None:
  """`python -m blastjax.main --mode evaluate` (the `blastjax-evaluate` command): evaluates
  a finished run directory (`blastjax-evaluate --workdir runs/r2p1d`) from its config.json."""
  flags.FLAGS.set_default("mode", "evaluate")
  entry()


if __name__ == "__main__":
  entry()
