"""The train state, the one-device train and eval steps, and their pmap / shard_map wrapper.

The step is written once, as the work of one device, with its collectives over the
axis 'batch' (DESIGN.md): the loss is the class-weighted mean over every valid row
(and every unpadded step of per-step models) of the *global* batch, so gradients
averaged with `lax.pmean` equal the gradients of the one-device step on the same
global batch. BatchNorm statistics are computed per device (as torch DDP without
SyncBN) and `batch_stats` averaged over devices after each step. `Runner` wraps the
step with `jax.pmap` (default) or `jax.jit(jax.shard_map(...))` over a 1-D mesh.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# The model input/output contract lives with the model spec; the step reads it by
# (input_kind, per_step), so it needs no spec object (benchmarks build StepConfigs).
from blastjax import models, weights
from blastjax.models.registry import blast_probability, final_logits, model_inputs, split_output

AXIS = "batch"

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- optimizer


def freeze_labels(params, freeze: str):
  """'frozen' for every parameter created before the first module named `freeze`.

  Parameter order is creation order (Flax keeps it in its dicts), so `freeze='layer4'`
  trains layer4 and everything after it (Hara: fine-tune only conv5_x and fc).
  """
  flat = traverse_util.flatten_dict(params)
  keys = list(flat)
  first = next((i for i, k in enumerate(keys)
                if any(part == freeze or str(part).startswith(freeze + "_") or str(part).startswith(freeze + ".")
                       for part in k)), None)
  if first is None:
    names = sorted({k[0] for k in keys})
    raise ValueError(f"config.freeze={freeze!r} matches no module of the model; top-level modules: "
                     f"{', '.join(names)}")
  labels = {k: ("frozen" if i < first else "trained") for i, k in enumerate(keys)}
  return traverse_util.unflatten_dict(labels)


def learning_rate_schedule(config, total_steps: int):
  lr = config.learning_rate
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, config.warmup_steps, max(total_steps, config.warmup_steps + 1))
  if config.warmup_steps:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, config.warmup_steps), optax.constant_schedule(lr)],
                                [config.warmup_steps])
  return optax.constant_schedule(lr)


def make_optimizer(config, params, total_steps: int, steps_per_epoch: int):
  """AdamW (+ clipping, schedule, reduce-on-plateau, freezing) as one optax transform.

  Reduce-on-plateau (Hara et al.) scales the update by `plateau_factor` when the
  epoch-mean training loss has not improved for `plateau_patience` epochs; its state
  lives in the optimizer state, so it is checkpointed with it.
  """
  parts = []
  if config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  parts.append(optax.adamw(learning_rate_schedule(config, total_steps), weight_decay=config.weight_decay))
  if config.schedule == "plateau":
    parts.append(optax.contrib.reduce_on_plateau(factor=config.plateau_factor, patience=config.plateau_patience,
                                                 accumulation_size=max(1, steps_per_epoch)))
  tx = optax.chain(*parts)
  if config.freeze:
    tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()},
                               freeze_labels(params, config.freeze))
  return tx


def class_weight_vector(config, train_labels) -> np.ndarray:
  if config.class_weights == "none":
    return np.ones(2, np.float32)
  if config.class_weights == "balanced":
    counts = np.bincount(np.asarray(train_labels, np.int64), minlength=2).astype(np.float64)
    return (counts.sum() / (2.0 * np.maximum(counts, 1.0))).astype(np.float32)
  return np.asarray([float(w) for w in config.class_weights.split(",")], np.float32)


# ---------------------------------------------------------------------------- the step


def init_state(model, tx, variables: dict, seed: int) -> dict:
  """The train state: a plain dict (checkpointed as is)."""
  return {"step": np.asarray(0, np.int32), "params": variables["params"],
          "batch_stats": variables.get("batch_stats", {}),
          "opt_state": tx.init(variables["params"]),
          "rng": np.asarray(jax.random.key_data(jax.random.PRNGKey(seed)))}


def create_model(config):
  """(module, spec) of `config.model`, in the config's compute dtype (training, evaluation
  and predict build the model here, so they run the same network)."""
  spec = models.get_spec(config.model)
  kwargs = dict(config.model_kwargs)
  if config.dtype == "bfloat16":
    kwargs["dtype"] = jnp.bfloat16
  return models.create(config.model, num_classes=2, **kwargs), spec


def init_variables(config, model, spec, sample_batch: dict) -> dict:
  """Fresh variables (host numpy) from the first row of a [devices, per_device, ...] batch,
  with config.init_from's converted weights merged in."""
  x, mask = spec.inputs({k: v[0, :1] for k, v in sample_batch.items()})
  key = jax.random.PRNGKey(config.seed)
  # Eager init: compiling the whole init graph of a large 3D network costs minutes on CPU.
  variables = model.init({"params": key, "dropout": key}, x, train=False, mask=mask)
  variables = jax.tree.map(np.asarray, dict(variables))
  return pretrained(config, variables) if config.init_from else variables


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


