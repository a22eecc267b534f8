"""Checks every config field before any work: one clear line per problem.

`validate(config, num_devices)` returns the problems as strings (empty = valid);
`check(config, num_devices)` raises ConfigError holding all of them. Nothing here
touches the disk except to check that paths exist.
"""

from __future__ import annotations

import ast
import os
from typing import Optional

SAMPLINGS = ("last_frame", "uniform", "segments", "clip", "sliding_windows")
FOCAL_PLANES = ("center", "axis", "channels")
SCHEDULES = ("constant", "cosine", "plateau")
OPTIMIZERS = ("adamw", "adam", "sgd")
DTYPES = ("float32", "bfloat16")
PARALLEL = ("pmap", "shard_map")
SPLITS = ("paper", "dataset", "patient")
EVAL_CHECKPOINTS = ("best", "last")
BEST_METRICS = ("auc", "accuracy", "balanced_accuracy", "f1_macro")
NORMALIZATIONS = ("imagenet", "kinetics", "symmetric", "none")
# 'cross_entropy' trains a 2-output softmax head; the others one sigmoid output.
LOSSES = ("cross_entropy", "weighted_mse", "bce")
ONE_OUTPUT_LOSSES = ("weighted_mse", "bce")
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


def augmentation_section(preset: str = "benchmark"):
  """`config.augmentation`: a preset of blastjax.data.augment.PRESETS and every
  AugmentConfig field as a typed placeholder (None = the preset's value).

  Typed placeholders because ml_collections refuses a command-line override of a plain
  None field; with them `--config.augmentation.hflip_prob=0` parses as a float, and a
  field left None follows the preset, so `--config.augmentation.preset=hara` alone
  changes every field not set explicitly."""
  import ml_collections
  from ml_collections import config_dict

  from blastjax.data import augment

  section = ml_collections.ConfigDict()
  section.preset = preset
  for name, kind in augment.FIELD_TYPES.items():
    section[name] = config_dict.placeholder(kind)
  return section


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
  c.weight_decay = 1e-5           # adamw: decoupled; adam / sgd: coupled L2 (torch's weight_decay)
  c.optimizer = "adamw"           # 'adamw', 'adam' or 'sgd'
  c.momentum = 0.9                # sgd only; 0 = plain SGD
  c.nesterov = False              # sgd only; needs momentum > 0
  c.kernel_l2 = 0.0               # Keras l2(λ) on kernels: the loss gains λ·Σ kernel²
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
  c.augment = True                # False = no augmentation (preset 'none')
  c.augmentation = augmentation_section()  # preset + AugmentConfig overrides (docs/pipeline.md)
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
  c.plateau_patience = 10         # validations without improvement of the validation loss
  c.grad_clip_norm = 0.0          # 0 = no clipping
  c.class_weights = "none"        # 'none', 'balanced' or 'w0,w1'
  c.aux_loss_weight = 0.4         # Inception-v3 auxiliary head, when the model returns one
  c.loss = "cross_entropy"        # or one sigmoid output: 'weighted_mse' (seizure paper), 'bce'
  c.feature_extractor = "i3d"     # input kind 'features': the video model run once per embryo
  c.feature_weights = ""          # its converted weights (blastjax.weights); '' = seeded random init
  c.feature_cache_dir = ""        # '' = <workdir>/features
  c.init_from = ""                # converted pretrained weights (blastjax.weights.load_variables)
  c.init_skip = ()                # glob patterns ('params/fc/*',) of leaves init_from leaves fresh
  c.freeze = ""                   # freeze every parameter created before this module name
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3
  c.eval_every_steps = 500        # validation (if any) and best checkpoint; 0 = once per epoch
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
    if key == "augmentation":  # its fields: _augmentation_problems
      if not hasattr(value, "keys"):
        problems.append(f"config.augmentation={value!r}: expected a dict (a preset and AugmentConfig fields)")
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
              "checkpoint_every_steps", "log_every_steps", "num_folds"):
    need(c[key] > 0, f"config.{key}={c[key]}: must be positive")
  for key in ("num_steps", "clip_length", "window_stride", "warmup_steps", "worker_count", "seed",
              "split_seed", "num_devices", "prefetch_to_device", "eval_every_steps"):
    need(c[key] >= 0, f"config.{key}={c[key]}: must be >= 0")
  need(c.num_steps > 0 or c.num_epochs > 0, f"config.num_epochs={c.num_epochs} with num_steps=0: one must be positive")
  need(c.learning_rate > 0, f"config.learning_rate={c.learning_rate}: must be positive")
  need(c.weight_decay >= 0, f"config.weight_decay={c.weight_decay}: must be >= 0")
  need(c.grad_clip_norm >= 0, f"config.grad_clip_norm={c.grad_clip_norm}: must be >= 0 (0 = off)")
  need(0 <= c.validation_fraction < 1, f"config.validation_fraction={c.validation_fraction}: must be in [0, 1)")
  need(0 < c.plateau_factor < 1, f"config.plateau_factor={c.plateau_factor}: must be in (0, 1)")
  need(c.plateau_patience >= 1, f"config.plateau_patience={c.plateau_patience}: must be >= 1")
  problems += _optimizer_problems(c)
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
  need(all(isinstance(p, str) and p for p in c.init_skip),
       f"config.init_skip={tuple(c.init_skip)!r}: give glob patterns over '/'-joined variable "
       "paths, as non-empty strings, e.g. ('params/fc/*',)")
  if c.manual_dir:
    need(os.path.isdir(c.manual_dir), f"config.manual_dir={c.manual_dir!r}: not a directory")
  return problems


