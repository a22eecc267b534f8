"""What makes a Flax module compute and initialise like its PyTorch reference, defined once.

Every model file takes its torch-matching pieces from here (see DESIGN.md, "Parity
pitfalls"):
- normalisation: `torch_batch_norm(momentum, eps)` turns torch's `BatchNorm{1,2,3}d`
  arguments into an `nn.BatchNorm` partial (Flax's momentum is 1 - torch's; exact
  two-pass variance, as torch); `batch_norm` is torch's defaults (momentum 0.1, eps 1e-5).
  `torch_layer_norm(eps)` likewise for `nn.LayerNorm` (torch 1e-5, torchvision's ViT 1e-6);
- padding: `symmetric_padding` (torch pads both sides alike; Flax 'SAME' does not at
  stride 2) and `kernel_padding` (torch's `padding=(k - 1) // 2`);
- initialisers of torch and torchvision used by more than one model;
- key maps: a model's `torch_key_map(collection, flax_path) -> torch state_dict key`
  (the spec field `blastjax.weights` reads), built from `torch_suffix` and the two naming
  rules the models use (`dotted_key_map`, `joined_key_map`), and `prefixed_key_map` for a
  network embedded in a bigger one.

Only jax and flax are imported: `blastjax.weights` sits above this layer, never below it.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

KeyMap = Callable[[str, tuple], str]


# --- Normalisation --------------------------------------------------------------------

def torch_batch_norm(momentum: float = 0.1, eps: float = 1e-5) -> Callable[..., nn.BatchNorm]:
  """`nn.BatchNorm` with torch's `BatchNorm*d(momentum=..., eps=...)` behaviour.

  torch updates running = (1 - momentum) * running + momentum * batch, Flax
  running = momentum * running + (1 - momentum) * batch, hence Flax momentum 1 - torch's.
  `use_fast_variance=False`: Flax's fast E[x^2] - E[x]^2 drifts from torch in training.
  """
  return functools.partial(nn.BatchNorm, momentum=1.0 - momentum, epsilon=eps,
                           use_fast_variance=False)


# torch's BatchNorm1d/2d/3d defaults: momentum 0.1 (Flax 0.9), eps 1e-5.
batch_norm = torch_batch_norm()


def torch_layer_norm(eps: float = 1e-5) -> Callable[..., nn.LayerNorm]:
  """`nn.LayerNorm` with torch's `eps` (torch's default 1e-5; Flax's own default is 1e-6)."""
  return functools.partial(nn.LayerNorm, epsilon=eps)


# --- Padding --------------------------------------------------------------------------

def symmetric_padding(*pads: int) -> Tuple[Tuple[int, int], ...]:
  """torch's padding: `p` on both sides of each axis, one amount per spatial axis."""
  return tuple((p, p) for p in pads)


def kernel_padding(kernel_size: int, ndim: int = 2) -> Tuple[Tuple[int, int], ...]:
  """torch's `padding=(k - 1) // 2` for an odd kernel on `ndim` axes (size kept at stride 1)."""
  return symmetric_padding(*((kernel_size - 1) // 2,) * ndim)


# --- Initialisers ---------------------------------------------------------------------

# torch.nn.init.kaiming_normal_(mode='fan_out', nonlinearity='relu') (torchvision's ResNets).
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch nn.Linear's default weight init, kaiming_uniform_(a=sqrt(5)): U(+-1/sqrt(fan_in)).
linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def linear_bias_init(fan_in: int):
  """torch nn.Linear's default bias init: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / max(fan_in, 1) ** 0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


# --- Key maps -------------------------------------------------------------------------

# Flax leaf name (per collection) -> torch parameter suffix.
_PARAM_SUFFIX = {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": "weight"}
_STATS_SUFFIX = {"mean": "running_mean", "var": "running_var"}


def torch_suffix(collection: str, leaf: str) -> str:
  """The torch parameter name for a Flax leaf (`kernel` -> `weight`, `mean` -> `running_mean`)."""
  table = _STATS_SUFFIX if collection == "batch_stats" else _PARAM_SUFFIX
  return table.get(leaf, leaf)


def dotted_key_map(collection: str, path: tuple) -> str:
  """Module names with `_` for torch's `.`.

  `layer1_0/downsample_1/mean` -> `layer1.0.downsample.1.running_mean`: the rule of the
  models whose Flax names are torch's module paths with `_` for `.` (ResNets, video
  ResNets, Hara's 3D ResNets, TSM's backbone).
  """
  names = [name.replace("_", ".") for name in path[:-1]]
  return ".".join(names + [torch_suffix(collection, path[-1])])


def joined_key_map(collection: str, path: tuple) -> str:
  """Module names kept as they are, joined by dots.

  `Mixed_4b/b1b/conv3d/kernel` -> `Mixed_4b.b1b.conv3d.weight`: the rule of the models
  whose torch names hold underscores (Inception-v3, I3D, MFNet, DenseNet).
  """
  return ".".join(tuple(path[:-1]) + (torch_suffix(collection, path[-1]),))


class KeyMapError(KeyError, ValueError):
  """A Flax path that a key map does not cover (a KeyError and a ValueError)."""


def prefixed_key_map(key_map: KeyMap, flax_prefix: Union[str, Sequence[str]],
                     torch_prefix: str = "") -> KeyMap:
  """`key_map` for a network embedded under `flax_prefix` (a module name or a path of names).

  The returned map strips `flax_prefix` from the Flax path, applies `key_map` and puts
  `torch_prefix.` in front of the torch key (nothing when `torch_prefix` is empty), e.g.
  `prefixed_key_map(dotted_key_map, 'encoder', 'base_model')`. A path outside
  `flax_prefix` raises `KeyMapError` naming both, so a caller's own key map can handle
  its other modules and delegate the rest here.
  """
  prefix = (flax_prefix,) if isinstance(flax_prefix, str) else tuple(flax_prefix)

  def mapped(collection: str, path: tuple) -> str:
    if tuple(path[:len(prefix)]) != prefix:
      raise KeyMapError(f"Flax path {'/'.join(path)} is not under {'/'.join(prefix)}")
    key = key_map(collection, tuple(path[len(prefix):]))
    return f"{torch_prefix}.{key}" if torch_prefix else key

  return mapped