def pretrained(config, variables: dict) -> dict:
  """`variables` with config.init_from's converted weights merged in."""
  loaded, _ = weights.load_variables(config.init_from)
  variables, copied, skipped = merge_pretrained(variables, loaded)
  if copied == 0:
    raise ValueError(f"config.init_from={config.init_from!r}: no variable matches model {config.model!r} "
                     "(converted for another model?)")
  logger.info("init_from: %d variables loaded, %d kept fresh (%s%s)", copied, len(skipped),
              ", ".join(skipped[:4]), " ..." if len(skipped) > 4 else "")
  return variables


@dataclasses.dataclass(frozen=True)
class StepConfig:
  input_kind: str
  per_step: bool
  class_weights: tuple = (1.0, 1.0)
  aux_loss_weight: float = 0.4
  skip_nonfinite: bool = False


def make_train_step(model, tx, sc: StepConfig) -> Callable:
  """The step of one device; collectives over AXIS. Returns (new_state, metrics)."""

  def train_step(state, batch):
    x, mask = model_inputs(batch, sc.input_kind)
    labels, valid = batch["label"], batch["valid"].astype(jnp.float32)
    rng = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"]),
                             lax.axis_index(AXIS))
    row_weights = jnp.asarray(sc.class_weights, jnp.float32)[labels] * valid
    if sc.per_step:
      weights = row_weights[:, None] * (~batch["mask"]).astype(jnp.float32)
      targets = jnp.broadcast_to(labels[:, None], batch["mask"].shape)
    else:
      weights, targets = row_weights, labels
    total = jnp.maximum(lax.psum(weights.sum(), AXIS), 1e-12)
    devices = lax.psum(1.0, AXIS)

    def loss_fn(params):
      variables = {"params": params}
      if state["batch_stats"]:
        variables["batch_stats"] = state["batch_stats"]
      out, updates = model.apply(variables, x, train=True, mask=mask, mutable=["batch_stats"],
                                 rngs={"dropout": rng})
      logits, aux = split_output(out)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
      loss_sum = (ce * weights).sum()
      if aux is not None:
        aux_ce = optax.softmax_cross_entropy_with_integer_labels(aux.astype(jnp.float32), targets)
        loss_sum = loss_sum + sc.aux_loss_weight * (aux_ce * weights).sum()
      return loss_sum * devices / total, (updates, logits)

    # Differentiate per-device copies: under shard_map the gradient of a replicated
    # (invariant) input would otherwise arrive already summed over devices.
    local_params = jax.tree.map(lambda p: lax.pcast(p, AXIS, to="varying"), state["params"])
    (loss, (updates, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(local_params)
    grads = lax.pmean(grads, AXIS)
    loss = lax.pmean(loss, AXIS)
    batch_stats = lax.pmean(updates.get("batch_stats", state["batch_stats"]), AXIS)
    grad_norm = optax.tree.norm(grads)
    param_updates, opt_state = tx.update(grads, state["opt_state"], state["params"], value=loss)
    params = optax.apply_updates(state["params"], param_updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = {"step": state["step"] + 1, "params": params, "batch_stats": batch_stats,
           "opt_state": opt_state, "rng": state["rng"]}
    if sc.skip_nonfinite:
      kept = {k: v for k, v in state.items() if k != "step"}
      changed = {k: v for k, v in new.items() if k != "step"}
      merged = jax.tree.map(lambda a, b: jnp.where(finite, a, b), changed, kept)
      new = {"step": new["step"], **merged}
    preds = jnp.argmax(final_logits(logits, mask if sc.per_step else None, sc.per_step), -1)
    correct = lax.psum(((preds == labels) * valid).sum(), AXIS)
    count = lax.psum(valid.sum(), AXIS)
    metrics = {"loss": loss, "accuracy": correct / jnp.maximum(count, 1.0), "grad_norm": grad_norm,
               "finite": finite}
    return new, metrics

  return train_step


def make_eval_step(model, sc: StepConfig) -> Callable:
  """P(blast) of every row of one device's batch."""

  def eval_step(state, batch):
    x, mask = model_inputs(batch, sc.input_kind)
    variables = {"params": state["params"]}
    if state["batch_stats"]:
      variables["batch_stats"] = state["batch_stats"]
    return blast_probability(model.apply(variables, x, train=False, mask=mask), mask, sc.per_step)

  return eval_step


# ---------------------------------------------------------------------------- parallel


def selected_devices(config) -> list:
  """The devices a run uses: every device, or the first `config.num_devices` of each process."""
  wanted = config.get("num_devices", 0)
  if not wanted:
    return jax.devices()
  chosen = []
  for process in range(jax.process_count()):
    local = [d for d in jax.devices() if d.process_index == process]
    if wanted > len(local):
      raise ValueError(f"config.num_devices={wanted}: process {process} has only {len(local)} devices")
    chosen += local[:wanted]
  return chosen


class Runner:
  """Runs the one-device steps on every device with pmap or jit + shard_map.

  Batches arrive as this process's [local_devices, per_device, ...] arrays; the state
  as one host copy. `put_state` places it (replicated), `host_state` brings it back.
  `train_step=None` makes an evaluation-only runner (predict).
  """

  def __init__(self, train_step: Callable, eval_step: Callable, parallel: str = "pmap",
               devices=None):
    self.parallel = parallel
    self.devices = list(devices) if devices is not None else jax.devices()
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
    if parallel == "pmap":
      self._train = train_step and jax.pmap(train_step, axis_name=AXIS, donate_argnums=(0,), devices=self.devices)
      self._eval = jax.pmap(eval_step, axis_name=AXIS, devices=self.devices)
      self._place = jax.pmap(lambda tree: tree, axis_name=AXIS, devices=self.devices)
      # Row i of a [local_devices, ...] batch on local device i, as pmap splits it.
      self._local_rows = NamedSharding(Mesh(np.asarray(self.local_devices), (AXIS,)), P(AXIS))
    elif parallel == "shard_map":
      self.mesh = Mesh(np.asarray(self.devices), (AXIS,))
      self._replicated = NamedSharding(self.mesh, P())
      self._sharded = NamedSharding(self.mesh, P(AXIS))

      def train_one(state, batch):
        return train_step(state, jax.tree.map(lambda v: v[0], batch))

      def eval_one(state, batch):
        return eval_step(state, jax.tree.map(lambda v: v[0], batch))[None]

      self._train = train_step and jax.jit(jax.shard_map(train_one, mesh=self.mesh, in_specs=(P(), P(AXIS)),
                                                         out_specs=(P(), P())), donate_argnums=(0,))
      self._eval = jax.jit(jax.shard_map(eval_one, mesh=self.mesh, in_specs=(P(), P(AXIS)),
                                         out_specs=P(AXIS)))
    else:
      raise ValueError(f"parallel={parallel!r}: choose 'pmap' or 'shard_map'")

  def put_state(self, state):
    if self.parallel == "pmap":
      # Through an identity pmap, so the first step sees device arrays of the same kind
      # as the step's own outputs (host arrays would make the second call recompile).
      stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (len(self.local_devices),) + np.shape(x)),
                             state)
      return self._place(stacked)
    return jax.tree.map(lambda x: jax.make_array_from_callback(
        np.shape(x), self._replicated, lambda index: np.asarray(x)[index]), state)

  def put_batch(self, batch):
    """This process's host batch as device arrays, split over the local devices.

    The copy starts at once and runs asynchronously; `DevicePrefetch` calls this ahead of
    the step so the copy overlaps earlier steps' compute.
    """
    if self.parallel == "pmap":
      return jax.device_put(batch, self._local_rows)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self._sharded, np.asarray(x)), batch)

  def host_state(self, state):
    if self.parallel == "pmap":
      return jax.tree.map(lambda x: np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x[0])
                          .reshape(x.shape[1:]), state)
    return to_numpy_tree(state)

  def train_step(self, state, batch):
    """One step on a host batch (placed on the devices first)."""
    return self.train_step_placed(state, self.put_batch(batch))

  def train_step_placed(self, state, placed_batch):
    """One step on a batch already placed by `put_batch` (as `DevicePrefetch` yields)."""
    return self._train(state, placed_batch)

  def compile_train_step(self, state, batch):
    """The train step compiled ahead of time for these shapes (what `train_step` runs).

    Returns a jax `Compiled`: call it as `compiled(state, runner.put_batch(batch))`; its
    `input_shardings`, `cost_analysis()` and `memory_analysis()` serve benchmarks.
    """
    return self._train.lower(state, self.put_batch(batch)).compile()

  def eval_step(self, state, batch) -> np.ndarray:
    """This process's probabilities, [local_devices * per_device]."""
    out = self._eval(state, self.put_batch(batch))
    if self.parallel == "pmap":
      return np.asarray(out).reshape(-1)
    shards = sorted(out.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data).reshape(-1) for s in shards])


