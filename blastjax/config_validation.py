"""Checks every config field before any work: one clear line per problem.

`validate(config, num_devices)` returns the problems as strings (empty = valid);
`check(config, num_devices)` raises ConfigError holding all of them. Nothing here
touches the disk except to check that paths exist.
"""

from __future__ import annotations

import os
from typing import Optional

SAMPLINGS = ("last_frame", "uniform", "segments", "clip", "sliding_windows")
FOCAL_PLANES = ("center", "axis", "channels")
SCHEDULES = ("constant", "cosine", "plateau")
DTYPES = ("float32", "bfloat16")
PARALLEL = ("pmap", "shard_map")
SPLITS = ("paper", "dataset", "patient")
EVAL_CHECKPOINTS = ("best", "last")
BEST_METRICS = ("auc", "accuracy", "balanced_accuracy", "f1_macro")
NORMALIZATIONS = ("imagenet", "kinetics", "symmetric", "none")
# Fields holding a path: `~` is expanded in each (prepare).
PATH_FIELDS = ("data_dir", "manual_dir", "feature_cache_dir", "init_from", "feature_weights")
# dataset_options that only the synthetic simulator reads (the folder and gomez2022
# readers ignore them; they would only rename the build directory).
SIMULATOR_OPTIONS = ("num_embryos", "num_patients", "image_size", "interval_minutes", "horizon_hours",
                     "simulator_seed", "image_format")


class ConfigError(ValueError):
  """A config that cannot run; str() lists one problem per line."""

  def __init__(self, problems):
    self.problems = list(problems)
    super().__init__("\n".join(self.problems))


def default_config():
  """Every config field with its default; blastjax.config_presets builds the paper's setups on it."""
  import ml_collections

  c = ml_collections.ConfigDict()
  c.model = ""
  c.model_kwargs = ml_collections.ConfigDict()
  c.dataset = "synthetic"
  c.dataset_options = ml_collections.ConfigDict()
  c.data_dir = ""                 # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
  c.manual_dir = ""               # the folder read by dataset='folder' / 'gomez2022'
  c.batch_size = 32               # global, over every device of every process
  c.eval_batch_size = 32
  c.learning_rate = 1e-3
  c.weight_decay = 1e-5
  c.num_epochs = 500
  c.num_steps = 0                 # > 0 overrides num_epochs
  c.image_size = 400
  c.num_frames = 1
  c.sampling = "last_frame"
  c.eval_sampling = ""            # '' = sampling without randomness; 'sliding_windows' for clips
  c.clip_length = 0               # frames per clip ('clip' / 'sliding_windows'); 0 = num_frames
  c.window_stride = 0             # sliding-window stride; 0 = clip_length (non-overlapping windows)
  c.segment_hours = 6.0
  c.focal_planes = "center"
  c.rgb = True
  c.normalization = "imagenet"
  c.augment = True
  c.dtype = "float32"
  c.parallel = "pmap"
  c.num_devices = 0               # devices per process to use; 0 = all of them
  c.seed = 0
  c.split = "paper"               # 'paper' half/half by embryo, 'patient' half/half by patient, 'dataset' the
                                  # dataset's split column; --mode cross_validation uses patient folds
  c.split_seed = 0
  c.num_folds = 5
  c.validation_fraction = 0.1     # of the training embryos; 0 = no validation (no best checkpoint)
  c.schedule = "constant"
  c.warmup_steps = 0
  c.plateau_factor = 0.1
  c.plateau_patience = 10         # epochs without improvement of the epoch-mean training loss
  c.grad_clip_norm = 0.0          # 0 = no clipping
  c.class_weights = "none"        # 'none', 'balanced' or 'w0,w1'
  c.aux_loss_weight = 0.4         # Inception-v3 auxiliary head, when the model returns one
  c.feature_extractor = "i3d"     # input kind 'features': the video model run once per embryo
  c.feature_weights = ""          # its converted weights (blastjax.weights); '' = seeded random init
  c.feature_cache_dir = ""        # '' = <workdir>/features
  c.init_from = ""                # converted pretrained weights (blastjax.weights.load_variables)
  c.freeze = ""                   # freeze every parameter created before this module name
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3
  c.eval_every_steps = 500        # validation (if any) and best checkpoint
  c.best_metric = "auc"
  c.eval_checkpoint = "best"      # 'best' (falls back to last without validation) or 'last'
  c.early_hours = ()              # hours-observed cut-offs for the early-prediction curve
  c.log_every_steps = 10
  c.skip_nonfinite = False
  c.multihost = False             # call jax.distributed.initialize()
  c.worker_count = 0
  c.prefetch_to_device = 2        # batches placed on the devices ahead of the step
  c.progress = True
  return c


