"""MFNet-3D: Multi-Fiber Networks for Video Recognition (Chen et al., ECCV 2018).

A port of `MFNET_3D` from the authors' cypw/PyTorch-MFNet (`network/mfnet_3d.py`), whose
Kinetics checkpoints load with `blastjax.weights.from_torch('mfnet3d', state_dict,
num_classes=400)`. Module names are the reference's keys, one Flax module per torch
module: `conv1.conv`, `conv1.bn`, `conv2.B01.conv_i1.bn`, ..., `tail.bn`, `classifier`,
so the torch key of a variable is its Flax path joined by dots.

The network: a 3x5x5 stem (16 channels, spatial stride 2), a 1x3x3 max-pool, then four
stages of multi-fiber units (3, 4, 6, 3 units; 96, 192, 384, 768 channels; 16 fibers,
i.e. grouped convolutions) with pre-activation BN-ReLU-conv layers; the first unit of
conv2 halves time, the first units of conv3..conv5 halve space. A final BN-ReLU, global
average pooling and a linear classifier.

As in the reference except:
- the reference pools with a fixed AvgPool3d((8, 7, 7)) and asserts 16-frame clips, so it
  only runs on 16 x 224 x 224 inputs; here the pool is a global average over the final
  map, which is the same operation at 16 x 224 x 224 and lets any clip size through.

A padding mask (True = padding frame, at any positions) is honoured by moving the valid
frames to the front and looping them over the remaining slots (`masking.compact`) before the network, so padded content cannot change the output.
`num_classes=0` returns the pooled 768-d features.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from blastjax.models import masking, torch_compat
from blastjax.models.registry import register
from blastjax.models.video_resnet import batch_norm, conv3d

Array = jax.Array

# The reference's initializer.xavier: xavier_uniform convs and linear, zero biases.
xavier_init = nn.initializers.xavier_uniform()

GROUPS = 16
UNITS_PER_STAGE = (3, 4, 6, 3)  # conv2 .. conv5
FEATURE_DIM = 768


class BnAcConv3d(nn.Module):
  """The reference's BN_AC_CONV3D: BatchNorm -> ReLU -> Conv3d (`bn`, `conv`)."""

  features: int
  kernel: Sequence[int] = (1, 1, 1)
  pads: Sequence[int] = (0, 0, 0)
  strides: Sequence[int] = (1, 1, 1)
  groups: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    x = nn.relu(batch_norm("bn", train, self.dtype, self.param_dtype)(x))
    return conv3d(self.features, self.kernel, self.strides, self.pads, "conv", self.dtype,
                  groups=self.groups, kernel_init=xavier_init, param_dtype=self.param_dtype)(x)


class MFUnit(nn.Module):
  """The reference's MF_UNIT: a multiplexer (conv_i1, conv_i2) then the fibers (conv_m1, conv_m2).

  The first unit of a stage changes width and stride, with a BN-ReLU-1x1x1 conv (`conv_w1`)
  on the shortcut.
  """

  num_mid: int
  num_out: int
  groups: int = GROUPS
  strides: Sequence[int] = (1, 1, 1)
  first_block: bool = False
  use_3d: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    num_in = x.shape[-1]
    num_ix = self.num_mid // 4
    kt, pt = (3, 1) if self.use_3d else (1, 0)
    unit = lambda *a, **k: BnAcConv3d(*a, dtype=self.dtype, param_dtype=self.param_dtype,  # noqa: E731
                                      **k)
    h = unit(num_ix, name="conv_i1")(x, train)
    x_in = x + unit(num_in, name="conv_i2")(h, train)
    h = unit(self.num_mid, (kt, 3, 3), (pt, 1, 1), self.strides, self.groups,
             name="conv_m1")(x_in, train)
    if self.first_block:
      h = unit(self.num_out, name="conv_m2")(h, train)
      x = unit(self.num_out, strides=self.strides, name="conv_w1")(x, train)
    else:
      h = unit(self.num_out, (1, 3, 3), (0, 1, 1), groups=self.groups, name="conv_m2")(h, train)
    return h + x


class MFStage(nn.Module):
  """One of conv2 .. conv5: units named `B01`, `B02`, ...; the first one strides."""

  num_mid: int
  num_out: int
  num_units: int
  strides: Sequence[int]
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    for i in range(1, self.num_units + 1):
      x = MFUnit(self.num_mid, self.num_out, strides=self.strides if i == 1 else (1, 1, 1),
                 first_block=i == 1, dtype=self.dtype, param_dtype=self.param_dtype,
                 name=f"B{i:02d}")(x, train)
    return x


class Conv1(nn.Module):
  """The stem: Conv3d 3x5x5, stride (1, 2, 2), 16 channels -> BN -> ReLU (`conv`, `bn`)."""

  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    x = conv3d(16, (3, 5, 5), (1, 2, 2), (1, 2, 2), "conv", self.dtype,
               param_dtype=self.param_dtype, kernel_init=xavier_init)(x)
    return nn.relu(batch_norm("bn", train, self.dtype, self.param_dtype)(x))


class Tail(nn.Module):
  """The final BN -> ReLU (`bn`)."""

  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    return nn.relu(batch_norm("bn", train, self.dtype, self.param_dtype)(x))


class MFNet3D(nn.Module):
  """MFNet-3D on clips [B, T, H, W, C]; logits [B, num_classes] (see the module docstring)."""

  num_classes: int = 2
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False, mask: Optional[Array] = None,
               return_feature_map: bool = False) -> Array:
    x = masking.loop_valid_frames(x, mask)
    x = Conv1(dtype=self.dtype, param_dtype=self.param_dtype, name="conv1")(x, train)
    x = nn.max_pool(x, (1, 3, 3), strides=(1, 2, 2), padding=((0, 0), (1, 1), (1, 1)))
    num_mid, num_out = 96, 96
    for stage, num_units in enumerate(UNITS_PER_STAGE):
      strides = (2, 1, 1) if stage == 0 else (1, 2, 2)
      x = MFStage(num_mid, num_out, num_units, strides, dtype=self.dtype,
                  param_dtype=self.param_dtype, name=f"conv{stage + 2}")(x, train)
      num_mid, num_out = 2 * num_mid, 2 * num_out
    x = Tail(dtype=self.dtype, param_dtype=self.param_dtype, name="tail")(x, train)
    if return_feature_map:
      return x
    x = jnp.mean(x, axis=(1, 2, 3))
    if self.num_classes == 0:
      return x
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=xavier_init, name="classifier")(x)


# `('conv2', 'B01', 'conv_i1', 'bn', 'scale')` -> `'conv2.B01.conv_i1.bn.weight'`.
@register(input_kind="video", torch_key_map=torch_compat.joined_key_map,
          reference="cypw/PyTorch-MFNet network/mfnet_3d.py MFNET_3D", min_image_size=16)
def mfnet3d(num_classes: int = 2, **kwargs) -> MFNet3D:
  """MFNet-3D (Chen et al. 2018), as cypw/PyTorch-MFNet's MFNET_3D."""
  return MFNet3D(num_classes=num_classes, **kwargs)
