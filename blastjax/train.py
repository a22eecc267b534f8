"""Train state, the one-device train step, its pmap / shard_map wrappers, the loop.

The step is written once, as the work of one device, with its collectives over the
axis 'batch' (DESIGN.md): the loss is the class-weighted mean over every valid row
(and every unpadded step of per-step models) of the *global* batch, so gradients
averaged with `lax.pmean` equal the gradients of the one-device step on the same
global batch. BatchNorm statistics are computed per device (as torch DDP without
SyncBN) and `batch_stats` averaged over devices after each step. `Runner` wraps the
step with `jax.pmap` (default) or `jax.jit(jax.shard_map(...))` over a 1-D mesh.

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
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from blastjax import checkpoint as ckpt_lib

AXIS = "batch"


class NonFiniteLossError(FloatingPointError):
  """The loss or the gradients became NaN or infinite."""


# ---------------------------------------------------------------------------- model io


def model_inputs(batch: dict, input_kind: str):
  """(x, mask) a model takes from a batch; image models get mask=None."""
  x = batch["features"] if input_kind == "features" else batch["image"]
  return x, (None if input_kind == "image" else batch["mask"])


def final_logits(logits, mask, per_step: bool):
  """[B, C] logits: the last valid step's for per-step models ([B, T, C])."""
  if not per_step:
    return logits
  steps = logits.shape[1]
  valid = ~mask if mask is not None else jnp.ones(logits.shape[:2], bool)
  last = steps - 1 - jnp.argmax(valid[:, ::-1], axis=1)
  return jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]


def split_output(out):
  """Models may return (logits, aux_logits) in train mode (Inception-v3)."""
  if isinstance(out, (tuple, list)):
    return out[0], out[1]
  return out, None


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
    logits, _ = split_output(model.apply(variables, x, train=False, mask=mask))
    logits = final_logits(logits, mask if sc.per_step else None, sc.per_step)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[:, 1]

  return eval_step


# ---------------------------------------------------------------------------- parallel


class Runner:
  """Runs the one-device steps on every device with pmap or jit + shard_map.

  Batches arrive as this process's [local_devices, per_device, ...] arrays; the state
  as one host copy. `put_state` places it (replicated), `host_state` brings it back.
  """

  def __init__(self, train_step: Callable, eval_step: Callable, parallel: str = "pmap",
               devices=None):
    self.parallel = parallel
    self.devices = list(devices) if devices is not None else jax.devices()
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
    if parallel == "pmap":
      self._train = jax.pmap(train_step, axis_name=AXIS, donate_argnums=(0,), devices=self.devices)
      self._eval = jax.pmap(eval_step, axis_name=AXIS, devices=self.devices)
      self._place = jax.pmap(lambda tree: tree, axis_name=AXIS, devices=self.devices)
    elif parallel == "shard_map":
      self.mesh = Mesh(np.asarray(self.devices), (AXIS,))
      self._replicated = NamedSharding(self.mesh, P())
      self._sharded = NamedSharding(self.mesh, P(AXIS))

      def train_one(state, batch):
        return train_step(state, jax.tree.map(lambda v: v[0], batch))

      def eval_one(state, batch):
        return eval_step(state, jax.tree.map(lambda v: v[0], batch))[None]

      self._train = jax.jit(jax.shard_map(train_one, mesh=self.mesh, in_specs=(P(), P(AXIS)),
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
    if self.parallel == "pmap":
      return batch
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self._sharded, np.asarray(x)), batch)

  def host_state(self, state):
    if self.parallel == "pmap":
      return jax.tree.map(lambda x: np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x[0])
                          .reshape(x.shape[1:]), state)
    return ckpt_lib.to_numpy_tree(state)

  def train_step(self, state, batch):
    return self._train(state, self.put_batch(batch))

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


def metrics_to_host(metrics) -> dict:
  """One device's copy of the (replicated) step metrics as Python scalars."""
  out = {}
  for key, value in metrics.items():
    if isinstance(value, jax.Array):
      value = value.addressable_data(0)
    out[key] = np.asarray(value).reshape(-1)[0].item()
  return out


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


# ---------------------------------------------------------------------------- data


@dataclasses.dataclass
class Data:
  """The source of a run and its splits (indices into the source)."""

  source: Any
  train: np.ndarray
  test: np.ndarray
  validation: np.ndarray
  labels: np.ndarray
  embryo_ids: np.ndarray
  patient_ids: np.ndarray


def open_source(config):
  """Builds the dataset on first use (process 0) and opens it."""
  from blastjax.data import dataset

  data_dir = config.data_dir or None
  options = dict(config.dataset_options)
  if jax.process_index() == 0:
    dataset.ensure_built(config.dataset, data_dir, manual_dir=config.manual_dir or None, **options)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("blastjax_dataset_built")
  return dataset.load_source(config.dataset, "all", data_dir, **options)


