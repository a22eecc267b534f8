"""The optimizer of a run: AdamW with clipping, a learning-rate schedule, reduce-on-plateau
and freezing, as one optax transform built from the config."""

from __future__ import annotations

import optax
from flax import traverse_util


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
