"""MobileNetV3 (large and small), identical to torchvision's `mobilenet_v3_*`.

Flax module names are torchvision's module paths with `_` for `.` (`features_4` holds
`block_2`, torch `features.4.block.2`); in a Conv-BN-activation unit, `conv` and `bn`
are torch's `0` and `1`. BatchNorm uses torchvision's eps 1e-3 and momentum 0.01
(`torch_compat.torch_batch_norm(momentum=0.01, eps=1e-3)`, Flax momentum 0.99).
`num_classes=0` returns the pooled backbone features (960 for large, 576 for small),
i.e. the input of torchvision's classifier.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from blastjax.models import cpu_conv, torch_compat
from blastjax.models.checks import check_in_channels
from blastjax.models.registry import register

# torchvision's MobileNetV3: norm_layer=partial(nn.BatchNorm2d, eps=0.001, momentum=0.01).
batch_norm = torch_compat.torch_batch_norm(momentum=0.01, eps=1e-3)


def make_divisible(value: float, divisor: int = 8) -> int:
  """torchvision's `_make_divisible`: round to a multiple of `divisor`, never below 90%."""
  new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if new_value < 0.9 * value:
    new_value += divisor
  return new_value


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """One inverted-residual block, as a row of Tables 1 and 2 of the MobileNetV3 paper."""

  in_channels: int
  kernel: int
  expanded: int
  out_channels: int
  use_se: bool
  activation: str  # "RE" (ReLU) or "HS" (hardswish).
  stride: int


# (in, kernel, expanded, out, SE, activation, stride), torchvision's `_mobilenet_v3_conf`.
LARGE = tuple(BlockConfig(*row) for row in (
    (16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1), (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1)))
SMALL = tuple(BlockConfig(*row) for row in (
    (16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2),
    (24, 3, 88, 24, False, "RE", 1), (24, 5, 96, 40, True, "HS", 2),
    (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1),
    (48, 5, 288, 96, True, "HS", 2), (96, 5, 576, 96, True, "HS", 1),
    (96, 5, 576, 96, True, "HS", 1)))

_ACTIVATIONS = {"RE": nn.relu, "HS": jax.nn.hard_swish}


class ConvNormActivation(nn.Module):
  """torchvision's `Conv2dNormActivation`: conv (no bias, symmetric padding) -> BN -> act."""

  features: int
  kernel_size: int = 1
  stride: int = 1
  groups: int = 1
  activation: Optional[Callable] = nn.relu
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = cpu_conv.Conv(self.features, (self.kernel_size, self.kernel_size),
                strides=(self.stride, self.stride),
                padding=torch_compat.kernel_padding(self.kernel_size),
                feature_group_count=self.groups, use_bias=False, dtype=self.dtype,
                param_dtype=self.param_dtype, name="conv")(x)
    x = batch_norm(use_running_average=not train, dtype=self.dtype, param_dtype=self.param_dtype,
                   name="bn")(x)
    return x if self.activation is None else self.activation(x)


class SqueezeExcitation(nn.Module):
  """torchvision's `SqueezeExcitation` with hardsigmoid gating (1x1 convs fc1, fc2)."""

  squeeze_channels: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = jnp.mean(x, axis=(1, 2), keepdims=True)
    conv = functools.partial(cpu_conv.Conv, kernel_size=(1, 1), dtype=self.dtype,
                             param_dtype=self.param_dtype)
    scale = nn.relu(conv(self.squeeze_channels, name="fc1")(scale))
    scale = conv(x.shape[-1], name="fc2")(scale)
    return jax.nn.hard_sigmoid(scale) * x


class InvertedResidual(nn.Module):
  """Expand (1x1) -> depthwise -> optional SE -> project (1x1), residual when shapes match."""

  config: BlockConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    cfg = self.config
    act = _ACTIVATIONS[cfg.activation]
    unit = functools.partial(ConvNormActivation, dtype=self.dtype, param_dtype=self.param_dtype)
    y, index = x, 0
    if cfg.expanded != cfg.in_channels:
      y = unit(cfg.expanded, 1, activation=act, name=f"block_{index}")(y, train)
      index += 1
    y = unit(cfg.expanded, cfg.kernel, stride=cfg.stride, groups=cfg.expanded, activation=act,
             name=f"block_{index}")(y, train)
    index += 1
    if cfg.use_se:
      y = SqueezeExcitation(make_divisible(cfg.expanded // 4), dtype=self.dtype,
                            param_dtype=self.param_dtype, name=f"block_{index}")(y)
      index += 1
    y = unit(cfg.out_channels, 1, activation=None, name=f"block_{index}")(y, train)
    if cfg.stride == 1 and cfg.in_channels == cfg.out_channels:
      y = y + x
    return y


class MobileNetV3(nn.Module):
  """torchvision's `MobileNetV3` on NHWC input with any number of channels."""

  blocks: Sequence[BlockConfig]
  last_channel: int
  num_classes: int = 2
  dropout: float = 0.2
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  in_channels: Optional[int] = None  # Checked against the input when given.

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    del mask  # Single-image model.
    check_in_channels("MobileNetV3", self.in_channels, x)
    x = jnp.asarray(x, self.dtype)
    unit = functools.partial(ConvNormActivation, dtype=self.dtype, param_dtype=self.param_dtype)
    x = unit(self.blocks[0].in_channels, 3, stride=2, activation=jax.nn.hard_swish,
             name="features_0")(x, train)
    for i, cfg in enumerate(self.blocks, start=1):
      x = InvertedResidual(cfg, dtype=self.dtype, param_dtype=self.param_dtype,
                           name=f"features_{i}")(x, train)
    x = unit(6 * self.blocks[-1].out_channels, 1, activation=jax.nn.hard_swish,
             name=f"features_{len(self.blocks) + 1}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    if self.num_classes == 0:
      return x
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    x = jax.nn.hard_swish(dense(self.last_channel, name="classifier_0")(x))
    x = nn.Dropout(self.dropout, deterministic=not train, name="classifier_2")(x)
    return dense(self.num_classes, name="classifier_3")(x)


_UNIT_CHILDREN = {"conv": "0", "bn": "1"}


def mobilenet_key_map(collection: str, path: tuple) -> str:
  """`features_4/block_2/bn/mean` -> `features.4.block.2.1.running_mean`."""
  parts = [_UNIT_CHILDREN.get(name, name.replace("_", ".")) for name in path[:-1]]
  return ".".join(parts + [torch_compat.torch_suffix(collection, path[-1])])


@register(input_kind="image", torch_key_map=mobilenet_key_map,
          reference="torchvision.models.mobilenet_v3_large", min_image_size=32)
def mobilenet_v3_large(num_classes: int = 2, **kwargs) -> MobileNetV3:
  """MobileNetV3-Large (torchvision); `dropout`, `dtype`, `param_dtype`."""
  return MobileNetV3(blocks=LARGE, last_channel=1280, num_classes=num_classes, **kwargs)


@register(input_kind="image", torch_key_map=mobilenet_key_map,
          reference="torchvision.models.mobilenet_v3_small", min_image_size=32)
def mobilenet_v3_small(num_classes: int = 2, **kwargs) -> MobileNetV3:
  """MobileNetV3-Small (torchvision); `dropout`, `dtype`, `param_dtype`."""
  return MobileNetV3(blocks=SMALL, last_channel=1024, num_classes=num_classes, **kwargs)