def make_data(config, source, train_idx=None, test_idx=None) -> Data:
  """The paper's split (or the given train/test indices) plus a validation split."""
  from blastjax.data import splits

  meta = source.metadata()
  labels = meta["labels"]
  if train_idx is None:
    train_idx, test_idx = splits.paper_split(labels, config.split_seed)
  validation = np.zeros(0, np.int64)
  if config.validation_fraction > 0:
    train_idx, validation = splits.validation_split(train_idx, labels, config.validation_fraction,
                                                    config.split_seed)
  return Data(source, np.asarray(train_idx), np.asarray(test_idx), validation, labels,
              meta["embryo_ids"], meta["patient_ids"])


def loader_options(config, train: bool) -> dict:
  sampling = config.sampling
  if not train:
    sampling = config.eval_sampling or ("uniform" if sampling == "clip" else sampling)
  return dict(sampling=sampling, num_frames=config.num_frames, image_size=config.image_size,
              focal_planes=config.focal_planes, rgb=config.rgb, segment_hours=config.segment_hours,
              clip_length=config.clip_length or None, window_stride=config.window_stride or None,
              normalization=config.normalization, worker_count=config.worker_count)


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


def local_device_count(config) -> int:
  """Devices of this process the run uses (the leading axis of every batch)."""
  return config.get("num_devices", 0) or jax.local_device_count()


def per_process_batch(global_batch: int) -> int:
  return global_batch // jax.process_count()


def reads_features(config) -> bool:
  from blastjax import models

  return models.get_spec(config.model).input_kind == "features"


def extraction_settings(config):
  """How the feature cache of a 'features' model samples and prepares frames."""
  from blastjax.data import feature_cache

  return feature_cache.ExtractionSettings(
      mode=config.sampling, num_frames=config.num_frames, clip_length=config.clip_length or config.num_frames,
      window_stride=config.window_stride or None, image_size=config.image_size,
      in_channels=3 if config.rgb else 1, batch_size=max(1, config.eval_batch_size))


def feature_cache_dir(config, workdir: str) -> str:
  return config.feature_cache_dir or os.path.join(workdir, "features")


def extractor_variables(config, settings, log: Callable[[str], None] = print):
  """The feature extractor's converted weights, or a seeded random init (smoke runs)."""
  from blastjax.data import feature_cache

  if config.feature_weights:
    from blastjax import weights
    variables, _ = weights.load_variables(config.feature_weights)
    return variables
  log(f"config.feature_weights is empty: {config.feature_extractor} features from a random init "
      f"(seed {config.seed}); fine for a smoke test, not for results")
  return feature_cache.init_extractor_variables(config.feature_extractor, {}, settings, config.seed)


def open_features(config, workdir: str, source, log: Callable[[str], None] = print):
  """The feature cache of `source` (built by process 0 on first use, rebuilt when the
  extractor, its weights, the settings or the data changed)."""
  from blastjax.data import feature_cache

  cache_dir = feature_cache_dir(config, workdir)
  settings = extraction_settings(config)
  variables = extractor_variables(config, settings, log)
  if jax.process_index() == 0:
    feature_cache.ensure_cache(source, cache_dir, variables=variables, model_name=config.feature_extractor,
                               settings=settings, progress=config.progress)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("blastjax_features_built")
  features = feature_cache.FeatureSource(cache_dir)
  if len(features) != len(source):
    raise ValueError(f"feature cache {cache_dir} holds {len(features)} embryos, the dataset {len(source)}: "
                     "delete the cache so that it is rebuilt")
  return features


def with_features(config, workdir: str, data: Data, log: Callable[[str], None] = print) -> Data:
  """`data` reading cached features instead of frames when the model takes features."""
  if not reads_features(config):
    return data
  return dataclasses.replace(data, source=open_features(config, workdir, data.source, log))


def make_loader(config, data: Data, indices, train: bool, observe_hours=None):
  """Training batches (shuffled, endless) or evaluation batches (one pass) of `indices`."""
  options = dict(indices=indices, batch_size=per_process_batch(config.batch_size if train else config.eval_batch_size),
                 shuffle=train, seed=config.seed, num_epochs=None if train else 1, drop_remainder=train,
                 observe_hours=observe_hours, num_devices=local_device_count(config))
  if reads_features(config):
    from blastjax.data import feature_pipeline
    return feature_pipeline.make_feature_loader(data.source, worker_count=config.worker_count, **options)
  from blastjax.data import pipeline
  return pipeline.make_loader(data.source, augment=config.augment and train, **options,
                              **loader_options(config, train=train))


def train_loader(config, data: Data):
  return make_loader(config, data, data.train, train=True)


def steps_per_epoch(config, data: Data) -> int:
  from blastjax.data import pipeline

  per_process = per_process_batch(config.batch_size)
  steps = pipeline.batches_per_epoch(data.train.size, per_process, True, jax.process_count())
  if steps == 0:
    raise ValueError(f"the training split has {data.train.size} embryos, fewer than one global batch "
                     f"(config.batch_size={config.batch_size}): lower batch_size or use more data")
  return steps


