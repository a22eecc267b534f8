"""The run directory (workdir): the one module that writes and reads it.

    workdir/config.json           the run's config (process 0 writes it before training)
    workdir/config_history.jsonl  every config the run was started or resumed with
    workdir/.lock                 held by the training that runs in the workdir (flock)
    workdir/data_info.json        what the model was trained on (predict checks input against it)
    workdir/checkpoints/<step>/   last `keep` saves: train state + data-iterator state
    workdir/best/<step>/          the state with the best validation metric so far

Metrics, predictions and plots beside them are written by blastjax.results.

Orbax writes a step into a temporary directory and renames it when complete, so a run
killed mid-save leaves only a temporary directory; it is deleted on the next start and
never restored. Saves are synchronous: an error (full disk, read-only workdir) is
raised by `save` as a CheckpointError, with the earlier checkpoints untouched.

`best/` is an orbax manager with `best_fn` (the validation value saved with each step as
its metrics), so orbax keeps the best step and answers `best_step()`. The loop still
saves there only when the value improved, so a run writes no more than before.

Orbax's stored data carries no checksum (a flipped bit restores as a different value),
so every save records a sha256 of each part of the state and of its meta (`digests`,
`meta_digest` in the step's meta), and every restore recomputes and compares them. A
damaged latest checkpoint (unreadable, truncated, or a digest that differs) is set
aside by training (renamed `damaged-<step>`, never deleted) and the newest intact one
is resumed; evaluate and predict (read-only) name the damaged checkpoint and stop.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

CONFIG = "config.json"
CONFIG_HISTORY = "config_history.jsonl"
LOCK_FILE = ".lock"
# Fields a resume may change (docs/training.md, "Resuming"): how long and how often, how
# fast, what is logged; never what is trained (model, data, shapes, optimizer, split).
RESUMABLE_CHANGES = ("num_steps", "num_epochs", "progress", "log_every_steps", "checkpoint_every_steps",
                     "keep_checkpoints", "eval_every_steps", "early_hours", "eval_batch_size", "worker_count",
                     "prefetch_to_device", "skip_nonfinite", "num_devices", "parallel", "multihost", "data_dir")
DATA_INFO = "data_info.json"
CALIBRATION_FILE = "calibration.json"


logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read."""


class DamagedCheckpointError(CheckpointError):
  """A checkpoint that cannot be read back as it was written (unreadable, or a digest differs)."""

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


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


def _plain(config) -> dict:
  """The config as JSON values (what config.json holds), for comparisons."""
  if isinstance(config, dict):
    return json.loads(json.dumps(config))
  return json.loads(config.to_json_best_effort(sort_keys=True))


def has_checkpoints(workdir: str) -> bool:
  folder = os.path.join(workdir, "checkpoints")
  return os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder))


def config_differences(workdir: str, config, ignore=RESUMABLE_CHANGES) -> list:
  """`field: saved -> new` for each field in which `config` differs from workdir's
  config.json (none when there is no config.json), except the fields in `ignore`."""
  path = os.path.join(workdir, CONFIG)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    saved = json.load(f)
  new = _plain(config)
  fields = sorted((set(saved) | set(new)) - set(ignore))
  return [f"{key}: {json.dumps(saved.get(key))} -> {json.dumps(new.get(key))}"
          for key in fields if saved.get(key) != new.get(key)]


def resume_problems(workdir: str, config) -> list:
  """The fields in which `config` differs from the run it would resume (none without
  checkpoints to resume), except those RESUMABLE_CHANGES allows."""
  if not has_checkpoints(workdir):
    return []
  return config_differences(workdir, config)


def check_resume(workdir: str, config) -> None:
  """RunDirError in one line when `config` would resume `workdir` with other settings."""
  problems = resume_problems(workdir, config)
  if problems:
    raise RunDirError(
        f"{workdir} holds checkpoints of a run with another config ({'; '.join(problems[:8])}"
        f"{' ...' if len(problems) > 8 else ''}); a resume may change only {', '.join(RESUMABLE_CHANGES)}. "
        "Use a new --workdir, or rerun with the run's own config (its config.json)")


def record_config(workdir: str, config) -> None:
  """config.json (the config the run continues with) and one line of config_history.jsonl."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, CONFIG_HISTORY)
  history = ""
  if os.path.exists(path):
    with open(path) as f:
      history = f.read()
    if history and not history.endswith("\n"):  # a line cut off by a full disk
      history = history[:history.rfind("\n") + 1]
  entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "resumed": has_checkpoints(workdir), "config": _plain(config)}
  _write_json_atomically(path, history + json.dumps(entry, sort_keys=True) + "\n")
  write_config(workdir, config)


@contextlib.contextmanager
def training_lock(workdir: str):
  """Holds workdir/.lock (an flock: the kernel drops it when the process dies, kill -9
  included, so it is never stale) while a training runs; a second training on the same
  workdir is refused in one line. Process 0 holds it for a multi-process run."""
  if jax.process_index() != 0:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  handle = open(os.path.join(workdir, LOCK_FILE), "a+")
  try:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or "another process"
      raise RunDirError(f"{workdir} is in use by another training ({holder}); wait for it to finish or "
                        "use another --workdir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {os.uname().nodename}, since "
                 f"{datetime.datetime.now().isoformat(timespec='seconds')}\n")
    handle.flush()
    yield
  finally:
    handle.close()  # releases the lock


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


# ---------------------------------------------------------------------------- digests


def tree_digest(tree) -> str:
  """sha256 of every leaf's dtype, shape and bytes, in tree order."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(tree):
    array = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def _meta_digest(meta: dict) -> str:
  body = {k: v for k, v in meta.items() if k != "meta_digest"}
  return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def with_digests(state: dict, meta: dict) -> dict:
  """`meta` with the digest of each top-level part of `state` and of itself."""
  meta = {**meta, "digests": {key: tree_digest(value) for key, value in state.items()}}
  return {**meta, "meta_digest": _meta_digest(meta)}


