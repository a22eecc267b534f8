"""The optimizer of a run (AdamW, Adam or SGD with clipping, a learning-rate schedule,
kernel L2, freezing) as one optax transform built from the config, and the host-side
reduce-on-plateau tracker (`Plateau`) that the training loop steps with the validation
loss.

Weight decay means what each paper means by it:

- `optimizer='adamw'`: decoupled (torch.optim.AdamW, optax.adamw): the update gains
  `lr * weight_decay * param`, outside Adam's statistics.
- `optimizer='adam'` / `'sgd'`: coupled L2 as torch.optim.Adam / torch.optim.SGD with
  `weight_decay`: the gradient gains `weight_decay * param` before the optimizer's
  statistics (Hara and AMSNet use SGD this way).
- `kernel_l2=λ` (any optimizer): Keras' `kernel_regularizer=l2(λ)`: the loss gains
  `λ * Σ w²` over the leaves named 'kernel', so their gradient gains `2 λ w` (biases and
  BatchNorm parameters get nothing). It is added before clipping, as a loss term is.

The chain is: kernel L2 -> global-norm clipping -> the optimizer (coupled decay first,
then its statistics, then the scheduled learning rate) -> the plateau scale.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from blastjax.config_validation import OPTIMIZERS


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
  """The scheduled rate at optimizer count c (0 for the first step); `plateau` is the
  warmup-then-constant rate, scaled by the plateau tracker on top."""
  lr = config.learning_rate
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, config.warmup_steps, max(total_steps, config.warmup_steps + 1))
  if config.warmup_steps:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, config.warmup_steps), optax.constant_schedule(lr)],
                                [config.warmup_steps])
  return optax.constant_schedule(lr)


# ---------------------------------------------------------------------------- pieces


def kernel_mask(params):
  """True on every leaf named 'kernel' (Conv / Dense weights), False elsewhere."""
  return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def kernel_l2(l2: float) -> optax.GradientTransformation:
  """The gradient of `l2 * Σ kernel²` added to the gradient (Keras kernel_regularizer)."""
  return optax.add_decayed_weights(2.0 * l2, mask=kernel_mask)


class PlateauScaleState(NamedTuple):
  """The learning-rate factor of reduce-on-plateau, a float32 scalar the host sets."""
  scale: jax.Array


def plateau_scale() -> optax.GradientTransformation:
  """Multiplies the updates by the scale held in its state.

  The step never changes the scale; the training loop sets it (`set_plateau_scale`)
  after a validation, so a reduction needs no recompilation, and it is checkpointed
  with the optimizer state. Last in the chain, it scales the whole update as a lower
  learning rate would (AdamW's decoupled decay included, as torch's lr does).
  """

  def init(params):
    del params
    return PlateauScaleState(jnp.ones([], jnp.float32))

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: u * state.scale.astype(u.dtype), updates), state

  return optax.GradientTransformation(init, update)


def _is_scale(node) -> bool:
  return isinstance(node, PlateauScaleState)


def _like(old, value: float):
  """`value` as an array of `old`'s shape, dtype and placement (replicated devices)."""
  host = np.full(np.shape(old), value, getattr(old, "dtype", np.float32))
  if isinstance(old, jax.Array):
    return jax.make_array_from_callback(old.shape, old.sharding, lambda index: host[index])
  return host


def set_plateau_scale(opt_state, scale: float):
  """`opt_state` with every PlateauScaleState set to `scale` (host or placed state)."""
  return jax.tree.map(lambda node: PlateauScaleState(_like(node.scale, scale)) if _is_scale(node) else node,
                      opt_state, is_leaf=_is_scale)


def plateau_scales(opt_state) -> list:
  """The scales held by `opt_state` (one per PlateauScaleState; empty without plateau)."""
  nodes = jax.tree.leaves(opt_state, is_leaf=_is_scale)
  return [float(np.asarray(jax.device_get(n.scale)).reshape(-1)[0]) for n in nodes if _is_scale(n)]


