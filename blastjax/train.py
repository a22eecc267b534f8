"""The training loop and the run modes (train then evaluate, evaluate a workdir,
cross-validation). The step and its parallel wrapper are in blastjax.train_step, the
data of a run in blastjax.train_data.

The loop (`train`) resumes from the last complete checkpoint with the same step,
optimizer state, RNG and data position, so a killed run ends with the parameters and
metrics of an uninterrupted one (CPU). `evaluate_split` wires blastjax.evaluate:
test metrics, early prediction by hours observed, sliding-window averaging.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from blastjax import checkpoint as ckpt_lib
from blastjax import config_validation
from blastjax.train_data import (Data, evaluate_split, make_data, open_source,
                                 reads_features, selected_devices, split_notes, steps_per_epoch, train_loader,
                                 with_features, write_data_info)
from blastjax.train_step import (DevicePrefetch, Runner, StepConfig, class_weight_vector, init_state,
                                 make_eval_step, make_optimizer, make_train_step, metrics_to_host,
                                 model_inputs)



class NonFiniteLossError(FloatingPointError):
  """The loss or the gradients became NaN or infinite."""


# ---------------------------------------------------------------------------- logging


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
      with open(self.path) as f:
        kept = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= start_step]
      with open(self.path, "w") as f:
        f.writelines(kept)
    from tensorboardX import SummaryWriter
    self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step + 1)

  def write(self, step: int, kind: str, values: dict) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), "kind": kind, **values}) + "\n")
    for key, value in values.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        self.writer.add_scalar(f"{kind}/{key}", value, step)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


# ---------------------------------------------------------------------------- variables


def merge_pretrained(variables: dict, loaded: dict) -> tuple[dict, int, list]:
  """Copies every loaded leaf whose path and shape match; returns (merged, count, skipped).

  Converted weights may lack (or have another shape of) the classifier head: those
  leaves keep their fresh initialisation and are listed in `skipped`.
  """
  flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, variables))
  source = traverse_util.flatten_dict(jax.tree.map(np.asarray, dict(loaded)))
  copied, skipped = 0, []
  for key, value in flat.items():
    other = source.get(key)
    if other is not None and other.shape == value.shape:
      flat[key] = other.astype(value.dtype)
      copied += 1
    else:
      skipped.append("/".join(map(str, key)))
  return traverse_util.unflatten_dict(flat), copied, skipped


# ---------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class Built:
  """A model ready to run: module, spec, runner, initial host state (None once `train`
  has placed it on the devices)."""

  model: Any
  spec: Any
  runner: Runner
  state: dict
  tx: Any


def build(config, data: Data, sample_batch: dict, total_steps: int, epoch_steps: int,
          log: Callable[[str], None] = print) -> Built:
  from blastjax import models

  spec = models.get_spec(config.model)
  kwargs = dict(config.model_kwargs)
  if config.dtype == "bfloat16":
    kwargs["dtype"] = jnp.bfloat16
  model = models.create(config.model, num_classes=2, **kwargs)
  x, mask = model_inputs({k: v[0, :1] for k, v in sample_batch.items()}, spec.input_kind)
  key = jax.random.PRNGKey(config.seed)
  # Eager init: compiling the whole init graph of a large 3D network costs minutes on CPU.
  variables = model.init({"params": key, "dropout": key}, x, train=False, mask=mask)
  variables = jax.tree.map(np.asarray, dict(variables))
  if config.init_from:
    from blastjax import weights
    loaded, _ = weights.load_variables(config.init_from)
    variables, copied, skipped = merge_pretrained(variables, loaded)
    if copied == 0:
      raise ValueError(f"config.init_from={config.init_from!r}: no variable matches model {config.model!r} "
                       "(converted for another model?)")
    log(f"init_from: {copied} variables loaded, {len(skipped)} kept fresh ({', '.join(skipped[:4])}"
        f"{' ...' if len(skipped) > 4 else ''})")
  tx = make_optimizer(config, variables["params"], total_steps, epoch_steps)
  sc = StepConfig(input_kind=spec.input_kind, per_step=spec.per_step,
                  class_weights=tuple(class_weight_vector(config, data.labels[data.train]).tolist()),
                  aux_loss_weight=config.aux_loss_weight, skip_nonfinite=config.skip_nonfinite)
  runner = Runner(make_train_step(model, tx, sc), make_eval_step(model, sc), config.parallel,
                  devices=selected_devices(config))
  return Built(model, spec, runner, init_state(model, tx, variables, config.seed), tx)


def parameter_checksum(params) -> str:
  """sha256 of every parameter's bytes, in tree order (compares processes and runs)."""
  import hashlib

  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return digest.hexdigest()[:16]


