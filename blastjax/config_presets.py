"""Shared defaults of every config file in blastjax/configs/ (`configs/` in a checkout):
the paper's setup (Table 2 of cleavage_stage_blastocyst_dataset.txt) and the `:smoke`
variant.

Single-frame models: AdamW lr 1e-3, weight decay 1e-5, batch 32, 400x400, 500 epochs.
Multi-frame models: the same optimiser, batch 16, 32 frames, 224x224, 100 epochs.
The split is the paper's class-balanced half/half split by embryo.

The benchmark protocol (`benchmark`): no validation carved out of the training half,
the last checkpoint tested; `:select` chooses the best-AUC checkpoint on 10% validation.

A model config is `get_config(arg=None)` calling `single_frame(...)` or
`multi_frame(...)` and `finish(config, arg)` (or `benchmark(config, arg)`); `arg='smoke'`
shrinks everything so the run finishes in a few minutes on a laptop CPU. A config
argument is comma-separated items, each a variant name or `key=value`
(`configs/amsnet.py:smoke,row=tsm`): `parse_arg` reads it once for every config file,
checking each parameter's type and choices (`Param`). It lives in the package (not beside the
configs) so that a config file loads from any working directory and from an installed
blastjax. Field meanings: docs/training.md.
"""

import dataclasses
import importlib.util
import os
from typing import Optional

import ml_collections

from blastjax.config_validation import default_config

VARIANTS = ("", "smoke")
# The simulator sizes of the smoke variant. They shape only the synthetic dataset: a
# smoke config run with --config.dataset=folder reads the user's data unchanged
# (config_validation.prepare drops simulator options for other datasets).
SMOKE_DATASET = {"num_embryos": 96, "num_patients": 24, "image_size": 72,
                 "interval_minutes": 120.0, "horizon_hours": 80.0}
# The benchmark paper's configs test the last checkpoint of a run without validation
# (it describes no model selection); `:select` is the option of choosing one.
SELECT = {"select": "model selection: 10% of the training half for validation, the best-AUC checkpoint tested"}


class ConfigArgumentError(ValueError):
  """`get_config(arg)` got an argument it has no variant or parameter for."""


@dataclasses.dataclass(frozen=True)
class Param:
  """A `key=value` parameter of a config file's argument: its default (whose type the
  value must have; an int is a float too) and, optionally, the values it may take."""

  default: object
  choices: tuple = ()
  help: str = ""


@dataclasses.dataclass(frozen=True)
class Arg:
  """A parsed config argument: the variant names given and every parameter's value."""

  text: str = ""
  variants: frozenset = frozenset()
  params: dict = dataclasses.field(default_factory=dict)
  given: frozenset = frozenset()  # the parameters set explicitly (`key=value`)

  def __contains__(self, name) -> bool:
    return name in self.variants

  def __getitem__(self, key):
    return self.params[key]


def parse_value(text: str):
  """A `key=value` value: int, float, bool (true/false, any case) or the string itself."""
  lowered = text.strip().lower()
  if lowered in ("true", "false"):
    return lowered == "true"
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text.strip()


def _choices_text(variants: dict, params: dict) -> str:
  names = ", ".join(f"{n!r} ({d})" for n, d in variants.items())
  text = "choose none (the paper's setup) or 'smoke'" + (f", {names}" if names else "")
  if params:
    text += "; parameters: " + ", ".join(f"{k}=<{type(p.default).__name__}>" for k, p in params.items())
  return text


def _param_value(key: str, value, param: Param):
  """`value` checked against `param`, or a one-line error naming `key=value`."""
  want = type(param.default)
  ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
  if want is float and isinstance(value, int) and not isinstance(value, bool):
    value, ok = float(value), True
  if not ok:
    raise ConfigArgumentError(f"config argument {key}={value!r}: expected {want.__name__}")
  if param.choices and value not in param.choices:
    raise ConfigArgumentError(f"config argument {key}={value!r}: choose one of "
                              f"{', '.join(str(c) for c in param.choices)}")
  return value