def _type_problems(config) -> list:
  problems = []
  reference = default_config()
  for key in sorted(config.keys()):
    if key not in reference:
      problems.append(f"config field {key!r} is unknown; known fields: {', '.join(sorted(reference.keys()))}")
      continue
    want, value = reference[key], config[key]
    if key in ("model_kwargs", "dataset_options"):
      if not hasattr(value, "keys"):
        problems.append(f"config.{key}={value!r}: expected a dict of keyword arguments")
      continue
    if isinstance(want, bool):
      ok = isinstance(value, bool)
    elif isinstance(want, int):
      ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(want, float):
      ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(want, str):
      ok = isinstance(value, str)
    else:
      ok = isinstance(value, (tuple, list))
    if not ok:
      problems.append(f"config.{key}={value!r}: expected {type(want).__name__}, got {type(value).__name__}")
  return problems


def _range_problems(c) -> list:
  problems = []

  def need(condition, message):
    if not condition:
      problems.append(message)

  def one_of(key, choices):
    need(c[key] in choices, f"config.{key}={c[key]!r}: choose one of {', '.join(choices)}")

  for key in ("batch_size", "eval_batch_size", "image_size", "num_frames", "keep_checkpoints",
              "checkpoint_every_steps", "eval_every_steps", "log_every_steps", "num_folds"):
    need(c[key] > 0, f"config.{key}={c[key]}: must be positive")
  for key in ("num_steps", "clip_length", "window_stride", "warmup_steps", "worker_count", "seed",
              "split_seed", "num_devices", "prefetch_to_device"):
    need(c[key] >= 0, f"config.{key}={c[key]}: must be >= 0")
  need(c.num_steps > 0 or c.num_epochs > 0, f"config.num_epochs={c.num_epochs} with num_steps=0: one must be positive")
  need(c.learning_rate > 0, f"config.learning_rate={c.learning_rate}: must be positive")
  need(c.weight_decay >= 0, f"config.weight_decay={c.weight_decay}: must be >= 0")
  need(c.grad_clip_norm >= 0, f"config.grad_clip_norm={c.grad_clip_norm}: must be >= 0 (0 = off)")
  need(0 <= c.validation_fraction < 1, f"config.validation_fraction={c.validation_fraction}: must be in [0, 1)")
  need(0 < c.plateau_factor < 1, f"config.plateau_factor={c.plateau_factor}: must be in (0, 1)")
  need(c.plateau_patience >= 1, f"config.plateau_patience={c.plateau_patience}: must be >= 1")
  need(c.segment_hours > 0, f"config.segment_hours={c.segment_hours}: must be positive")
  need(c.aux_loss_weight >= 0, f"config.aux_loss_weight={c.aux_loss_weight}: must be >= 0")
  one_of("sampling", SAMPLINGS)
  if c.eval_sampling:
    one_of("eval_sampling", SAMPLINGS)
  one_of("focal_planes", FOCAL_PLANES)
  one_of("schedule", SCHEDULES)
  one_of("dtype", DTYPES)
  one_of("parallel", PARALLEL)
  one_of("split", SPLITS)
  one_of("eval_checkpoint", EVAL_CHECKPOINTS)
  one_of("best_metric", BEST_METRICS)
  one_of("normalization", NORMALIZATIONS)
  need(not (c.rgb and c.focal_planes == "channels"),
       "config.rgb=True with focal_planes='channels': channels already hold the planes; set rgb=False")
  need(all(isinstance(h, (int, float)) and h > 0 for h in c.early_hours),
       f"config.early_hours={tuple(c.early_hours)}: every cut-off must be a positive number of hours")
  if c.class_weights not in ("none", "balanced"):
    try:
      weights = [float(w) for w in c.class_weights.split(",")]
      need(len(weights) == 2 and all(w > 0 for w in weights),
           f"config.class_weights={c.class_weights!r}: give two positive weights 'w0,w1'")
    except ValueError:
      problems.append(f"config.class_weights={c.class_weights!r}: use 'none', 'balanced' or 'w0,w1'")
  if c.init_from:
    need(os.path.exists(c.init_from), f"config.init_from={c.init_from!r}: no such file or directory")
  if c.manual_dir:
    need(os.path.isdir(c.manual_dir), f"config.manual_dir={c.manual_dir!r}: not a directory")
  return problems