def total_steps(config, epoch_steps: int) -> int:
  return config.num_steps if config.num_steps > 0 else config.num_epochs * epoch_steps


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


def _set_iterator_state(iterator, text: str) -> None:
  iterator.set_state(text.encode())


def prepared(config, workdir: str):
  """The config and workdir a run uses: config_validation.prepare (`~` expanded in every
  path field, simulator options dropped for other datasets) and `~` expanded in workdir.
  Every entry point below applies it, so the Python API behaves like blastjax.main."""
  return config_validation.prepare(config), config_validation.expand_path(workdir)


def train(config, workdir: str, data: Data, log: Callable[[str], None] = print) -> tuple[Built, dict]:
  """Trains (resuming from workdir/checkpoints) and returns the model and the state to
  evaluate (best validation checkpoint or last, per config.eval_checkpoint)."""
  config, workdir = prepared(config, workdir)
  lead = jax.process_index() == 0
  epoch_steps = steps_per_epoch(config, data)
  steps = total_steps(config, epoch_steps)
  loader = train_loader(config, data)
  iterator = iter(loader)
  first = next(iterator)
  built = build(config, data, first, steps, epoch_steps, log)
  checkpoints = ckpt_lib.Checkpoints(workdir, config.keep_checkpoints)
  host_state = built.state
  restored, meta = checkpoints.restore_latest(host_state)
  if restored is not None:
    host_state = restored
    iterator = iter(loader)
    _set_iterator_state(iterator, meta["data_iterators"][jax.process_index()])
    log(f"resumed from {workdir}/checkpoints step {int(meta['step'])}")
  else:
    iterator = iter(loader)
  iterator = DevicePrefetch(iterator, built.runner.put_batch, config.prefetch_to_device)
  best = {"value": meta.get("best_value"), "step": meta.get("best_step")}
  start = int(host_state["step"])
  state = built.runner.put_state(host_state)
  # Placed: the host copy would only hold memory (on CPU, as much again as the state).
  built.state = host_state = restored = None
  metric_log = MetricLog(workdir, start, enabled=lead)
  pending = []

  def flush():
    for step, metrics, example_index in pending:
      values = metrics_to_host(metrics)
      if not values["finite"]:
        if config.skip_nonfinite:
          log(f"step {step}: non-finite loss, update skipped (config.skip_nonfinite)")
          continue
        ids = ", ".join(sorted({str(data.embryo_ids[i]) for i in example_index}))
        last = checkpoints.latest_step()
        raise NonFiniteLossError(
            f"step {step}: loss is {values['loss']} (grad norm {values['grad_norm']}) on the batch of "
            f"embryos {ids}. Stopped; the last good checkpoint is step {last} in {workdir}/checkpoints. "
            "Lower learning_rate, set grad_clip_norm, check those embryos' images, or set "
            "config.skip_nonfinite=True to skip such steps")
      if lead and (step % config.log_every_steps == 0 or step == steps):
        values.pop("finite")
        metric_log.write(step, "train", values)
    pending.clear()

  def save(step, evaluated):
    host = built.runner.host_state(state)
    bad = [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_leaves_with_path(host["params"])
           if np.issubdtype(np.asarray(leaf).dtype, np.floating) and not np.isfinite(leaf).all()]
    if bad:
      raise NonFiniteLossError(
          f"step {step}: parameters became NaN or infinite ({', '.join(bad[:3])}); not saved. The last "
          f"good checkpoint is step {checkpoints.latest_step()} in {workdir}/checkpoints. Lower "
          "learning_rate or set grad_clip_norm")
    if evaluated is not None and (best["value"] is None or evaluated > best["value"]):
      best.update(value=float(evaluated), step=step)
      checkpoints.save_best(step, host, {"step": step, "value": float(evaluated)})
    iterators = _gather_text(_iterator_state(iterator))
    checkpoints.save(step, host, {"step": step, "data_iterators": iterators,
                                  "best_value": best["value"], "best_step": best["step"]})

  from tqdm import tqdm
  bar = tqdm(total=steps, initial=start, disable=not (lead and config.progress), dynamic_ncols=True,
             desc=config.model, unit="step")
  tic, tic_step = time.perf_counter(), start
  try:
    for step in range(start + 1, steps + 1):
      batch, placed = next(iterator)
      state, metrics = built.runner.train_step_placed(state, placed)
      pending.append((step, metrics, np.asarray(batch["example_index"]).reshape(-1)[
          np.asarray(batch["valid"]).reshape(-1)]))
      bar.update(1)
      do_eval = data.validation.size > 0 and (step % config.eval_every_steps == 0 or step == steps)
      do_save = step % config.checkpoint_every_steps == 0 or step == steps or do_eval
      if step % config.log_every_steps == 0 or do_save:
        last_metrics = metrics_to_host(pending[-1][1])
        flush()
        rate = (step - tic_step) / max(time.perf_counter() - tic, 1e-9)
        bar.set_postfix(loss=f"{last_metrics['loss']:.4f}", steps_per_s=f"{rate:.2f}")
      if do_save:
        evaluated = None
        if do_eval:
          val_metrics, _, _ = evaluate_split(built.runner, state, config, data, data.validation, early=False)
          evaluated = float(np.nan_to_num(val_metrics[config.best_metric], nan=-1.0))
          if lead:
            metric_log.write(step, "validation", {k: v for k, v in val_metrics.items()
                                                   if isinstance(v, (int, float))})
        save(step, evaluated)
    flush()
  finally:
    bar.close()
    metric_log.close()
  final = built.runner.host_state(state)
  if config.eval_checkpoint == "best" and best["step"] is not None and best["step"] in checkpoints.best_steps():
    final, _ = checkpoints.restore_best(best["step"], final)
    log(f"evaluating the best validation checkpoint (step {best['step']}, {config.best_metric}={best['value']:.4f})")
  checkpoints.close()
  return built, final


