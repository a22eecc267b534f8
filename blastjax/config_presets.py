"""Shared defaults of every config file in configs/: the paper's setup (Table 2 of
cleavage_stage_blastocyst_dataset.txt) and the `:smoke` variant.

Single-frame models: AdamW lr 1e-3, weight decay 1e-5, batch 32, 400x400, 500 epochs.
Multi-frame models: the same optimiser, batch 16, 32 frames, 224x224, 100 epochs.
The split is the paper's class-balanced half/half split by embryo.

A model config is `get_config(arg=None)` calling `single_frame(...)` or
`multi_frame(...)` and `finish(config, arg)`; `arg='smoke'` shrinks everything so the
run finishes in a few minutes on a laptop CPU. It lives in the package (not beside the
configs) so that a config file loads from any working directory and from an installed
blastjax. Field meanings: docs/training.md.
"""

import ml_collections

from blastjax.config_validation import default_config

VARIANTS = ("", "smoke")
# The simulator sizes of the smoke variant. They shape only the synthetic dataset: a
# smoke config run with --config.dataset=folder reads the user's data unchanged
# (config_validation.prepare drops simulator options for other datasets).
SMOKE_DATASET = {"num_embryos": 96, "num_patients": 24, "image_size": 72,
                 "interval_minutes": 120.0, "horizon_hours": 80.0}


class ConfigArgumentError(ValueError):
  """`get_config(arg)` got an argument it has no variant for."""


def base() -> ml_collections.ConfigDict:
  """Every field with its default (defined in blastjax.config_validation)."""
  return default_config()


def single_frame(model: str, **overrides) -> ml_collections.ConfigDict:
  c = base()
  c.model = model
  c.update(overrides)
  return c


def multi_frame(model: str, **overrides) -> ml_collections.ConfigDict:
  c = base()
  c.model = model
  c.batch_size = 16
  c.eval_batch_size = 16
  c.num_epochs = 100
  c.image_size = 224
  c.num_frames = 32
  c.sampling = "uniform"
  c.early_hours = (30.0, 40.0, 50.0, 60.0, 70.0, 80.0)
  c.update(overrides)
  return c


def finish(c: ml_collections.ConfigDict, arg=None, smoke_image_size: int = 0,
           smoke_frames: int = 8, smoke_steps: int = 0, **smoke_overrides) -> ml_collections.ConfigDict:
  """Applies the variant `arg` ('' or None: the paper's setup; 'smoke': tiny).

  Smoke sizes: single-frame models 64 px, batch 16, 120 steps; multi-frame models 32 px,
  8 frames, batch 8, 150 steps; class-balanced loss and a cosine schedule (60 steps at
  48 px with a constant rate ranked embryos, AUC 0.75, but predicted the majority class;
  150 steps at 32 px reach accuracy 0.85, AUC 0.94 for r2p1d: docs/training.md).
  """
  if arg not in (None,) + VARIANTS:
    raise ConfigArgumentError(f"config argument {arg!r} unknown; choose none (the paper's setup) or "
                              "'smoke' (e.g. configs/r2p1d.py:smoke)")
  if arg == "smoke":
    c.dataset = "synthetic"
    c.dataset_options = ml_collections.ConfigDict(dict(SMOKE_DATASET))
    single = c.sampling == "last_frame"
    c.batch_size = 16 if single else 8
    c.eval_batch_size = c.batch_size
    c.image_size = smoke_image_size or (64 if single else 32)
    c.num_frames = 1 if single else smoke_frames
    if c.clip_length:
      c.clip_length = min(c.clip_length, c.num_frames)
    c.num_steps = smoke_steps or (120 if single else 150)
    c.class_weights = "balanced"
    c.schedule = "cosine"
    c.checkpoint_every_steps = c.num_steps // 3 if single else c.num_steps // 2
    c.eval_every_steps = c.checkpoint_every_steps
    c.keep_checkpoints = 2
    # The smoke validation split has ~5 embryos: too few to pick a checkpoint by (it
    # picked a step-30 model predicting one class); test the last one instead.
    c.eval_checkpoint = "last"
    c.log_every_steps = 5
    c.early_hours = (40.0, 60.0, 80.0) if single else (30.0, 45.0, 60.0, 80.0)
    c.update(smoke_overrides)
  return c