def _optimizer_problems(c) -> list:
  """optimizer, momentum, nesterov, kernel_l2, and plateau's need of a validation split."""
  problems = []
  if c.optimizer not in OPTIMIZERS:
    problems.append(f"config.optimizer={c.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
  if not 0 <= c.momentum < 1:
    problems.append(f"config.momentum={c.momentum}: must be in [0, 1)")
  if c.nesterov and c.optimizer != "sgd":
    problems.append(f"config.nesterov=True: only optimizer='sgd' uses it (optimizer={c.optimizer!r}); "
                    "set nesterov=False or optimizer='sgd'")
  elif c.nesterov and c.momentum <= 0:
    problems.append(f"config.nesterov=True needs momentum > 0 (momentum={c.momentum}); set momentum or nesterov=False")
  if c.kernel_l2 < 0:
    problems.append(f"config.kernel_l2={c.kernel_l2}: must be >= 0 (0 = off)")
  if c.schedule == "plateau" and c.validation_fraction <= 0 and c.split != "dataset":
    problems.append("config.schedule='plateau' with validation_fraction=0: reduce-on-plateau follows the "
                    "validation loss; set validation_fraction > 0 or another schedule")
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
  problems += _loss_problems(c)
  if not problems:
    problems += _model_kwargs_problems(c)
  if spec.per_step and c.eval_sampling == "sliding_windows":
    problems.append(f"config.eval_sampling='sliding_windows': model {c.model!r} predicts per step; "
                    "evaluate it on whole sequences")
  if c.sampling == "clip" and (c.eval_sampling or c.sampling) == "clip":
    problems.append("config.sampling='clip' needs eval_sampling='sliding_windows' (or 'uniform') "
                    "to cover the whole sequence at evaluation")
  return problems


def _model_kwargs_problems(c) -> list:
  """model_kwargs the model's builder does not take (today a TypeError at the first step)."""
  from blastjax import models

  kwargs = dict(c.model_kwargs)
  kwargs.setdefault("num_classes", 1 if c.loss in ONE_OUTPUT_LOSSES else 2)
  try:
    models.create(c.model, **kwargs)  # builds the module object only: no parameters
  except (TypeError, ValueError) as error:
    return [f"config.model_kwargs={dict(c.model_kwargs)!r}: model {c.model!r} refuses them ({error})"]
  return []


# Simulator options that count or measure something: they must be positive.
_POSITIVE_SIMULATOR_OPTIONS = ("num_embryos", "num_patients", "image_size", "interval_minutes", "horizon_hours")


def _simulator_problems(c) -> list:
  """dataset_options of the synthetic simulator: numbers where numbers go, positive, and
  no more patients than embryos (names and types of the options: the builder's check)."""
  if c.dataset != "synthetic":
    return []
  options, problems = dict(c.dataset_options), []
  for key in _POSITIVE_SIMULATOR_OPTIONS:
    if key not in options:
      continue
    value = options[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
      problems.append(f"config.dataset_options.{key}={value!r}: must be a positive number")
  embryos, patients = options.get("num_embryos"), options.get("num_patients")
  if not problems and embryos and patients and patients > embryos:
    problems.append(f"config.dataset_options.num_patients={patients} > num_embryos={embryos}: a patient "
                    "needs at least one embryo")
  return problems


# The largest share of this machine's memory one process's input batch may take: the
# network's activations need several times as much again.
MEMORY_SHARE = 0.25


def input_batch_bytes(c) -> int:
  """Bytes of the float32 input batch of one training step (all devices of a process)."""
  planes = 3 if c.focal_planes in ("axis", "channels") else 1  # the central three, or all: 3 as a floor
  channels = 3 if c.rgb else 1
  frames = max(1, c.num_frames)
  return int(c.batch_size) * frames * planes * channels * int(c.image_size) ** 2 * 4


def _memory_problems(c) -> list:
  """A step whose input batch alone would take more than MEMORY_SHARE of this machine's
  memory cannot run: refuse it before building anything (an estimate, from the shapes)."""
  try:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return []
  need = input_batch_bytes(c)
  if need <= MEMORY_SHARE * total:
    return []
  return [f"config.image_size={c.image_size} with batch_size={c.batch_size} and num_frames={c.num_frames}: "
          f"one input batch alone is {need / 2**30:.1f} GiB, more than {MEMORY_SHARE:.0%} of this machine's "
          f"{total / 2**30:.0f} GiB; lower image_size, batch_size or num_frames"]


def _loss_problems(c) -> list:
  """`loss` and the head width: a one-output loss needs model_kwargs.num_classes 1 (or
  unset: the trainer derives it from the loss), cross-entropy needs 2."""
  if c.loss not in LOSSES:
    return [f"config.loss={c.loss!r}: choose one of {', '.join(LOSSES)}"]
  want = 1 if c.loss in ONE_OUTPUT_LOSSES else 2
  have = c.model_kwargs.get("num_classes", want)
  if have == want:
    return []
  if want == 1:
    return [f"config.model_kwargs.num_classes={have!r} with loss={c.loss!r}: a one-output loss needs "
            "num_classes=1 (or leave num_classes out: it follows config.loss)"]
  return [f"config.model_kwargs.num_classes={have!r} with loss='cross_entropy': the softmax loss needs "
          "num_classes=2; for one sigmoid output set loss='bce' or 'weighted_mse'"]


def _augmentation_problems(c) -> list:
  """config.augmentation: a known preset, known fields within AugmentConfig's ranges
  (blastjax.data.augment holds them), temporal scales only with clip sampling."""
  from blastjax.data import augment

  section = c.get("augmentation")
  problems = augment.section_problems(section)
  if problems or not c.augment:
    return problems
  scales = augment.resolve(section).temporal_scales
  if scales != (1.0,) and c.sampling != "clip":
    problems.append(f"config.augmentation.temporal_scales={scales} (preset {section.get('preset')!r}) with "
                    f"sampling={c.sampling!r}: temporal scales resample clips; set sampling='clip' or "
                    "augmentation.preset='hara'")
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


def _parent(config, dotted: str):
  """(the ConfigDict holding field `dotted`, its last name), or ValueError naming it."""
  *parents, name = dotted.split(".")
  node = config
  for index, part in enumerate(parents):
    if not hasattr(node, "keys") or part not in node:
      raise ValueError(f"config.{'.'.join(parents[:index + 1])} is not a config section")
    node = node[part]
  if not hasattr(node, "keys"):
    raise ValueError(f"config.{'.'.join(parents)} is not a config section")
  if not parents and name not in default_config():
    raise ValueError(f"config field {name!r} is unknown; known fields: {', '.join(sorted(default_config().keys()))}")
  return node, name


def set_field(config, dotted: str, value) -> None:
  """config.<dotted> = value (`augmentation.preset`, `dataset_options.num_embryos`); a
  ValueError naming the field when it is unknown (top level) or its parent is no section."""
  node, name = _parent(config, dotted)
  node[name] = value


def parse_field_text(config, dotted: str, text: str):
  """The value of a `--config.<dotted>=<text>` override, typed as the field's current value
  (bool: true/false; int; float; tuple: `30,40` or `(30, 40)`; dict: a Python/JSON
  literal; str: the text); a ValueError naming the field when the text does not fit."""
  node, name = _parent(config, dotted)
  current = node[name] if name in node else None
  where = f"--config.{dotted}={text}"
  try:
    if isinstance(current, bool):
      if text.strip().lower() not in ("true", "false", "1", "0"):
        raise ValueError("expected true or false")
      return text.strip().lower() in ("true", "1")
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
    if isinstance(current, (tuple, list)):
      stripped = text.strip()
      if not stripped or stripped in ("()", "[]"):
        return ()
      parsed = ast.literal_eval(stripped if stripped[0] in "([" else f"({stripped},)")
      return tuple(parsed) if isinstance(parsed, (tuple, list)) else (parsed,)
    if hasattr(current, "keys"):
      parsed = ast.literal_eval(text)
      if not isinstance(parsed, dict):
        raise ValueError("expected a dict")
      return parsed
    if current is None:  # a new key of a section (dataset_options, model_kwargs)
      try:
        return ast.literal_eval(text)
      except (ValueError, SyntaxError):
        return text
    return text
  except (ValueError, SyntaxError) as error:
    raise ValueError(f"{where}: expected {type(current).__name__} ({error})") from None


def set_field_from_text(config, dotted: str, text: str) -> None:
  set_field(config, dotted, parse_field_text(config, dotted, text))


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
  problems = (_range_problems(config) + _augmentation_problems(config) + _model_problems(config)
              + _simulator_problems(config) + _memory_problems(config))
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
