"""Hara et al.'s 3D ResNets ("Learning Spatio-Temporal Features with 3D Residual Networks",
"Towards Good Practice for Action Recognition with Spatiotemporal 3D Convolutions").

A port of `models/resnet.py` of the authors' kenshohara/3D-ResNets-PyTorch
(`generate_model(depth, ...)`), whose checkpoints load with
`blastjax.weights.from_torch('hara_resnet3d_18', state_dict, num_classes=...)`.

Registered variants (the paper's Table I and its deeper relatives):
- `hara_resnet3d_18`: BasicBlock x [2, 2, 2, 2], type-A shortcuts (identity with zero
  padding of the new channels, no parameters), as the paper says;
- `hara_resnet3d_34`: BasicBlock x [3, 4, 6, 3], type-B shortcuts (1x1x1 conv + BN);
- `hara_resnet3d_50`: Bottleneck x [3, 4, 6, 3], type-B shortcuts.

Keyword arguments as the reference's `ResNet`: `shortcut_type` ('A' or 'B'),
`conv1_t_size` (7: the 7x7x7 stem), `conv1_t_stride` (1: no temporal striding in the
stem, as the paper), `no_max_pool`, `widen_factor`; the input channels are taken from the
input. The max-pool (3x3x3, stride 2) pools time as well.

Type-A shortcuts subsample with stride s (`avg_pool3d(kernel_size=1, stride=s)`) and
append zero channels. The reference builds them from `out.data`, so no gradient flows
through them; `type_a_stop_gradient=True` (the default) keeps that, False lets the
gradient through the identity path.

Module names are the reference's keys, one Flax module per torch container: `conv1`,
`bn1`, `layer1` .. `layer4` (children `0`, `1`, ...: the blocks, each with `conv1`,
`bn1`, `conv2`, `bn2`, [`conv3`, `bn3`], `downsample_0`, `downsample_1`) and `fc`;
`torch_compat.dotted_key_map` gives the torch keys. `num_classes=0` returns pooled
features; `return_feature_map=True` the layer4 map [B, T', H', W', C].

A padding mask (True = padding frame, at any positions) is honoured by moving the valid
frames to the front and looping them over the remaining slots (`masking.compact`) before the network, so padded content cannot change the output (Hara's
own loop padding of short clips).
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from blastjax.models import masking, torch_compat
from blastjax.models.registry import register
from blastjax.models.video_resnet import batch_norm, conv3d

Array = jax.Array

SHORTCUT_TYPES = ("A", "B")
BLOCK_INPLANES = (64, 128, 256, 512)


def type_a_shortcut(x: Array, planes: int, stride: int, stop_gradient: bool) -> Array:
  """Identity shortcut: subsample by `stride` on T, H, W, then zero-pad to `planes` channels."""
  x = x[:, ::stride, ::stride, ::stride, :]
  if stop_gradient:
    x = jax.lax.stop_gradient(x)
  zeros = jnp.zeros(x.shape[:-1] + (planes - x.shape[-1],), x.dtype)
  return jnp.concatenate([x, zeros], axis=-1)


def _conv(module: nn.Module):
  """`conv3d` in the dtype and param_dtype of `module` (a block or the network)."""
  return functools.partial(conv3d, dtype=module.dtype, param_dtype=module.param_dtype)


class HaraBasicBlock(nn.Module):
  """conv3x3x3-BN-ReLU, conv3x3x3-BN, plus the shortcut, ReLU."""

  planes: int
  stride: int = 1
  shortcut_type: str = "B"
  type_a_stop_gradient: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  expansion = 1

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    s = self.stride
    y = _conv(self)(self.planes, (3, 3, 3), (s, s, s), (1, 1, 1), "conv1")(x)
    y = nn.relu(batch_norm("bn1", train, self.dtype, self.param_dtype)(y))
    y = _conv(self)(self.planes, (3, 3, 3), (1, 1, 1), (1, 1, 1), "conv2")(y)
    y = batch_norm("bn2", train, self.dtype, self.param_dtype)(y)
    return nn.relu(y + shortcut(self, x, train))


class HaraBottleneck(nn.Module):
  """conv1x1x1-BN-ReLU, conv3x3x3 (strided)-BN-ReLU, conv1x1x1 (x4)-BN, shortcut, ReLU."""

  planes: int
  stride: int = 1
  shortcut_type: str = "B"
  type_a_stop_gradient: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  expansion = 4

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    s = self.stride
    y = _conv(self)(self.planes, (1, 1, 1), (1, 1, 1), (0, 0, 0), "conv1")(x)
    y = nn.relu(batch_norm("bn1", train, self.dtype, self.param_dtype)(y))
    y = _conv(self)(self.planes, (3, 3, 3), (s, s, s), (1, 1, 1), "conv2")(y)
    y = nn.relu(batch_norm("bn2", train, self.dtype, self.param_dtype)(y))
    y = _conv(self)(self.planes * 4, (1, 1, 1), (1, 1, 1), (0, 0, 0), "conv3")(y)
    y = batch_norm("bn3", train, self.dtype, self.param_dtype)(y)
    return nn.relu(y + shortcut(self, x, train))


def shortcut(block: nn.Module, x: Array, train: bool) -> Array:
  """The block's shortcut (called inside its compact method): identity, type A or type B."""
  out_planes = block.planes * block.expansion
  if block.stride == 1 and x.shape[-1] == out_planes:
    return x
  if block.shortcut_type == "A":
    return type_a_shortcut(x, out_planes, block.stride, block.type_a_stop_gradient)
  s = block.stride
  x = _conv(block)(out_planes, (1, 1, 1), (s, s, s), (0, 0, 0), "downsample_0")(x)
  return batch_norm("downsample_1", train, block.dtype, block.param_dtype)(x)