def parse_arg(arg, variants: Optional[dict] = None, params: Optional[dict] = None) -> Arg:
  """The config argument `arg` (`configs/x.py:<arg>`): comma-separated items, each a
  variant name (`smoke` always, or a key of `variants`: name -> description) or
  `key=value` for a key of `params` (name -> Param). Raises ConfigArgumentError, one
  line naming the item and the choices; blastjax.main prefixes the config file."""
  if isinstance(arg, Arg):
    return arg
  variants, params = dict(variants or {}), dict(params or {})
  names, given, values = set(), set(), {k: p.default for k, p in params.items()}
  for item in (i.strip() for i in (arg or "").split(",")):
    if not item:
      continue
    key, eq, text = item.partition("=")
    key = key.strip()
    if eq and key in params:
      values[key] = _param_value(key, parse_value(text), params[key])
      given.add(key)
    elif eq:
      raise ConfigArgumentError(f"config argument {item!r} unknown: no parameter {key!r}; "
                                + _choices_text(variants, params))
    elif item == "smoke" or item in variants:
      names.add(item)
    else:
      raise ConfigArgumentError(f"config argument {item!r} unknown; " + _choices_text(variants, params))
  return Arg(arg or "", frozenset(names), values, frozenset(given))


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
  if "smoke" in parse_arg(arg):
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


def benchmark(c: ml_collections.ConfigDict, arg=None, **finish_kwargs) -> ml_collections.ConfigDict:
  """A model of the benchmark paper (cleavage_stage_blastocyst_dataset.txt, Tables 3/4)
  under its protocol: the half/half split with no validation carved out of the training
  half and the final checkpoint tested, since the paper describes no model selection.
  `:select` keeps model selection as an option (validation 10%, the best-AUC checkpoint)."""
  a = parse_arg(arg, SELECT)
  c.validation_fraction = 0.0
  c.eval_checkpoint = "last"
  if "select" in a:
    c.update(validation_fraction=0.1, eval_checkpoint="best", best_metric="auc")
  return finish(c, a, **finish_kwargs)


# The built-in config files: the package blastjax.configs, installed with blastjax (in a
# checkout, `configs/` at the repository root is a symlink to it).
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def config_names(folder: str = CONFIGS_DIR) -> list:
  """The names of the config files in `folder` (`r2p1d.py`, ...; by default the built-in ones)."""
  return sorted(n for n in os.listdir(folder) if n.endswith(".py") and not n.startswith("_"))


def config_file(name: str) -> str:
  """The path of config file `name`: a path that exists, or a built-in config file by its
  name (`resnet50.py` or `resnet50`), from any working directory. FileNotFoundError
  says where it looked and lists the built-in names."""
  path = os.path.expanduser(name)
  if os.path.isfile(path):
    return os.path.abspath(path)
  base = name if name.endswith(".py") else name + ".py"
  candidate = os.path.join(CONFIGS_DIR, base)
  if os.sep not in name and "/" not in name and not base.startswith("_") and os.path.isfile(candidate):
    return candidate
  raise FileNotFoundError(f"config file {name!r}: neither a file nor a file of {CONFIGS_DIR}; give a path "
                          f"or a built-in name: {', '.join(config_names())}")


def combined_arg(*args) -> str:
  """Config arguments joined (`count` and `smoke` -> `count,smoke`), empty ones left out."""
  return ",".join(a for a in args if a)


def load_config(spec: str, extra_arg: str = "") -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file given as `file[:arg]` (config_file's names), with
  `extra_arg` (e.g. 'smoke') added to its argument, as `--config file:arg` loads it."""
  name, _, arg = spec.partition(":")
  path = config_file(name)
  module_name = "blastjax_config_" + os.path.splitext(os.path.basename(path))[0]
  loader = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(loader)
  loader.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigArgumentError(f"{path} has no get_config(arg=None)")
  return module.get_config(combined_arg(arg, extra_arg) or None)