def _model_problems(c) -> list:
  from blastjax import models

  try:
    spec = models.get_spec(c.model)
  except ValueError as error:
    return [f"config.model: {error}"]
  problems = []
  kind = spec.input_kind
  sized = spec
  if kind == "features":  # the frames go through the extractor
    try:
      sized = models.get_spec(c.feature_extractor)
    except ValueError:
      pass  # named by _feature_problems
  if c.image_size < sized.min_image_size:
    problems.append(f"config.image_size={c.image_size}: model {sized.name!r} needs at least "
                    f"{sized.min_image_size} pixels")
  if kind == "image" and c.sampling != "last_frame":
    problems.append(f"config.sampling={c.sampling!r}: model {c.model!r} takes single images; use 'last_frame'")
  if kind in ("video", "video_focal", "features") and c.sampling == "last_frame":
    problems.append(f"config.sampling='last_frame': model {c.model!r} takes sequences "
                    "(use 'uniform', 'segments' or 'clip')")
  if kind == "video_focal" and c.focal_planes != "axis":
    problems.append(f"config.focal_planes={c.focal_planes!r}: model {c.model!r} takes focal planes "
                    "as their own axis; set focal_planes='axis'")
  if kind in ("image", "video") and c.focal_planes == "axis":
    problems.append(f"config.focal_planes='axis': model {c.model!r} takes [.., H, W, C]; use 'center' or 'channels'")
  if kind == "features":
    problems += _feature_problems(c)
  if spec.per_step and c.eval_sampling == "sliding_windows":
    problems.append(f"config.eval_sampling='sliding_windows': model {c.model!r} predicts per step; "
                    "evaluate it on whole sequences")
  if c.sampling == "clip" and (c.eval_sampling or c.sampling) == "clip":
    problems.append("config.sampling='clip' needs eval_sampling='sliding_windows' (or 'uniform') "
                    "to cover the whole sequence at evaluation")
  return problems


def _feature_problems(c) -> list:
  """A features model: the cache is extracted by `feature_extractor` from the frames."""
  from blastjax import models

  problems = []
  if c.sampling not in ("uniform", "sliding_windows"):
    problems.append(f"config.sampling={c.sampling!r}: model {c.model!r} reads features cached with "
                    "'uniform' (one clip per embryo) or 'sliding_windows' (one step per window)")
  if c.eval_sampling not in ("", c.sampling):
    problems.append(f"config.eval_sampling={c.eval_sampling!r}: model {c.model!r} is evaluated on the "
                    "same feature cache it trains on; leave eval_sampling empty")
  if c.sampling == "uniform" and c.early_hours:
    problems.append(f"config.early_hours={tuple(c.early_hours)} with sampling='uniform': model {c.model!r} "
                    "reads features extracted from one clip over the whole sequence, whose temporal "
                    "kernels reach frames after any cut-off, so early prediction would see the future; "
                    "use sampling='sliding_windows' (each step sees only its window) or early_hours=()")
  if c.focal_planes != "center":
    problems.append(f"config.focal_planes={c.focal_planes!r}: features are extracted from the central "
                    "focal plane; use 'center'")
  try:
    if models.get_spec(c.feature_extractor).input_kind != "video":
      problems.append(f"config.feature_extractor={c.feature_extractor!r}: not a video model")
  except ValueError as error:
    problems.append(f"config.feature_extractor: {error}")
  if c.feature_weights and not os.path.exists(c.feature_weights):
    problems.append(f"config.feature_weights={c.feature_weights!r}: no such file or directory")
  return problems


def expand_path(path):
  """`path` with `~` expanded (relative paths stay relative); non-strings unchanged."""
  return os.path.expanduser(path) if isinstance(path, str) else path


def prepare(config):
  """The config a run uses, as a copy: `~` expanded in every path field, and the
  simulator's dataset_options dropped for datasets other than 'synthetic'.

  The second is what lets a `:smoke` config, whose dataset_options size the simulator,
  read the user's data with --config.dataset=folder (overrides are applied after
  get_config, so the variant cannot know the dataset). Idempotent; blastjax.main, the
  training API (blastjax.train) and validate apply it.
  """
  import ml_collections

  c = ml_collections.ConfigDict(config.to_dict())
  for key in PATH_FIELDS:
    if key in c:
      c[key] = expand_path(c[key])
  options = c.get("dataset_options")
  if c.get("dataset") != "synthetic" and hasattr(options, "keys"):
    c.dataset_options = {k: v for k, v in options.items() if k not in SIMULATOR_OPTIONS}
  return c


def validate(config, num_devices: Optional[int] = None) -> list:
  """Every problem of `config` (as `prepare` leaves it), one line each (empty when it can run)."""
  problems = _type_problems(config)
  if problems:
    return problems
  config = prepare(config)
  problems = _range_problems(config) + _model_problems(config)
  if num_devices:
    for key in ("batch_size", "eval_batch_size"):
      if config[key] > 0 and config[key] % num_devices:
        problems.append(f"config.{key}={config[key]} is not divisible by the {num_devices} devices: "
                        f"use a multiple of {num_devices}")
  return problems


def check(config, num_devices: Optional[int] = None) -> None:
  problems = validate(config, num_devices)
  if problems:
    raise ConfigError(problems)