BLOCKS = {"basic": HaraBasicBlock, "bottleneck": HaraBottleneck}


class HaraResNet3D(nn.Module):
  """The reference's `ResNet` on clips [B, T, H, W, C]; see the module docstring."""

  block: str = "basic"
  layers: Sequence[int] = (2, 2, 2, 2)
  num_classes: int = 2
  conv1_t_size: int = 7
  conv1_t_stride: int = 1
  no_max_pool: bool = False
  shortcut_type: str = "B"
  widen_factor: float = 1.0
  type_a_stop_gradient: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False, mask: Optional[Array] = None,
               return_feature_map: bool = False) -> Array:
    if self.shortcut_type not in SHORTCUT_TYPES:
      raise ValueError(f"shortcut_type={self.shortcut_type!r}; expected one of {SHORTCUT_TYPES}")
    if self.block not in BLOCKS:
      raise ValueError(f"block={self.block!r}; expected one of {sorted(BLOCKS)}")
    planes = [int(p * self.widen_factor) for p in BLOCK_INPLANES]
    x = masking.loop_valid_frames(x, mask)
    x = _conv(self)(planes[0], (self.conv1_t_size, 7, 7), (self.conv1_t_stride, 2, 2),
                    (self.conv1_t_size // 2, 3, 3), "conv1")(x)
    x = nn.relu(batch_norm("bn1", train, self.dtype, self.param_dtype)(x))
    if not self.no_max_pool:
      x = nn.max_pool(x, (3, 3, 3), strides=(2, 2, 2), padding=((1, 1),) * 3)
    block_cls = BLOCKS[self.block]
    for stage, (width, num_blocks) in enumerate(zip(planes, self.layers)):
      x = HaraStage(block_cls, width, num_blocks, 1 if stage == 0 else 2, self.shortcut_type,
                    self.type_a_stop_gradient, dtype=self.dtype, param_dtype=self.param_dtype,
                    name=f"layer{stage + 1}")(x, train)
    if return_feature_map:
      return x
    x = jnp.mean(x, axis=(1, 2, 3))
    if self.num_classes == 0:
      return x
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x)


class HaraStage(nn.Module):
  """One `layerN` of blocks named `0`, `1`, ...; the first one strides."""

  block_cls: Any
  planes: int
  num_blocks: int
  stride: int = 1
  shortcut_type: str = "B"
  type_a_stop_gradient: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    for i in range(self.num_blocks):
      x = self.block_cls(self.planes, self.stride if i == 0 else 1, self.shortcut_type,
                         self.type_a_stop_gradient, dtype=self.dtype, param_dtype=self.param_dtype,
                         name=str(i))(x, train)
    return x


HARA_CONFIGS = {
    "hara_resnet3d_18": dict(block="basic", layers=(2, 2, 2, 2), shortcut_type="A"),
    "hara_resnet3d_34": dict(block="basic", layers=(3, 4, 6, 3), shortcut_type="B"),
    "hara_resnet3d_50": dict(block="bottleneck", layers=(3, 4, 6, 3), shortcut_type="B"),
}


def hara_resnet3d_from_config(name: str, num_classes: int = 2, **overrides) -> HaraResNet3D:
  """`HaraResNet3D(**HARA_CONFIGS[name], num_classes=..., **overrides)`."""
  return HaraResNet3D(num_classes=num_classes, **{**HARA_CONFIGS[name], **overrides})


def _reference(depth: int):
  """The `register` arguments of the reference's `generate_model(depth)`."""
  return dict(input_kind="video", torch_key_map=torch_compat.dotted_key_map, min_image_size=32,
              reference=f"kenshohara/3D-ResNets-PyTorch models/resnet.py generate_model({depth})")


@register(**_reference(18))
def hara_resnet3d_18(num_classes: int = 2, **kwargs) -> HaraResNet3D:
  """Hara et al.'s 3D ResNet-18 (kenshohara/3D-ResNets-PyTorch)."""
  return hara_resnet3d_from_config("hara_resnet3d_18", num_classes, **kwargs)


@register(**_reference(34))
def hara_resnet3d_34(num_classes: int = 2, **kwargs) -> HaraResNet3D:
  """Hara et al.'s 3D ResNet-34 (kenshohara/3D-ResNets-PyTorch)."""
  return hara_resnet3d_from_config("hara_resnet3d_34", num_classes, **kwargs)


@register(**_reference(50))
def hara_resnet3d_50(num_classes: int = 2, **kwargs) -> HaraResNet3D:
  """Hara et al.'s 3D ResNet-50 (kenshohara/3D-ResNets-PyTorch)."""
  return hara_resnet3d_from_config("hara_resnet3d_50", num_classes, **kwargs)