def base_optimizer(config, learning_rate) -> optax.GradientTransformation:
  """`config.optimizer` with its weight decay (decoupled for adamw, coupled L2 otherwise)."""
  if config.optimizer == "adamw":
    return optax.adamw(learning_rate, weight_decay=config.weight_decay)
  coupled = [optax.add_decayed_weights(config.weight_decay)] if config.weight_decay else []
  if config.optimizer == "adam":
    return optax.chain(*coupled, optax.adam(learning_rate))
  if config.optimizer == "sgd":
    momentum = config.momentum if config.momentum > 0 else None
    return optax.chain(*coupled, optax.sgd(learning_rate, momentum=momentum, nesterov=config.nesterov))
  raise ValueError(f"config.optimizer={config.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")


def make_optimizer(config, params, total_steps: int, steps_per_epoch: int = 0):
  """The run's optimizer as one optax transform (see the module docstring for its order).

  With `schedule='plateau'` the chain ends in `plateau_scale()`, whose scale the loop
  sets from a `Plateau` tracker. `steps_per_epoch` is not used (the plateau counts
  validations); it stays for callers.
  """
  del steps_per_epoch
  parts = []
  if config.kernel_l2 > 0:
    parts.append(kernel_l2(config.kernel_l2))
  if config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  parts.append(base_optimizer(config, learning_rate_schedule(config, total_steps)))
  if config.schedule == "plateau":
    parts.append(plateau_scale())
  tx = parts[0] if len(parts) == 1 else optax.chain(*parts)
  if config.freeze:
    tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()},
                               freeze_labels(params, config.freeze))
  return tx


# ---------------------------------------------------------------------------- plateau


class Plateau:
  """Reduce-on-plateau on the host: torch.optim.lr_scheduler.ReduceLROnPlateau(
  mode='min', factor, patience, threshold=1e-4, threshold_mode='rel', cooldown=0,
  min_lr=0, eps=1e-8), stepped once per validation with the validation loss.

  `scale` is the factor on the scheduled learning rate (1, then factor, factor², ...).
  A value improves when it is below best * (1 - threshold); after more than `patience`
  steps without improvement the scale is multiplied by `factor` (unless the rate
  `learning_rate * scale` would drop by no more than eps, as torch). Its state is a small
  JSON-able dict (`state_dict` / `load_state_dict`), checkpointed in the loop's meta.
  """

  def __init__(self, factor: float, patience: int, learning_rate: float, threshold: float = 1e-4,
               cooldown: int = 0, eps: float = 1e-8):
    self.factor, self.patience, self.learning_rate = float(factor), int(patience), float(learning_rate)
    self.threshold, self.cooldown, self.eps = float(threshold), int(cooldown), float(eps)
    self.best, self.bad_epochs, self.cooldown_counter, self.scale = math.inf, 0, 0, 1.0

  @classmethod
  def for_config(cls, config):
    """The tracker of `config.schedule='plateau'`, None for other schedules."""
    if config.schedule != "plateau":
      return None
    return cls(config.plateau_factor, config.plateau_patience, config.learning_rate)

  def step(self, value: float) -> bool:
    """One validation's loss; True when the scale was reduced."""
    value = float(value)
    if value < self.best * (1.0 - self.threshold):
      self.best, self.bad_epochs = value, 0
    else:
      self.bad_epochs += 1
    if self.cooldown_counter > 0:
      self.cooldown_counter -= 1
      self.bad_epochs = 0
    if self.bad_epochs <= self.patience:
      return False
    self.cooldown_counter, self.bad_epochs = self.cooldown, 0
    old = self.learning_rate * self.scale
    if old - old * self.factor <= self.eps:
      return False
    self.scale *= self.factor
    return True

  def state_dict(self) -> dict:
    return {"best": None if math.isinf(self.best) else self.best, "bad_epochs": self.bad_epochs,
            "cooldown_counter": self.cooldown_counter, "scale": self.scale}

  def load_state_dict(self, state: dict) -> None:
    best = state["best"]
    self.best = math.inf if best is None else float(best)
    self.bad_epochs, self.cooldown_counter = int(state["bad_epochs"]), int(state["cooldown_counter"])
    self.scale = float(state["scale"])