class DevicePrefetch:
  """Yields (host batch, placed batch) with `size` more batches already on the devices.

  Placing batch t+1..t+size while step t runs hides the host-to-device copy behind
  compute (what flax's prefetch_to_device does). `get_state()` is the wrapped iterator's
  state as of the last batch handed out, not of those buffered ahead, so a checkpoint
  resumes at the next batch the step has not seen. size=0 places each batch when asked.
  """

  def __init__(self, iterator: Iterator, put: Callable, size: int):
    if size < 0:
      raise ValueError(f"prefetch size {size}: use 0 (no prefetch) or more")
    self._iterator, self._put, self._size = iterator, put, size
    self._ahead = collections.deque()
    self._state = iterator.get_state()

  def __iter__(self):
    return self

  def __next__(self):
    while len(self._ahead) <= self._size:
      try:
        batch = next(self._iterator)
      except StopIteration:
        break
      self._ahead.append((batch, self._put(batch), self._iterator.get_state()))
    if not self._ahead:
      raise StopIteration
    batch, placed, self._state = self._ahead.popleft()
    return batch, placed

  def get_state(self):
    return self._state


def to_numpy_tree(tree):
  """Host numpy copies of every leaf (one device's copy of replicated arrays)."""

  def one(x):
    if isinstance(x, jax.Array):
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(one, tree)


