"""Inception-v3, identical to `torchvision.models.inception_v3`.

Module names mirror torchvision's (`Conv2d_1a_3x3`, `Mixed_5b.branch1x1`, `AuxLogits`),
so the torch key of every variable is its Flax path joined by dots.

`aux_logits=True` adds torchvision's auxiliary head on `Mixed_6e`; in training mode the
model then returns `(logits, aux_logits)`, otherwise (and in eval mode) only `logits`.
The default is `aux_logits=False`: the head is only a training aid, and without it the
parameter count with `num_classes=2` (21,789,666) is the 21.79M of the benchmark paper.
torchvision's own default is `aux_logits=True` (24,348,900 parameters with two classes);
pass `aux_logits=True` to load such a checkpoint, or drop its `AuxLogits.*` keys.
The auxiliary head needs a 17x17 `Mixed_6e` map, i.e. inputs of at least 299x299.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp

from blastjax.models import cpu_conv, torch_compat
from blastjax.models.checks import check_in_channels
from blastjax.models.registry import register

# torchvision's `transform_input`: re-normalises an ImageNet-normalised RGB input to the
# [-1, 1] scaling the ported Google weights were trained with.
_TRANSFORM_SCALE = (0.229 / 0.5, 0.224 / 0.5, 0.225 / 0.5)
_TRANSFORM_SHIFT = ((0.485 - 0.5) / 0.5, (0.456 - 0.5) / 0.5, (0.406 - 0.5) / 0.5)

IntPair = Union[int, Sequence[int]]
# torchvision's BasicConv2d: nn.BatchNorm2d(out_channels, eps=0.001).
batch_norm = torch_compat.torch_batch_norm(eps=1e-3)


def _pair(value: IntPair) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


class BasicConv2d(nn.Module):
  """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU, torchvision's `BasicConv2d`."""

  features: int
  kernel_size: IntPair
  stride: int = 1
  padding: IntPair = 0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = cpu_conv.Conv(self.features, _pair(self.kernel_size), strides=(self.stride, self.stride),
                padding=torch_compat.symmetric_padding(*_pair(self.padding)), use_bias=False,
                dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)
    x = batch_norm(use_running_average=not train, dtype=self.dtype, param_dtype=self.param_dtype,
                   name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x):
  """torch `F.avg_pool2d(x, 3, stride=1, padding=1)`: zero padding counted in the mean."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=True)


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
  pool_features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(BasicConv2d, dtype=self.dtype, param_dtype=self.param_dtype)
    b1 = conv(64, 1, name="branch1x1")(x, train)
    b5 = conv(48, 1, name="branch5x5_1")(x, train)
    b5 = conv(64, 5, padding=2, name="branch5x5_2")(b5, train)
    b3 = conv(64, 1, name="branch3x3dbl_1")(x, train)
    b3 = conv(96, 3, padding=1, name="branch3x3dbl_2")(b3, train)
    b3 = conv(96, 3, padding=1, name="branch3x3dbl_3")(b3, train)
    bp = conv(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x), train)
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(BasicConv2d, dtype=self.dtype, param_dtype=self.param_dtype)
    b3 = conv(384, 3, stride=2, name="branch3x3")(x, train)
    bd = conv(64, 1, name="branch3x3dbl_1")(x, train)
    bd = conv(96, 3, padding=1, name="branch3x3dbl_2")(bd, train)
    bd = conv(96, 3, stride=2, name="branch3x3dbl_3")(bd, train)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(BasicConv2d, dtype=self.dtype, param_dtype=self.param_dtype)
    c7 = self.channels_7x7
    b1 = conv(192, 1, name="branch1x1")(x, train)
    b7 = conv(c7, 1, name="branch7x7_1")(x, train)
    b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7, train)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7, train)
    bd = conv(c7, 1, name="branch7x7dbl_1")(x, train)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd, train)
    bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd, train)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd, train)
    bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd, train)
    bp = conv(192, 1, name="branch_pool")(_avg_pool_3x3(x), train)
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(BasicConv2d, dtype=self.dtype, param_dtype=self.param_dtype)
    b3 = conv(192, 1, name="branch3x3_1")(x, train)
    b3 = conv(320, 3, stride=2, name="branch3x3_2")(b3, train)
    b7 = conv(192, 1, name="branch7x7x3_1")(x, train)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7, train)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7, train)
    b7 = conv(192, 3, stride=2, name="branch7x7x3_4")(b7, train)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(BasicConv2d, dtype=self.dtype, param_dtype=self.param_dtype)
    b1 = conv(320, 1, name="branch1x1")(x, train)
    b3 = conv(384, 1, name="branch3x3_1")(x, train)
    b3 = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3, train),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3, train)],
                         axis=-1)
    bd = conv(448, 1, name="branch3x3dbl_1")(x, train)
    bd = conv(384, 3, padding=1, name="branch3x3dbl_2")(bd, train)
    bd = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd, train),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd, train)],
                         axis=-1)
    bp = conv(192, 1, name="branch_pool")(_avg_pool_3x3(x), train)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionAux(nn.Module):
  """The auxiliary classifier on Mixed_6e (a 17x17x768 map at 299x299 input)."""

  num_classes: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if min(x.shape[1:3]) < 17 and self.is_initializing():
      # Only the variables' shapes matter in `init`: let a small dummy input build them.
      x = jnp.pad(x, ((0, 0), (0, max(0, 17 - x.shape[1])), (0, max(0, 17 - x.shape[2])), (0, 0)))
    if min(x.shape[1:3]) < 17:
      raise ValueError(
          f"inception_v3 aux_logits=True needs a Mixed_6e map of at least 17x17 (input >= 299x299); "
          f"got {x.shape[1]}x{x.shape[2]}. Use larger images or aux_logits=False.")
    x = nn.avg_pool(x, (5, 5), strides=(3, 3), padding="VALID")
    x = BasicConv2d(128, 1, dtype=self.dtype, param_dtype=self.param_dtype, name="conv0")(x, train)
    x = BasicConv2d(768, 5, dtype=self.dtype, param_dtype=self.param_dtype, name="conv1")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x)


class Inception3(nn.Module):
  """torchvision's `Inception3` on NHWC input with any number of channels."""

  num_classes: int = 2
  aux_logits: bool = False
  transform_input: bool = False
  dropout: float = 0.5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  in_channels: Optional[int] = None  # Checked against the input when given.

  def _transform_input(self, x):
    if x.shape[-1] != 3:
      raise ValueError(f"inception_v3 transform_input=True needs RGB input (3 channels); "
                       f"got {x.shape[-1]} channels. Pass transform_input=False.")
    scale = jnp.asarray(_TRANSFORM_SCALE, x.dtype)
    shift = jnp.asarray(_TRANSFORM_SHIFT, x.dtype)
    return x * scale + shift

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    del mask  # Single-image model.
    check_in_channels("inception_v3", self.in_channels, x)
    x = jnp.asarray(x, self.dtype)
    if self.transform_input:
      x = self._transform_input(x)
    conv = functools.partial(BasicConv2d, dtype=self.dtype, param_dtype=self.param_dtype)
    x = conv(32, 3, stride=2, name="Conv2d_1a_3x3")(x, train)
    x = conv(32, 3, name="Conv2d_2a_3x3")(x, train)
    x = conv(64, 3, padding=1, name="Conv2d_2b_3x3")(x, train)
    x = _max_pool_3x3_s2(x)
    x = conv(80, 1, name="Conv2d_3b_1x1")(x, train)
    x = conv(192, 3, name="Conv2d_4a_3x3")(x, train)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, dtype=self.dtype, param_dtype=self.param_dtype, name="Mixed_5b")(x, train)
    x = InceptionA(64, dtype=self.dtype, param_dtype=self.param_dtype, name="Mixed_5c")(x, train)
    x = InceptionA(64, dtype=self.dtype, param_dtype=self.param_dtype, name="Mixed_5d")(x, train)
    x = InceptionB(dtype=self.dtype, param_dtype=self.param_dtype, name="Mixed_6a")(x, train)
    x = InceptionC(128, dtype=self.dtype, param_dtype=self.param_dtype, name="Mixed_6b")(x, train)
    x = InceptionC(160, dtype=self.dtype, param_dtype=self.param_dtype, name="Mixed_6c")(x, train)
    x = InceptionC(160, dtype=self.dtype, param_dtype=self.param_dtype, name="Mixed_6d")(x, train)
    x = InceptionC(192, dtype=self.dtype, param_dtype=self.param_dtype, name="Mixed_6e")(x, train)
    aux = None
    # torchvision runs the head only in training; `init` builds its variables regardless.
    use_aux = self.aux_logits and self.num_classes > 0
    if use_aux and (train or self.is_initializing()):
      aux = InceptionAux(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                         name="AuxLogits")(x, train)
    x = InceptionD(dtype=self.dtype, param_dtype=self.param_dtype, name="Mixed_7a")(x, train)
    x = InceptionE(dtype=self.dtype, param_dtype=self.param_dtype, name="Mixed_7b")(x, train)
    x = InceptionE(dtype=self.dtype, param_dtype=self.param_dtype, name="Mixed_7c")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout, deterministic=not train, name="dropout")(x)
    if self.num_classes == 0:
      return x
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="fc")(x)
    if use_aux and train:
      return logits, aux
    return logits


# Flax path -> torchvision key: module names joined by dots, then the torch leaf.
@register(input_kind="image", torch_key_map=torch_compat.joined_key_map,
          reference="torchvision.models.inception_v3", min_image_size=75)
def inception_v3(num_classes: int = 2, **kwargs) -> Inception3:
  """Inception-v3 (torchvision); `aux_logits`, `transform_input`, `dropout`, `dtype`,
  `param_dtype`."""
  return Inception3(num_classes=num_classes, **kwargs)
