"""The train state and the one-device train and eval steps (blastjax.parallel runs them on every device).

The step is written once, as the work of one device, with its collectives over the
axis 'batch' (DESIGN.md): the loss is the class-weighted mean over every valid row
(and every unpadded step of per-step models) of the *global* batch, so gradients
averaged with `lax.pmean` equal the gradients of the one-device step on the same
global batch. BatchNorm statistics are computed per device (as torch DDP without
SyncBN) and `batch_stats` averaged over devices after each step.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

# The model input/output contract lives with the model spec; the step reads it by
# (input_kind, per_step), so it needs no spec object (benchmarks build StepConfigs).
from blastjax import config_validation, models, optim, pretrained
from blastjax.models.registry import blast_probability, final_logits, model_inputs, split_output
from blastjax.parallel import AXIS, Runner, selected_devices


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
  kwargs.setdefault("num_classes", num_outputs(config))
  return models.create(config.model, **kwargs), spec


FEATURE_DIMS = {"i3d": 1024}  # per-step feature width of the feature extractors


def count_parameters(config) -> int:
  """The parameter count of `config`'s model at its image size and channels (counts of
  ViTs depend on the image size; frames and focal planes share weights), by
  jax.eval_shape: nothing is computed."""
  model, spec = create_model(config)
  size, channels, steps = config.image_size, 3 if config.rgb else 1, 2
  shapes = {"image": (1, size, size, channels), "video": (1, steps, size, size, channels),
            "video_focal": (1, steps, int(config.model_kwargs.get("num_planes", 3)), size, size, 1),
            "features": (1, steps, FEATURE_DIMS.get(config.feature_extractor, 1024))}
  x = jnp.zeros(shapes[spec.input_kind])
  mask = None if spec.input_kind == "image" else jnp.zeros((1, steps), bool)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, mask=mask))
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables["params"]))


# Losses of one output (P(blast) = sigmoid(logit)); 'cross_entropy' has two (softmax).
ONE_OUTPUT_LOSSES = config_validation.ONE_OUTPUT_LOSSES


def num_outputs(config) -> int:
  """The head width `config.loss` needs: 1 for a sigmoid loss, else 2 (a config.json
  written before `loss` existed reads as cross-entropy)."""
  return 1 if config.get("loss", "cross_entropy") in ONE_OUTPUT_LOSSES else 2


def example_loss(logits, targets, loss: str = "cross_entropy"):
  """Unweighted loss of each row (or step): logits [..., C] float32, integer targets [...].

  'weighted_mse' is (sigmoid(z) - y)^2, the seizure paper's Keras loss='mse' on its
  sigmoid unit; its class weights are the step's row weights, as Keras's class_weight.
  """
  if loss == "cross_entropy":
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  z, y = logits[..., 0], targets.astype(jnp.float32)
  if loss == "bce":
    return optax.sigmoid_binary_cross_entropy(z, y)
  if loss == "weighted_mse":
    return jnp.square(jax.nn.sigmoid(z) - y)
  raise ValueError(f"loss={loss!r}; expected cross_entropy, weighted_mse or bce")


def predicted_class(logits):
  """Class 0/1 of [B, C] logits: argmax, or logit >= 0 (P(blast) >= 0.5) for one output."""
  if logits.shape[-1] == 1:
    return (logits[..., 0] >= 0).astype(jnp.int32)
  return jnp.argmax(logits, -1)


@dataclasses.dataclass(frozen=True)
class StepConfig:
  input_kind: str
  per_step: bool
  class_weights: tuple = (1.0, 1.0)
  aux_loss_weight: float = 0.4
  skip_nonfinite: bool = False
  loss: str = "cross_entropy"


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
      ce = example_loss(logits.astype(jnp.float32), targets, sc.loss)
      loss_sum = (ce * weights).sum()
      if aux is not None:
        aux_ce = example_loss(aux.astype(jnp.float32), targets, sc.loss)
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
    param_updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], param_updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = {"step": state["step"] + 1, "params": params, "batch_stats": batch_stats,
           "opt_state": opt_state, "rng": state["rng"]}
    if sc.skip_nonfinite:
      kept = {k: v for k, v in state.items() if k != "step"}
      changed = {k: v for k, v in new.items() if k != "step"}
      merged = jax.tree.map(lambda a, b: jnp.where(finite, a, b), changed, kept)
      new = {"step": new["step"], **merged}
    preds = predicted_class(final_logits(logits, mask if sc.per_step else None, sc.per_step))
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
  variables = pretrained.init_variables(config, model, spec, sample_batch)
  tx = optim.make_optimizer(config, variables["params"], total_steps, epoch_steps)
  sc = StepConfig(input_kind=spec.input_kind, per_step=spec.per_step,
                  class_weights=tuple(class_weight_vector(config, train_labels).tolist()),
                  aux_loss_weight=config.aux_loss_weight, skip_nonfinite=config.skip_nonfinite,
                  loss=config.get("loss", "cross_entropy"))
  runner = Runner(make_train_step(model, tx, sc), make_eval_step(model, sc), config.parallel,
                  devices=selected_devices(config))
  return Built(model, spec, runner, init_state(model, tx, variables, config.seed), tx)