def predict(runner: Runner, state, config, data: Data, indices, observe_hours=None):
  """(example indices, P(blast)) over `indices`; sliding windows averaged per embryo."""
  from blastjax import evaluate

  loader = make_loader(config, data, indices, train=False, observe_hours=observe_hours)
  rows, probs, valid = [], [], []
  for batch in loader:
    probs.append(runner.eval_step(state, batch))
    rows.append(np.asarray(batch["example_index"]).reshape(-1))
    valid.append(np.asarray(batch["valid"]).reshape(-1))
  rows, probs, valid = map(np.concatenate, (rows, probs, valid))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    rows, probs, valid = (np.asarray(multihost_utils.process_allgather(a)).reshape(-1)
                          for a in (rows, probs, valid))
  rows, probs = rows[valid], probs[valid]
  return evaluate.average_by_example(rows, probs)


def evaluate_split(runner: Runner, state, config, data: Data, indices, early: bool = True):
  """Metrics, per-embryo prediction rows and the early-prediction curve of a split."""
  from blastjax import evaluate

  index, probs = predict(runner, state, config, data, indices)
  labels = data.labels[index]
  metrics = evaluate.classification_metrics(labels, probs)
  metrics["num_embryos"] = int(index.size)
  rows = [{"embryo_id": str(data.embryo_ids[i]), "patient_id": str(data.patient_ids[i]),
           "label": int(data.labels[i]), "prob_blast": float(p), "predicted": int(p >= 0.5)}
          for i, p in zip(index, probs)]
  curve = None
  if early and config.early_hours:
    by_hours = {}
    for hours in sorted(config.early_hours):
      cut_index, cut_probs = predict(runner, state, config, data, indices, observe_hours=float(hours))
      if not np.array_equal(cut_index, index):
        raise ValueError(f"early prediction at {hours} h lost embryos: the cut-off is before their first frame")
      by_hours[float(hours)] = cut_probs
      for row, p in zip(rows, cut_probs):
        row[f"prob_blast_{hours:g}h"] = float(p)
    curve = evaluate.early_prediction(labels, by_hours)
  return metrics, rows, curve


def write_data_info(workdir: str, source, data: Data) -> None:
  """What the model was trained on (focal planes, frame size, frames per embryo), so
  that predict can refuse input that does not match instead of answering wrongly."""
  import io
  from PIL import Image

  example = source[int(data.train[0])]
  width, height = Image.open(io.BytesIO(bytes(example["frames"][0, 0]))).size
  frames = [int(source.raw(int(i))["hours"].shape[0]) for i in data.train[:64]]
  info = {"focal_planes": [int(p) for p in np.asarray(example["focal_planes"]).reshape(-1)],
          "frame_size": [int(width), int(height)], "min_frames": int(min(frames)),
          "max_frames": int(max(frames)), "num_train": int(data.train.size)}
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "data_info.json.tmp"), "w") as f:
    json.dump(info, f, indent=2)
  os.replace(os.path.join(workdir, "data_info.json.tmp"), os.path.join(workdir, "data_info.json"))


# ---------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class Built:
  """A model ready to run: module, spec, runner, initial host state."""

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


def train(config, workdir: str, data: Data, log: Callable[[str], None] = print) -> tuple[Built, dict]:
  """Trains (resuming from workdir/checkpoints) and returns the model and the state to
  evaluate (best validation checkpoint or last, per config.eval_checkpoint)."""
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
  best = {"value": meta.get("best_value"), "step": meta.get("best_step")}
  start = int(host_state["step"])
  state = built.runner.put_state(host_state)
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
      batch = next(iterator)
      state, metrics = built.runner.train_step(state, batch)
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

  source = source if source is not None else open_source(config)
  data = make_data(config, source, train_idx, test_idx)
  if jax.process_index() == 0:
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

  if config is None:
    with open(os.path.join(workdir, "config.json")) as f:
      config = ml_collections.ConfigDict(json.load(f))
  data = with_features(config, workdir, make_data(config, open_source(config)), log)
  built, state = restore_for_evaluation(config, workdir, data, log)
  metrics, rows, curve = evaluate_split(built.runner, built.runner.put_state(state), config, data, data.test)
  metrics["step"] = int(state["step"])
  if jax.process_index() == 0:
    evaluate.write_evaluation(workdir, metrics, rows, early=curve)
  log(f"test ({metrics['num_embryos']} embryos): {evaluate.format_metrics(metrics)}")
  return metrics


def cross_validate(config, workdir: str, log: Callable[[str], None] = print) -> dict:
  """Patient-grouped k-fold: one run per fold in workdir/fold_<i>, then mean ± std.

  No patient is in both the training and the test side of a fold. Each fold resumes
  on its own, so a killed cross-validation continues where it stopped.
  """
  import ml_collections

  from blastjax import evaluate
  from blastjax.data import splits

  source = open_source(config)
  if reads_features(config) and not config.feature_cache_dir:
    config = ml_collections.ConfigDict(config.to_dict())
    config.feature_cache_dir = os.path.join(workdir, "features")  # one cache for every fold
  meta = source.metadata()
  folds = splits.patient_kfold(meta["labels"], meta["patient_ids"], config.num_folds, config.split_seed)
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