def metrics_to_host(metrics) -> dict:
  """One device's copy of the (replicated) step metrics as Python scalars."""
  out = {}
  for key, value in metrics.items():
    if isinstance(value, jax.Array):
      value = value.addressable_data(0)
    out[key] = np.asarray(value).reshape(-1)[0].item()
  return out


# ---------------------------------------------------------------------------- a run's model


@dataclasses.dataclass
class Built:
  """A model ready to train: module, spec, runner, optimizer and the initial host state
  (None once the loop has placed it on the devices)."""

  model: object
  spec: object
  runner: Runner
  state: dict
  tx: object


def build(config, sample_batch: dict, train_labels, total_steps: int, epoch_steps: int) -> Built:
  """The model, optimizer, steps and runner of a run, and its initial train state."""
  model, spec = create_model(config)
  variables = init_variables(config, model, spec, sample_batch)
  tx = make_optimizer(config, variables["params"], total_steps, epoch_steps)
  sc = StepConfig(input_kind=spec.input_kind, per_step=spec.per_step,
                  class_weights=tuple(class_weight_vector(config, train_labels).tolist()),
                  aux_loss_weight=config.aux_loss_weight, skip_nonfinite=config.skip_nonfinite)
  runner = Runner(make_train_step(model, tx, sc), make_eval_step(model, sc), config.parallel,
                  devices=selected_devices(config))
  return Built(model, spec, runner, init_state(model, tx, variables, config.seed), tx)