def digest_problems(state: dict, meta: dict, parts=None) -> list:
  """The parts of a restored (state, meta) whose digest differs from the saved one.

  `parts` limits the check (a state restored without a target has plain containers
  where the optimizer state had named tuples, so its leaf order may differ). Meta
  saved before digests existed has none: nothing to check."""
  if "meta_digest" not in meta:
    return []
  if meta["meta_digest"] != _meta_digest(meta):
    return ["meta"]
  saved = meta.get("digests", {})
  keys = [k for k in state if k in saved and (parts is None or k in parts)]
  return [k for k in keys if tree_digest(state[k]) != saved[k]]


# ---------------------------------------------------------------------------- checkpoints


def _silence_late_read_callbacks() -> None:
  """After a failed restore, tensorstore's other reads of that restore still finish and
  post their results to the asyncio loop orbax has already closed; Python then prints an
  "Exception ignored ... Event loop is closed" traceback for each, after blastjax's one
  error line. The error is reported already: drop exactly those, keep every other
  unraisable exception (installed once; the reads finish within milliseconds)."""
  previous = sys.unraisablehook
  if getattr(previous, "blastjax_filter", False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
      return
    previous(unraisable)

  hook.blastjax_filter = True
  sys.unraisablehook = hook
  time.sleep(0.1)  # let the late callbacks arrive while the filter is in place




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
    self._save(self.latest, step, state, with_digests(state, meta))

  def save_best(self, step: int, state: Any, value: float) -> None:
    self._save(self.best, step, state, with_digests(state, {"step": step, "value": value}),
               metrics={"value": value})

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def best_step(self) -> Optional[int]:
    """The best validation step (orbax's best_fn); runs saved before metrics were kept
    with the step have one step in best/ and no metrics: that step."""
    steps = list(self.best.all_steps())
    return self.best.best_step() or (max(steps) if steps else None)

  def _restore(self, manager, step: int, target: Any) -> tuple[Any, dict]:
    """(state, meta) of `step`, verified against its digests; DamagedCheckpointError
    when it cannot be read or reads back other values than were saved."""
    where = os.path.join(str(manager.directory), str(step))
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
      state, meta = restored.state, dict(restored.meta)
    except Exception as error:  # orbax / tensorstore raise many kinds on damaged files
      _silence_late_read_callbacks()
      raise DamagedCheckpointError(f"checkpoint {where} cannot be read ({type(error).__name__}: "
                                   f"{str(error)[:300]})", step) from error
    bad = digest_problems(state, meta, parts=None if target is not None else ("step", "rng", "params",
                                                                                 "batch_stats"))
    if bad:
      raise DamagedCheckpointError(f"checkpoint {where} is damaged: its {', '.join(bad)} differ from what "
                                   "was saved (sha256 digest)", step)
    return state, meta

  def _set_aside(self, step: int) -> str:
    """Renames a damaged step of checkpoints/ out of orbax's view (kept, not deleted)."""
    source = os.path.join(str(self.latest.directory), str(step))
    target, n = os.path.join(str(self.latest.directory), f"damaged-{step}"), 1
    while os.path.exists(target):
      n += 1
      target = os.path.join(str(self.latest.directory), f"damaged-{step}-{n}")
    os.rename(source, target)
    self.latest.reload()
    return target

  def restore_latest(self, target: Any) -> tuple[Optional[Any], dict]:
    """(state, meta) of the newest intact save; (None, {}) when there is none.

    A damaged newest checkpoint is set aside (renamed) and the next one tried, each
    said in one line; read-only managers raise DamagedCheckpointError instead."""
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        return self._restore(self.latest, step, target)
      except DamagedCheckpointError as error:
        if self.read_only:
          raise
        kept = self._set_aside(step)
        logger.warning("%s; set aside as %s, falling back to the previous checkpoint", error, kept)
    return None, {}

  def restore_for_evaluation(self, target: Any, which: str) -> tuple[Any, dict]:
    """The state a run evaluates: the best validation checkpoint when `which` is 'best'
    (config.eval_checkpoint) and there is one, else the last. Returns (state, meta);
    meta has 'step', and 'value' (the validation metric) when the best was chosen.
    `target=None` restores the saved tree as it is (predict: no optimizer to build).
    A damaged checkpoint is an error naming it and what to do."""
    best = self.best_step() if which == "best" else None
    try:
      if best is not None:
        return self._restore(self.best, best, target)
      step = self.latest_step()
      if step is None:
        raise CheckpointError(f"no complete checkpoint in {self.workdir}/checkpoints to evaluate")
      state, _ = self._restore(self.latest, step, target)
    except DamagedCheckpointError as error:
      other = "last" if best is not None else "best"
      raise DamagedCheckpointError(
          f"{error}. Rerun the training command on this workdir to set it aside and resume from the "
          f"newest intact checkpoint, or evaluate the {other} checkpoint instead "
          f"(--config.eval_checkpoint={other} / --checkpoint={other})", error.step) from None
    return state, {"step": int(step)}

  def close(self) -> None:
    self.latest.close()
    self.best.close()