def train_and_evaluate(config, workdir: str, source=None, train_idx=None, test_idx=None,
                       log: Callable[[str], None] = print) -> dict:
  """Trains, evaluates on the test split, writes metrics.json, predictions.csv, plots."""
  from blastjax import evaluate

  config, workdir = prepared(config, workdir)
  source = source if source is not None else open_source(config)
  data = make_data(config, source, train_idx, test_idx)
  if jax.process_index() == 0:
    if train_idx is None:  # cross-validation folds are logged by cross_validate
      for note in split_notes(config, data):
        log(note)
    write_data_info(workdir, source, data)
  data = with_features(config, workdir, data, log)
  built, final = train(config, workdir, data, log)
  log(f"process {jax.process_index()}: parameter checksum {parameter_checksum(final['params'])}")
  state = built.runner.put_state(final)
  metrics, rows, curve = evaluate_split(built.runner, state, config, data, data.test)
  metrics["step"] = int(final["step"])
  if jax.process_index() == 0:
    evaluate.write_evaluation(workdir, metrics, rows, early=curve)
  log(f"test ({metrics['num_embryos']} embryos): {evaluate.format_metrics(metrics)}"
      + (f" early-prediction area={curve['area_under_accuracy_curve']:.3f}" if curve else ""))
  return {**metrics, **({"early_prediction": curve} if curve else {})}


