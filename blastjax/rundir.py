"""The run directory (workdir): the one module that writes and reads it.

    workdir/config.json           the run's config (process 0 writes it before training)
    workdir/data_info.json        what the model was trained on (predict checks input against it)
    workdir/checkpoints/<step>/   last `keep` saves: train state + data-iterator state
    workdir/best/<step>/          the state with the best validation metric so far

Metrics, predictions and plots beside them are written by blastjax.evaluate.

Orbax writes a step into a temporary directory and renames it when complete, so a run
killed mid-save leaves only a temporary directory; it is deleted on the next start and
never restored. Saves are synchronous: an error (full disk, read-only workdir) is
raised by `save` as a CheckpointError, with the earlier checkpoints untouched.

`best/` is an orbax manager with `best_fn` (the validation value saved with each step as
its metrics), so orbax keeps the best step and answers `best_step()`. The loop still
saves there only when the value improved, so a run writes no more than before.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp

CONFIG = "config.json"
DATA_INFO = "data_info.json"
CALIBRATION_FILE = "calibration.json"


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read."""


class RunDirError(ValueError):
  """The workdir lacks a file a command needs (not the workdir of a training run)."""


# ---------------------------------------------------------------------------- files


def _write_json_atomically(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_config(workdir: str, config) -> None:
  """workdir/config.json (process 0 only): what `--mode evaluate` and predict rebuild the run from."""
  if jax.process_index() == 0:
    _write_json_atomically(os.path.join(workdir, CONFIG),
                           config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def read_config(workdir: str, needed_by: str) -> ml_collections.ConfigDict:
  """The config of the run in `workdir`; RunDirError naming `needed_by` when there is none."""
  path = os.path.join(workdir, CONFIG)
  if not os.path.exists(path):
    raise RunDirError(f"{path} not found: {needed_by} needs the workdir of a training run")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def write_data_info(workdir: str, info: dict) -> None:
  _write_json_atomically(os.path.join(workdir, DATA_INFO), json.dumps(info, indent=2))


def read_data_info(workdir: str) -> dict:
  """workdir/data_info.json, or {} for runs written before it existed."""
  path = os.path.join(workdir, DATA_INFO)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def write_calibration(workdir: str, calibration: dict) -> None:
  """calibration.json: the temperature fitted on the validation split, for the step it
  was fitted to (evaluate and predict apply it to that checkpoint only)."""
  _write_json_atomically(os.path.join(workdir, CALIBRATION_FILE), json.dumps(calibration, indent=2))


def read_calibration(workdir: str, step: int) -> Optional[dict]:
  """The run's calibration for checkpoint `step`, or None (not fitted, or another step)."""
  path = os.path.join(workdir, CALIBRATION_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    calibration = json.load(f)
  return calibration if int(calibration.get("step", -1)) == int(step) else None


def check_writable(directory: str) -> None:
  """Creates `directory` and writes a probe file into it; a clear error otherwise."""
  try:
    os.makedirs(directory, exist_ok=True)
    probe = os.path.join(directory, f".write_probe_{uuid.uuid4().hex}")
    with open(probe, "wb") as f:
      f.write(b"\0" * 4096)
      f.flush()
      os.fsync(f.fileno())
    os.remove(probe)
  except OSError as error:
    raise CheckpointError(f"workdir {directory!r} is not writable ({error.strerror or error}): "
                          "choose another --workdir or free disk space") from error


# ---------------------------------------------------------------------------- checkpoints


def _manager(directory: str, keep: int, read_only: bool = False, best: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=not read_only, cleanup_tmp_directories=not read_only,
      enable_async_checkpointing=False, read_only=read_only,
      best_fn=(lambda metrics: metrics["value"]) if best else None, best_mode="max")
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=("state", "meta"))


class Checkpoints:
  """The `checkpoints/` (last k) and `best/` (best one) managers of a workdir."""

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    self.workdir = workdir
    self.read_only = read_only
    try:
      self.latest = _manager(os.path.join(workdir, "checkpoints"), keep, read_only)
      self.best = _manager(os.path.join(workdir, "best"), 1, read_only, best=True)
    except OSError as error:
      raise CheckpointError(f"cannot open checkpoints in {workdir!r}: {error}") from error

  def _save(self, manager, step: int, state: Any, meta: dict, metrics: Optional[dict] = None) -> None:
    if step in manager.all_steps():
      return
    try:
      manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 meta=ocp.args.JsonSave(meta)), metrics=metrics)
      manager.wait_until_finished()
    except (OSError, ValueError) as error:
      raise CheckpointError(
          f"could not write checkpoint step {step} to {manager.directory}: {error}. Earlier "
          f"checkpoints are intact (steps {list(manager.all_steps())}); free disk space or fix "
          "the permissions and rerun the same command to resume") from error

  def save(self, step: int, state: Any, meta: dict) -> None:
    self._save(self.latest, step, state, meta)

  def save_best(self, step: int, state: Any, value: float) -> None:
    self._save(self.best, step, state, {"step": step, "value": value}, metrics={"value": value})

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def best_step(self) -> Optional[int]:
    """The best validation step (orbax's best_fn); runs saved before metrics were kept
    with the step have one step in best/ and no metrics: that step."""
    steps = list(self.best.all_steps())
    return self.best.best_step() or (max(steps) if steps else None)

  def _restore(self, manager, step: int, target: Any) -> tuple[Any, dict]:
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except (OSError, ValueError, KeyError) as error:
      raise CheckpointError(f"could not restore checkpoint step {step} from {manager.directory}: "
                            f"{error}") from error
    return restored.state, dict(restored.meta)

  def restore_latest(self, target: Any) -> tuple[Optional[Any], dict]:
    """(state, meta) of the last complete save; (None, {}) when there is none."""
    step = self.latest_step()
    if step is None:
      return None, {}
    return self._restore(self.latest, step, target)

  def restore_for_evaluation(self, target: Any, which: str) -> tuple[Any, dict]:
    """The state a run evaluates: the best validation checkpoint when `which` is 'best'
    (config.eval_checkpoint) and there is one, else the last. Returns (state, meta);
    meta has 'step', and 'value' (the validation metric) when the best was chosen.
    `target=None` restores the saved tree as it is (predict: no optimizer to build)."""
    best = self.best_step() if which == "best" else None
    if best is not None:
      return self._restore(self.best, best, target)
    step = self.latest_step()
    if step is None:
      raise CheckpointError(f"no complete checkpoint in {self.workdir}/checkpoints to evaluate")
    state, _ = self._restore(self.latest, step, target)
    return state, {"step": int(step)}

  def close(self) -> None:
    self.latest.close()
    self.best.close()
