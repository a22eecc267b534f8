"""Checkpoints of a run: Orbax managers for the last k and the best state.

    workdir/checkpoints/<step>/   last `keep` saves: train state + data-iterator state
    workdir/best/<step>/          the state with the best validation metric so far

Orbax writes a step into a temporary directory and renames it when complete, so a run
killed mid-save leaves only a temporary directory; it is deleted on the next start and
never restored. Saves are synchronous: an error (full disk, read-only workdir) is
raised by `save` as a CheckpointError, with the earlier checkpoints untouched.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Optional

import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read."""


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


def _manager(directory: str, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=not read_only, cleanup_tmp_directories=not read_only,
      enable_async_checkpointing=False, read_only=read_only)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=("state", "meta"))


class Checkpoints:
  """The `checkpoints/` (last k) and `best/` (best one) managers of a workdir."""

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    self.workdir = workdir
    self.read_only = read_only
    try:
      self.latest = _manager(os.path.join(workdir, "checkpoints"), keep, read_only)
      self.best = _manager(os.path.join(workdir, "best"), 1, read_only)
    except OSError as error:
      raise CheckpointError(f"cannot open checkpoints in {workdir!r}: {error}") from error

  def _save(self, manager, step: int, state: Any, meta: dict) -> None:
    if step in manager.all_steps():
      return
    try:
      manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 meta=ocp.args.JsonSave(meta)))
      manager.wait_until_finished()
    except (OSError, ValueError) as error:
      raise CheckpointError(
          f"could not write checkpoint step {step} to {manager.directory}: {error}. Earlier "
          f"checkpoints are intact (steps {list(manager.all_steps())}); free disk space or fix "
          "the permissions and rerun the same command to resume") from error

  def save(self, step: int, state: Any, meta: dict) -> None:
    self._save(self.latest, step, state, meta)

  def save_best(self, step: int, state: Any, meta: dict) -> None:
    self._save(self.best, step, state, meta)

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def best_steps(self) -> list:
    return list(self.best.all_steps())

  def _restore(self, manager, step: int, target: Any) -> tuple[Any, dict]:
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except (OSError, ValueError, KeyError) as error:
      raise CheckpointError(f"could not restore checkpoint step {step} from {manager.directory}: "
                            f"{error}") from error
    return restored.state, dict(restored.meta)

  def restore_latest(self, target: Any) -> tuple[Optional[Any], dict]:
    step = self.latest_step()
    if step is None:
      return None, {}
    return self._restore(self.latest, step, target)

  def restore_best(self, step: int, target: Any) -> tuple[Any, dict]:
    return self._restore(self.best, step, target)

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def to_numpy_tree(tree):
  """Host numpy copies of every leaf (one device's copy of replicated arrays)."""
  import jax

  def one(x):
    if isinstance(x, jax.Array):
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(one, tree)