# ---------------------------------------------------------------------------- other modes


def restore_for_evaluation(config, workdir: str, data: Data, log: Callable[[str], None] = print):
  """The model of a finished (or interrupted) run and the state it would evaluate."""
  epoch_steps = steps_per_epoch(config, data)
  sample = next(iter(train_loader(config, data)))
  built = build(config, data, sample, total_steps(config, epoch_steps), epoch_steps, log)
  checkpoints = ckpt_lib.Checkpoints(workdir, config.keep_checkpoints, read_only=True)
  try:
    state, meta = checkpoints.restore_latest(built.state)
    if state is None:
      raise ckpt_lib.CheckpointError(f"no complete checkpoint in {workdir}/checkpoints to evaluate")
    best_step = meta.get("best_step")
    if config.eval_checkpoint == "best" and best_step is not None and best_step in checkpoints.best_steps():
      state, _ = checkpoints.restore_best(best_step, state)
  finally:
    checkpoints.close()
  return built, state


def evaluate_workdir(workdir: str, config=None, log: Callable[[str], None] = print) -> dict:
  """Re-evaluates a run's checkpoint on its test split and rewrites its metrics/plots."""
  from blastjax import evaluate
  import ml_collections

  workdir = config_validation.expand_path(workdir)
  if config is None:
    with open(os.path.join(workdir, "config.json")) as f:
      config = ml_collections.ConfigDict(json.load(f))
  config = config_validation.prepare(config)
  data = with_features(config, workdir, make_data(config, open_source(config)), log)
  built, state = restore_for_evaluation(config, workdir, data, log)
  metrics, rows, curve = evaluate_split(built.runner, built.runner.put_state(state), config, data, data.test)
  metrics["step"] = int(state["step"])
  if jax.process_index() == 0:
    evaluate.write_evaluation(workdir, metrics, rows, early=curve)
  log(f"test ({metrics['num_embryos']} embryos): {evaluate.format_metrics(metrics)}")
  return metrics


def cross_validate(config, workdir: str, log: Callable[[str], None] = print, source=None) -> dict:
  """Patient-grouped k-fold: one run per fold in workdir/fold_<i>, then mean ± std.

  No patient is in both the training and the test side of a fold. Each fold resumes
  on its own, so a killed cross-validation continues where it stopped.
  """
  import ml_collections

  from blastjax import evaluate
  from blastjax.train_data import cross_validation_folds

  config, workdir = prepared(config, workdir)
  source = source if source is not None else open_source(config)
  if reads_features(config) and not config.feature_cache_dir:
    config = ml_collections.ConfigDict(config.to_dict())
    config.feature_cache_dir = os.path.join(workdir, "features")  # one cache for every fold
  folds = cross_validation_folds(config, source)
  fold_metrics, rows = [], []
  for fold, (train_idx, test_idx) in enumerate(folds):
    log(f"fold {fold + 1}/{len(folds)}: {train_idx.size} train, {test_idx.size} test embryos")
    fold_dir = os.path.join(workdir, f"fold_{fold}")
    os.makedirs(fold_dir, exist_ok=True)
    result = train_and_evaluate(config, fold_dir, source, train_idx, test_idx, log)
    curve = result.pop("early_prediction", None)
    if curve:
      result["early_area_under_accuracy"] = curve["area_under_accuracy_curve"]
    fold_metrics.append(result)
    with open(os.path.join(fold_dir, "predictions.csv")) as f:
      import csv
      rows.extend({"fold": fold, **row} for row in csv.DictReader(f))
  summary = evaluate.aggregate_folds(fold_metrics)
  summary["num_folds"] = len(folds)
  if jax.process_index() == 0:
    evaluate.write_evaluation(workdir, summary, rows, labels=[int(r["label"]) for r in rows],
                              probs=[float(r["prob_blast"]) for r in rows])
  log(f"cross-validation ({len(folds)} folds): {evaluate.format_metrics(summary)}")
  return summary
