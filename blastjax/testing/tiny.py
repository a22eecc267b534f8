"""Tiny models and configs for testing the training system (fast to compile on CPU).

The models `tiny_image`, `tiny_video` and `tiny_per_step` enter the global registry
only when asked (`register_tiny_models`, undone by `unregister_tiny_models`): the test
suite's conftest registers them for its session, and the command lines built by
`main_command` / `predict_command` register them in the child process before running
blastjax's CLI. Nothing is registered by importing this module.
"""

from __future__ import annotations

import os
import sys

import flax.linen as nn
import jax.numpy as jnp

from blastjax import models
from blastjax.config_validation import default_config
from blastjax.data import dataset

TINY_MODELS = ("tiny_image", "tiny_video", "tiny_per_step")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class TinyCNN(nn.Module):
  """conv -> BatchNorm -> relu -> mean pool (over valid frames) -> dropout -> dense."""

  num_classes: int = 2
  features: int = 4
  per_step: bool = False
  sync_bn: bool = False
  dropout: float = 0.1
  batch_norm: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    video = x.ndim == 5
    if video:
      b, t = x.shape[:2]
      x = x.reshape((b * t,) + x.shape[2:])
    x = nn.Conv(self.features, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                name="conv1")(x)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, use_fast_variance=False,
                       axis_name="batch" if self.sync_bn else None, name="bn1")(x)
    x = nn.relu(x).mean(axis=(1, 2))
    x = nn.Dense(self.features, dtype=self.dtype, name="layer1")(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(x))
    if video:
      x = x.reshape((b, t, -1))
      if not self.per_step:
        keep = jnp.ones((b, t), x.dtype) if mask is None else (~mask).astype(x.dtype)
        x = (x * keep[..., None]).sum(1) / jnp.maximum(keep.sum(1, keepdims=True), 1.0)
    if self.num_classes == 0:  # feature mode (a feature extractor for 'features' models)
      return x
    return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)


def register_tiny_models() -> None:
  """Registers the tiny models (idempotent)."""
  if "tiny_image" in models.list_models():
    return
  models.register("tiny_image", input_kind="image", min_image_size=8)(
      lambda num_classes=2, **kw: TinyCNN(num_classes=num_classes, **kw))
  models.register("tiny_video", input_kind="video", min_image_size=8)(
      lambda num_classes=2, **kw: TinyCNN(num_classes=num_classes, **kw))
  models.register("tiny_per_step", input_kind="video", per_step=True, min_image_size=8)(
      lambda num_classes=2, **kw: TinyCNN(num_classes=num_classes, per_step=True, **kw))


def unregister_tiny_models() -> None:
  for name in TINY_MODELS:
    models.unregister(name)


SMALL_DATASET = {"num_embryos": 32, "num_patients": 8, "image_size": 32, "interval_minutes": 240.0,
                 "horizon_hours": 80.0}


def tiny_config(model="tiny_video", **overrides):
  """A run of a few steps on a small synthetic build."""
  c = default_config()
  c.model = model
  c.dataset_options = dict(SMALL_DATASET)
  c.batch_size = 4
  c.eval_batch_size = 4
  c.image_size = 16
  c.num_frames = 1 if model == "tiny_image" else 4
  c.sampling = "last_frame" if model == "tiny_image" else "uniform"
  c.rgb = False
  c.num_steps = 12
  c.checkpoint_every_steps = 4
  c.eval_every_steps = 6
  c.log_every_steps = 2
  c.keep_checkpoints = 2
  c.validation_fraction = 0.2
  c.early_hours = (40.0, 80.0)
  c.progress = False
  c.update(overrides)
  return c


def build_small_dataset(data_dir: str) -> str:
  """Builds the small synthetic dataset of the tests into `data_dir` (seconds)."""
  dataset.ensure_built("synthetic", data_dir, verbose=False, **SMALL_DATASET)
  return data_dir


def write_config_file(path: str, model: str = "tiny_video", **overrides) -> str:
  """A config file for blastjax.main that registers the tiny models and returns
  tiny_config(model, **overrides)."""
  with open(path, "w") as f:
    f.write("from blastjax.testing import tiny\n\n"
            "tiny.register_tiny_models()\n\n\n"
            "def get_config(arg=None):\n"
            f"  return tiny.tiny_config({model!r}, **{overrides!r})\n")
  return path


def _command(module: str, *args) -> list:
  script = ("from blastjax.testing import tiny; tiny.register_tiny_models(); "
            f"import sys; sys.argv[0] = {module!r}; from blastjax import {module.split('.')[-1]}; "
            f"{module.split('.')[-1]}.entry()")
  return [sys.executable, "-c", script, *args]


def main_command(*args) -> list:
  """The command line of `python -m blastjax.main` with the tiny models registered."""
  return _command("blastjax.main", *args)


def predict_command(*args) -> list:
  """The command line of `python -m blastjax.predict` with the tiny models registered."""
  return _command("blastjax.predict", *args)


def subprocess_env(devices: int = 1) -> dict:
  """A child process's environment: CPU, `devices` fake devices, this checkout importable."""
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  return env
