"""The training loop and the run modes (train then evaluate, evaluate a workdir,
cross-validation). The step and its parallel wrapper are in blastjax.train_step, the
data of a run in blastjax.train_data, running a model over a split in
blastjax.evaluator and the workdir's files (config, checkpoints) in blastjax.rundir.

The loop (`train`) resumes from the last complete checkpoint with the same step,
optimizer state, RNG and data position, so a killed run ends with the parameters and
metrics of an uninterrupted one (CPU). Progress is reported through the `blastjax`
logger (blastjax.main prints its INFO lines on stdout).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from blastjax import config_validation, evaluate, optim, results, rundir, train_step
from blastjax.evaluator import Evaluator
from blastjax.train_data import (Data, SplitError, cross_validation_folds, data_info, make_data, open_source,
                                 reads_features, split_notes, steps_per_epoch, train_loader, with_features)
from blastjax.parallel import DevicePrefetch, Runner, metrics_to_host

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
  """The loss or the gradients became NaN or infinite."""


# ---------------------------------------------------------------------------- metric log


class MetricLog:
  """metrics.jsonl and TensorBoard event files (tensorboardX: no TensorFlow needed).

  Only process 0 writes. On resume, lines past the restored step are dropped so the
  log reads as one uninterrupted run.
  """

  def __init__(self, workdir: str, start_step: int, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.writer = None
    if not enabled:
      return
    if os.path.exists(self.path):
      kept = self._lines_up_to(start_step)
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(kept)
      os.replace(tmp, self.path)
    from tensorboardX import SummaryWriter  # heavy (protobuf); only process 0 writes
    self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step + 1)

  def _lines_up_to(self, step: int) -> list:
    """The log's complete lines of steps <= `step`. A cut-off last line (what a full disk
    or a kill mid-write leaves) is dropped with a warning; a damaged line elsewhere is an
    error naming it."""
    with open(self.path) as f:
      lines = f.readlines()
    kept = []
    for number, line in enumerate(lines, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        if number == len(lines) and not line.endswith("\n"):
          logger.warning("%s: dropped its cut-off last line (%d bytes)", self.path, len(line))
          continue
        raise rundir.RunDirError(f"{self.path} line {number} is not JSON ({line[:80]!r}): repair or delete "
                         "that line, then rerun") from None
      if row.get("step", 0) <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
    return kept

  def write(self, step: int, kind: str, values: dict) -> None:
    """A metrics.jsonl row of every value; TensorBoard gets the numbers that can change
    during a run (not the counts of CONSTANT_KEYS nor flags)."""
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), "kind": kind, **values}) + "\n")
    for key, value in values.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in CONSTANT_KEYS:
        self.writer.add_scalar(f"{kind}/{key}", value, step)

  def write_hyperparameters(self, config) -> None:
    """The run's hyperparameters (TensorBoard's HPARAMS tab, with validation/ and test/
    metrics as its columns) and the whole config as text."""
    if not self.enabled:
      return
    from tensorboardX.summary import hparams

    values = hyperparameters(config)
    metrics = {f"{kind}/{name}": 0.0 for kind in ("validation", "test") for name in ("accuracy", "auc")}
    for summary in hparams(values, metrics):
      self.writer.file_writer.add_summary(summary)
    self.writer.add_text("config", "```\n" + config.to_json_best_effort(indent=2) + "\n```", 0)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


# Values of a metrics row that are the same at every step of a run (kept in
# metrics.jsonl, left out of TensorBoard, where they would only draw flat lines).
CONSTANT_KEYS = frozenset({"window_steps", "num_embryos", "num_examples", "calibrated", "temperature"})
# The config fields TensorBoard's HPARAMS tab shows (those that differ between experiments).
HYPERPARAMETERS = ("model", "learning_rate", "weight_decay", "batch_size", "num_steps", "num_epochs",
                   "image_size", "num_frames", "sampling", "schedule", "warmup_steps", "loss", "class_weights",
                   "augment", "seed", "split", "validation_fraction", "eval_checkpoint", "init_from", "freeze",
                   "dtype")


def hyperparameters(config) -> dict:
  """HYPERPARAMETERS of `config` that it has, as TensorBoard's hparams types (numbers,
  strings, booleans; None and others as text)."""
  values = {}
  for name in HYPERPARAMETERS:
    if name in config:
      value = config[name]
      values[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
  return values


class TrainWindow:
  """The train metrics of the steps since the last train row, summed, so that the row
  is their mean (`window_steps` of them) rather than one batch's.

  Its state travels in every checkpoint's meta: a window cut by a resume (a checkpoint
  between two log steps) ends with the row of an uninterrupted run, exactly (the sums
  are Python floats, which JSON round-trips).
  """

  def __init__(self, state=None):
    state = state or {}
    self.count = int(state.get("count", 0))
    self.sums = {key: float(value) for key, value in state.get("sums", {}).items()}

  def add(self, values: dict) -> None:
    for key, value in values.items():
      self.sums[key] = self.sums.get(key, 0.0) + float(value)
    self.count += 1

  def take(self) -> dict:
    """The means of the window and its number of steps; starts the next window."""
    means = {key: total / self.count for key, total in self.sums.items()}
    means["window_steps"] = self.count
    self.count, self.sums = 0, {}
    return means

  def state_dict(self) -> dict:
    return {"count": self.count, "sums": dict(self.sums)}


# ---------------------------------------------------------------------------- the model


def build(config, data: Data, sample_batch: dict, total_steps: int, epoch_steps: int):
  """(train_step.Built, the run's Evaluator on its runner)."""
  built = train_step.build(config, sample_batch, data.labels[data.train], total_steps, epoch_steps)
  return built, Evaluator.for_run(built.runner, config, data)


def parameter_checksum(params) -> str:
  """sha256 of every parameter's bytes, in tree order (compares processes and runs)."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return digest.hexdigest()[:16]


def total_steps(config, epoch_steps: int) -> int:
  return config.num_steps if config.num_steps > 0 else config.num_epochs * epoch_steps


# ---------------------------------------------------------------------------- the loop


def _gather_text(text: str) -> list:
  """Every process's `text` (iterator states), in process order."""
  if jax.process_count() == 1:
    return [text]
  from jax.experimental import multihost_utils
  data = np.frombuffer(text.encode(), np.uint8)
  length = int(np.max(multihost_utils.process_allgather(np.int32(data.size))))
  padded = np.zeros(length, np.uint8)
  padded[:data.size] = data
  gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(jax.process_count(), length)
  return [bytes(row).rstrip(b"\0").decode() for row in gathered]


def _iterator_state(iterator) -> str:
  state = iterator.get_state()
  return state.decode() if isinstance(state, bytes) else json.dumps(state)


def prepared(config, workdir: str):
  """The config and workdir a run uses: config_validation.prepare (`~` expanded in every
  path field, simulator options dropped for other datasets) and `~` expanded in workdir.
  Every entry point below applies it, so the Python API behaves like blastjax.main."""
  return config_validation.prepare(config), config_validation.expand_path(workdir)


def _non_finite_params(host: dict) -> list:
  return [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_leaves_with_path(host["params"])
          if np.issubdtype(np.asarray(leaf).dtype, np.floating) and not np.isfinite(leaf).all()]


class _Saver:
  """Checkpoints the loop's state: the last k with the data position (resume), and the
  best validation state. The best value so far and the plateau tracker's state travel
  in the latest checkpoint's meta, so a resumed run compares against the same best and
  reduces the learning rate at the same validation as the uninterrupted one."""

  def __init__(self, checkpoints: rundir.Checkpoints, runner: Runner, meta: dict, plateau=None,
               keep_best: bool = True):
    self.checkpoints, self.runner, self.plateau = checkpoints, runner, plateau
    self.keep_best = keep_best
    self.best_value, self.best_step = meta.get("best_value"), meta.get("best_step")
    self.window = TrainWindow(meta.get("train_window"))  # the loop's logging window
    if plateau is not None and meta.get("plateau") is not None:
      plateau.load_state_dict(meta["plateau"])

  def checkpoint(self, step: int, state, iterator, evaluated) -> None:
    host = self.runner.host_state(state)
    bad = _non_finite_params(host)
    if bad:
      raise NonFiniteLossError(
          f"step {step}: parameters became NaN or infinite ({', '.join(bad[:3])}); not saved. The last "
          f"good checkpoint is step {self.checkpoints.latest_step()} in {self.checkpoints.workdir}/checkpoints. "
          "Lower learning_rate or set grad_clip_norm")
    if evaluated is not None and (self.best_value is None or evaluated > self.best_value):
      self.best_value, self.best_step = float(evaluated), step
      if self.keep_best:  # eval_checkpoint='last' never reads best/: not written
        self.checkpoints.save_best(step, host, float(evaluated))
    iterators = _gather_text(_iterator_state(iterator))
    meta = {"step": step, "data_iterators": iterators, "best_value": self.best_value, "best_step": self.best_step,
            "train_window": self.window.state_dict()}
    if self.plateau is not None:
      meta["plateau"] = self.plateau.state_dict()
    self.checkpoints.save(step, host, meta)


def _resume(checkpoints: rundir.Checkpoints, loader, host_state: dict, workdir: str):
  """(host state, data iterator, meta) at the last complete checkpoint, or the start."""
  restored, meta = checkpoints.restore_latest(host_state)
  iterator = iter(loader)
  if restored is None:
    return host_state, iterator, meta
  try:
    iterator.set_state(meta["data_iterators"][jax.process_index()].encode())
  except ValueError as error:
    raise rundir.CheckpointError(
        f"{workdir}/checkpoints step {int(meta['step'])}: {error}. The checkpoint was saved by another "
        "version of blastjax's input pipeline: resume with the version that wrote it, or train in a "
        "new workdir") from error
  logger.info("resumed from %s/checkpoints step %d", workdir, int(meta["step"]))
  return restored, iterator, meta


def eval_every(config, epoch_steps: int) -> int:
  """Steps between validations: `eval_every_steps`, or one epoch when it is 0."""
  return config.eval_every_steps or epoch_steps


def _plateau(config, data: Data):
  """The run's reduce-on-plateau tracker (None unless schedule='plateau'); it needs a
  validation split, which split='dataset' may lack whatever validation_fraction says."""
  plateau = optim.Plateau.for_config(config)
  if plateau is not None and data.validation.size == 0:
    raise SplitError(f"config.schedule='plateau' follows the validation loss, but the run has no validation "
                     f"split (split={config.split!r}, validation_fraction={config.validation_fraction}); "
                     "set validation_fraction > 0 or another schedule")
  return plateau


def _rate(schedule, step: int, scale: float) -> float:
  """The rate step `step` used: the schedule at the optimizer's count (step - 1) times the
  plateau scale in force. Steps skipped by skip_nonfinite do not advance the optimizer's
  count; this count does, so after one it runs ahead by the skipped steps."""
  return float(schedule(step - 1)) * scale


def train(config, workdir: str, data: Data) -> tuple[Evaluator, dict]:
  """Trains (resuming from workdir/checkpoints); returns the run's evaluator and the host
  state to evaluate (best validation checkpoint or last, per config.eval_checkpoint).

  Validation runs every `eval_every` steps (once per epoch when eval_every_steps=0);
  with schedule='plateau' each validation's loss steps the plateau tracker, whose scale
  the loop writes into the optimizer state for the following steps.
  """
  config, workdir = prepared(config, workdir)
  epoch_steps = steps_per_epoch(config, data)
  steps = total_steps(config, epoch_steps)
  plateau = _plateau(config, data)
  loader = train_loader(config, data)
  built, evaluator = build(config, data, next(iter(loader)), steps, epoch_steps)
  checkpoints = rundir.Checkpoints(workdir, config.keep_checkpoints)
  try:  # closed on every way out: an open orbax manager left to the interpreter's exit
    # prints asyncio "Event loop is closed" tracebacks after the error message
    template = _loop(config, workdir, data, loader, built, evaluator, checkpoints, plateau, steps, epoch_steps)
    return evaluator, evaluated_state(config, checkpoints, template)
  finally:
    checkpoints.close()


def _loop(config, workdir: str, data: Data, loader, built, evaluator: Evaluator, checkpoints: rundir.Checkpoints,
          plateau, steps: int, epoch_steps: int) -> dict:
  """The steps from the resumed position to `steps`; returns the last host state."""
  lead = jax.process_index() == 0
  every = eval_every(config, epoch_steps)
  host_state, iterator, meta = _resume(checkpoints, loader, built.state, workdir)
  iterator = DevicePrefetch(iterator, built.runner.put_batch, config.prefetch_to_device)
  saver = _Saver(checkpoints, built.runner, meta, plateau, keep_best=config.eval_checkpoint != "last")
  schedule = optim.learning_rate_schedule(config, steps)
  start = int(host_state["step"])
  state = built.runner.put_state(host_state)
  # Placed: the host copy would only hold memory (on CPU, as much again as the state).
  built.state = host_state = None
  metric_log = MetricLog(workdir, start, enabled=lead)
  if start == 0:
    metric_log.write_hyperparameters(config)
  pending = []
  window = saver.window

  def flush():
    """Checks each pending step's metrics, adds them to the window and writes the
    window's means at log steps (a skipped step adds nothing and writes no row)."""
    for step, metrics, example_index, scale in pending:
      values = metrics_to_host(metrics)
      if not values["finite"]:
        if config.skip_nonfinite:
          logger.info("step %d: non-finite loss, update skipped (config.skip_nonfinite)", step)
          continue
        ids = ", ".join(sorted({str(data.embryo_ids[i]) for i in example_index}))
        raise NonFiniteLossError(
            f"step {step}: loss is {values['loss']} (grad norm {values['grad_norm']}) on the batch of "
            f"embryos {ids}. Stopped; the last good checkpoint is step {checkpoints.latest_step()} in "
            f"{workdir}/checkpoints. Lower learning_rate, set grad_clip_norm, check those embryos' images, "
            "or set config.skip_nonfinite=True to skip such steps")
      values.pop("finite")
      window.add(values)
      if step % config.log_every_steps == 0 or step == steps:
        means = window.take()
        if lead:
          metric_log.write(step, "train", {**means, "learning_rate": _rate(schedule, step, scale)})
    pending.clear()

  def validate(step, state):
    """(the best_metric value, the state with the plateau scale the next steps use)."""
    val_metrics, _, _ = evaluator.evaluate(state, data.validation, early=False, intervals=False,
                                           desc=f"validation (step {step})")
    metric_log.write(step, "validation", {k: v for k, v in val_metrics.items() if isinstance(v, (int, float))})
    logger.info("step %d validation (%d embryos): loss=%.4f %s", step, val_metrics["num_embryos"],
                val_metrics["loss"], evaluate.format_metrics(val_metrics))
    if plateau is not None and plateau.step(val_metrics["loss"]):
      logger.info("step %d: validation loss %.4f, no improvement for %d validations: learning rate x %g "
                  "(scale %g)", step, val_metrics["loss"], config.plateau_patience + 1, plateau.factor,
                  plateau.scale)
      state = {**state, "opt_state": optim.set_plateau_scale(state["opt_state"], plateau.scale)}
    return float(np.nan_to_num(val_metrics[config.best_metric], nan=-1.0)), state

  bar = tqdm(total=steps, initial=start, disable=not (lead and config.progress), dynamic_ncols=True,
             desc=config.model, unit="step")
  tic, tic_step = time.perf_counter(), start
  try:
    for step in range(start + 1, steps + 1):
      batch, placed = next(iterator)
      state, metrics = built.runner.train_step_placed(state, placed)
      pending.append((step, metrics, np.asarray(batch["example_index"]).reshape(-1)[
          np.asarray(batch["valid"]).reshape(-1)], plateau.scale if plateau is not None else 1.0))
      bar.update(1)
      do_eval = data.validation.size > 0 and (step % every == 0 or step == steps)
      do_save = step % config.checkpoint_every_steps == 0 or step == steps or do_eval
      if step % config.log_every_steps == 0 or do_save:
        last_metrics = metrics_to_host(pending[-1][1])
        flush()
        rate = (step - tic_step) / max(time.perf_counter() - tic, 1e-9)
        bar.set_postfix(loss=f"{last_metrics['loss']:.4f}", steps_per_s=f"{rate:.2f}")
      if do_save:
        evaluated = None
        if do_eval:
          evaluated, state = validate(step, state)
        saver.checkpoint(step, state, iterator, evaluated)
    flush()
  finally:
    bar.close()
    metric_log.close()
  return built.runner.host_state(state)


def evaluated_state(config, checkpoints: rundir.Checkpoints, template: dict) -> dict:
  """The host state a run evaluates (rundir's best-or-last choice), said when it is the best."""
  state, meta = checkpoints.restore_for_evaluation(template, config.eval_checkpoint)
  if "value" in meta:
    logger.info("evaluating the best validation checkpoint (step %d, %s=%.4f)", int(meta["step"]),
                config.best_metric, float(meta["value"]))
  return state


# ---------------------------------------------------------------------------- run modes


def _report_test(workdir: str, metrics: dict, rows: list, curve, model: str = "") -> None:
  """Writes the test evaluation's files and plots (titles: `model`, metrics['step'], n)
  and training_curves.png from metrics.jsonl, and logs the metrics line."""
  if jax.process_index() == 0:
    results.write_evaluation(workdir, metrics, rows, early=curve, model=model)
    results.write_training_curves(workdir, model)
  logger.info("test (%d embryos): %s%s", metrics["num_embryos"], evaluate.format_metrics(metrics),
              f" early-prediction area={curve['area_under_accuracy_curve']:.3f}" if curve else "")


def train_and_evaluate(config, workdir: str, source=None, train_idx=None, test_idx=None) -> dict:
  """Trains, evaluates on the test split, writes metrics.json, predictions.csv, plots."""
  config, workdir = prepared(config, workdir)
  source = source if source is not None else open_source(config)
  data = make_data(config, source, train_idx, test_idx)
  if jax.process_index() == 0:
    if train_idx is None:  # cross-validation folds are logged by cross_validate
      for note in split_notes(config, data):
        logger.info("%s", note)
    rundir.write_data_info(workdir, data_info(source, data))
  data = with_features(config, workdir, data)
  evaluator, final = train(config, workdir, data)
  logger.info("process %d: parameter checksum %s", jax.process_index(), parameter_checksum(final["params"]))
  placed = evaluator.runner.put_state(final)
  _calibrate(evaluator, placed, data, workdir, int(final["step"]))
  metrics, rows, curve = evaluator.evaluate(placed, data.test, desc="test")
  metrics["step"] = int(final["step"])
  _report_test(workdir, metrics, rows, curve, config.model)
  return {**metrics, **({"early_prediction": curve} if curve else {})}


def _calibrate(evaluator: Evaluator, state, data: Data, workdir: str, step: int) -> None:
  """Temperature scaling on the validation split, when there is one (2 embryos or more),
  written to calibration.json for evaluate and predict; uncalibrated otherwise."""
  if data.validation.size < 2:
    logger.info("no validation split to calibrate on: probabilities are uncalibrated")
    return
  calibration = {**evaluator.calibrate(state, data.validation), "step": step}
  if jax.process_index() == 0:
    rundir.write_calibration(workdir, calibration)
  logger.info("temperature %.3f fitted on %d validation embryos", calibration["temperature"],
              calibration["num_embryos"])


def restore_for_evaluation(config, workdir: str, data: Data):
  """The evaluator of a finished (or interrupted) run and the host state it would evaluate."""
  epoch_steps = steps_per_epoch(config, data)
  sample = next(iter(train_loader(config, data)))
  built, evaluator = build(config, data, sample, total_steps(config, epoch_steps), epoch_steps)
  checkpoints = rundir.Checkpoints(workdir, config.keep_checkpoints, read_only=True)
  try:
    return evaluator, evaluated_state(config, checkpoints, built.state)
  finally:
    checkpoints.close()


def evaluate_workdir(workdir: str, config=None) -> dict:
  """Re-evaluates a run's checkpoint on its test split and rewrites its metrics/plots."""
  workdir = config_validation.expand_path(workdir)
  if config is None:
    config = rundir.read_config(workdir, "--mode evaluate")
  config = config_validation.prepare(config)
  # The config came from the workdir: its paths are data, so nothing is built outside it.
  data = with_features(config, workdir, make_data(config, open_source(config, build=False)), build=False)
  evaluator, state = restore_for_evaluation(config, workdir, data)
  calibration = rundir.read_calibration(workdir, int(state["step"]))
  evaluator.temperature = calibration["temperature"] if calibration else 1.0
  metrics, rows, curve = evaluator.evaluate(evaluator.runner.put_state(state), data.test, desc="test")
  metrics["step"] = int(state["step"])
  _report_test(workdir, metrics, rows, curve, config.model)
  return metrics


def cross_validate(config, workdir: str, source=None) -> dict:
  """Patient-grouped k-fold: one run per fold in workdir/fold_<i>, then mean ± std.

  No patient is in both the training and the test side of a fold. Each fold resumes
  on its own, so a killed cross-validation continues where it stopped.
  """
  config, workdir = prepared(config, workdir)
  source = source if source is not None else open_source(config)
  if reads_features(config) and not config.feature_cache_dir:
    config = ml_collections.ConfigDict(config.to_dict())
    config.feature_cache_dir = os.path.join(workdir, "features")  # one cache for every fold
  folds = cross_validation_folds(config, source)
  fold_metrics, rows = [], []
  for fold, (train_idx, test_idx) in enumerate(folds):
    logger.info("fold %d/%d: %d train, %d test embryos", fold + 1, len(folds), train_idx.size, test_idx.size)
    fold_dir = os.path.join(workdir, f"fold_{fold}")
    os.makedirs(fold_dir, exist_ok=True)
    result = train_and_evaluate(config, fold_dir, source, train_idx, test_idx)
    curve = result.pop("early_prediction", None)
    if curve:
      result["early_area_under_accuracy"] = curve["area_under_accuracy_curve"]
    fold_metrics.append(result)
    with open(os.path.join(fold_dir, "predictions.csv")) as f:
      rows.extend({"fold": fold, **row} for row in csv.DictReader(f))
  summary = evaluate.aggregate_folds(fold_metrics)
  summary["num_folds"] = len(folds)
  if jax.process_index() == 0:
    results.write_evaluation(workdir, summary, rows, labels=[int(r["label"]) for r in rows],
                              probs=[float(r["prob_blast"]) for r in rows], model=config.model)
  logger.info("cross-validation (%d folds): %s", len(folds), evaluate.format_metrics(summary))
  return summary
