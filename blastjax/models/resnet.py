"""ResNet, ResNeXt and Wide ResNet, identical to torchvision's `resnet*`, `resnext*`, `wide_resnet*`.

In the style of flax `examples/imagenet/models.py`: one `ResNet` module, `conv`/`norm`
made once as `functools.partial`s, every variant a row of `RESNET_CONFIGS`.

Flax module names are torchvision's with `_` for `.`: `conv1`, `bn1`, `layer3_5` (a block)
holding `conv1` ... `bn3` and `downsample_0` (1x1 conv) / `downsample_1` (BatchNorm), and
`fc`; `torch_compat.dotted_key_map` turns a Flax path into the torch key by that one rule.

Reuse by other modules (recurrent heads, TSM, AMSNet):
- `BasicBlock`, `Bottleneck`, `ResNet`, `RESNET_CONFIGS` (name -> ResNet kwargs) and
  `resnet_from_config(name, **overrides)`.
- `ResNet.block_input_transform`: a parameter-free, shape-preserving function applied to
  the residual branch input of every block before its `conv1` (the identity/downsample
  path sees the untouched input). TSM's residual shift goes there.
- `model.apply(variables, x, return_feature_map=True)` returns the last feature map
  [B, h, w, C] before pooling.
- Partial networks: `include_stem=False` skips conv1/bn1/maxpool and `stages=(start, stop)`
  runs only `layer{start+1}` .. `layer{stop}` (0-based, stop exclusive). A network that
  does not end with the last stage returns its feature map. AMSNet's per-focal-plane
  front is `ResNet(..., stages=(0, 1))` (stem + layer1) and its back is
  `ResNet(..., include_stem=False, stages=(1, 4))` (layer2..4, pooling, fc). Both keep
  torchvision's module names, so one torchvision state_dict feeds both through
  `prefixed_key_map(dotted_key_map, 'front')` and `prefixed_key_map(dotted_key_map, 'back')`
  (each half takes the keys of its own layers; split the state_dict by key prefix).
- `torch_compat.prefixed_key_map(key_map, flax_prefix, torch_prefix)`: the key map of a
  ResNet embedded under `flax_prefix` in a bigger module whose torch reference holds it
  under `torch_prefix` (e.g. `prefixed_key_map(dotted_key_map, 'encoder', 'base_model')`).

`num_classes=0` returns the pooled features (512 for resnet18/34, 2048 otherwise).
The input may have any number of channels (taken from the input; `in_channels`, when
given, is checked against it).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from blastjax.models import cpu_conv, torch_compat
from blastjax.models.checks import check_in_channels
from blastjax.models.registry import register
from blastjax.models.torch_compat import kernel_padding as _pad

Array = jax.Array


class BasicBlock(nn.Module):
  """torchvision's BasicBlock: 3x3 conv -> BN -> ReLU -> 3x3 conv -> BN, plus shortcut."""

  planes: int
  stride: int = 1
  conv: Callable = cpu_conv.Conv
  norm: Callable = nn.BatchNorm
  zero_init_residual: bool = False
  block_input_transform: Optional[Callable[[Array], Array]] = None

  expansion = 1

  @nn.compact
  def __call__(self, x):
    y = x if self.block_input_transform is None else self.block_input_transform(x)
    y = self.conv(self.planes, (3, 3), (self.stride, self.stride), padding=_pad(3), name="conv1")(y)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.planes, (3, 3), padding=_pad(3), name="conv2")(y)
    y = self.norm(name="bn2", scale_init=_last_scale_init(self.zero_init_residual))(y)
    return nn.relu(y + _shortcut(self, x, self.planes))


class Bottleneck(nn.Module):
  """torchvision's Bottleneck (ResNet V1.5: the stride is on the 3x3 conv), with groups."""

  planes: int
  stride: int = 1
  groups: int = 1
  base_width: int = 64
  conv: Callable = cpu_conv.Conv
  norm: Callable = nn.BatchNorm
  zero_init_residual: bool = False
  block_input_transform: Optional[Callable[[Array], Array]] = None

  expansion = 4

  @nn.compact
  def __call__(self, x):
    width = int(self.planes * (self.base_width / 64.0)) * self.groups
    y = x if self.block_input_transform is None else self.block_input_transform(x)
    y = nn.relu(self.norm(name="bn1")(self.conv(width, (1, 1), name="conv1")(y)))
    y = self.conv(width, (3, 3), (self.stride, self.stride), padding=_pad(3),
                  feature_group_count=self.groups, name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(self.planes * self.expansion, (1, 1), name="conv3")(y)
    y = self.norm(name="bn3", scale_init=_last_scale_init(self.zero_init_residual))(y)
    return nn.relu(y + _shortcut(self, x, self.planes * self.expansion))


def _last_scale_init(zero: bool):
  return nn.initializers.zeros if zero else nn.initializers.ones


def _shortcut(block: nn.Module, x: Array, out_channels: int) -> Array:
  """Identity, or torchvision's `downsample` (1x1 strided conv + BN) when shapes change."""
  if block.stride == 1 and x.shape[-1] == out_channels:
    return x
  x = block.conv(out_channels, (1, 1), (block.stride, block.stride), name="downsample_0")(x)
  return block.norm(name="downsample_1")(x)


class ResNet(nn.Module):
  """torchvision's ResNet on NHWC input (see the module docstring for partial networks)."""

  stage_sizes: Sequence[int]
  block_cls: type
  groups: int = 1
  width_per_group: int = 64
  num_classes: int = 2
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  zero_init_residual: bool = False
  block_input_transform: Optional[Callable[[Array], Array]] = None
  include_stem: bool = True
  stages: Optional[Tuple[int, int]] = None  # (start, stop), 0-based; None = all.
  in_channels: Optional[int] = None  # Checked against the input when given.

  def stage_range(self) -> Tuple[int, int]:
    start, stop = self.stages if self.stages is not None else (0, len(self.stage_sizes))
    if not 0 <= start < stop <= len(self.stage_sizes):
      raise ValueError(f"ResNet stages={self.stages!r}: expected (start, stop) with "
                       f"0 <= start < stop <= {len(self.stage_sizes)}")
    return start, stop

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None, return_feature_map: bool = False):
    del mask  # Single-image model.
    if self.include_stem:
      check_in_channels("ResNet", self.in_channels, x)
    # torchvision's init: kaiming_normal_(mode='fan_out', nonlinearity='relu') for convs,
    # nn.Linear's default for fc.
    conv = functools.partial(cpu_conv.Conv, use_bias=False, dtype=self.dtype,
                             param_dtype=self.param_dtype,
                             kernel_init=torch_compat.kaiming_normal_fan_out)
    norm = functools.partial(torch_compat.batch_norm, use_running_average=not train,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    x = jnp.asarray(x, self.dtype)
    if self.include_stem:
      x = conv(64, (7, 7), (2, 2), padding=_pad(7), name="conv1")(x)
      x = nn.relu(norm(name="bn1")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))
    start, stop = self.stage_range()
    block_kwargs = dict(conv=conv, norm=norm, zero_init_residual=self.zero_init_residual,
                        block_input_transform=self.block_input_transform)
    if self.block_cls is Bottleneck:
      block_kwargs.update(groups=self.groups, base_width=self.width_per_group)
    for stage in range(start, stop):
      for index in range(self.stage_sizes[stage]):
        stride = 2 if stage > 0 and index == 0 else 1
        x = self.block_cls(64 * 2 ** stage, stride=stride, **block_kwargs,
                           name=f"layer{stage + 1}_{index}")(x)
    if return_feature_map or stop < len(self.stage_sizes):
      return x
    x = jnp.mean(x, axis=(1, 2))
    if self.num_classes == 0:
      return x
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=torch_compat.linear_kernel_init,
                    bias_init=torch_compat.linear_bias_init(x.shape[-1]), name="fc")(x)


RESNET_CONFIGS = {
    "resnet18": dict(stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock),
    "resnet34": dict(stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock),
    "resnet50": dict(stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck),
    "resnet101": dict(stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck),
    "resnet152": dict(stage_sizes=(3, 8, 36, 3), block_cls=Bottleneck),
    "resnext50_32x4d": dict(stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck, groups=32,
                            width_per_group=4),
    "resnext101_32x8d": dict(stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck, groups=32,
                             width_per_group=8),
    "wide_resnet50_2": dict(stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck, width_per_group=128),
    "wide_resnet101_2": dict(stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck, width_per_group=128),
}


def resnet_from_config(name: str, num_classes: int = 2, **overrides) -> ResNet:
  """`ResNet(**RESNET_CONFIGS[name], num_classes=..., **overrides)` with a clear error."""
  if name not in RESNET_CONFIGS:
    raise ValueError(f"unknown ResNet variant {name!r}; known: {', '.join(RESNET_CONFIGS)}")
  return ResNet(**RESNET_CONFIGS[name], num_classes=num_classes, **overrides)


def _torchvision(name: str):
  """The `register` arguments of torchvision's model `name`."""
  return dict(input_kind="image", torch_key_map=torch_compat.dotted_key_map,
              reference=f"torchvision.models.{name}", min_image_size=32)


# One function per model, as torchvision; kwargs: dtype, param_dtype, zero_init_residual,
# block_input_transform, include_stem, stages, in_channels.
@register(**_torchvision("resnet18"))
def resnet18(num_classes: int = 2, **kwargs) -> ResNet:
  """torchvision's resnet18."""
  return resnet_from_config("resnet18", num_classes, **kwargs)


@register(**_torchvision("resnet34"))
def resnet34(num_classes: int = 2, **kwargs) -> ResNet:
  """torchvision's resnet34."""
  return resnet_from_config("resnet34", num_classes, **kwargs)


@register(**_torchvision("resnet50"))
def resnet50(num_classes: int = 2, **kwargs) -> ResNet:
  """torchvision's resnet50."""
  return resnet_from_config("resnet50", num_classes, **kwargs)


@register(**_torchvision("resnet101"))
def resnet101(num_classes: int = 2, **kwargs) -> ResNet:
  """torchvision's resnet101."""
  return resnet_from_config("resnet101", num_classes, **kwargs)


@register(**_torchvision("resnet152"))
def resnet152(num_classes: int = 2, **kwargs) -> ResNet:
  """torchvision's resnet152."""
  return resnet_from_config("resnet152", num_classes, **kwargs)


@register(**_torchvision("resnext50_32x4d"))
def resnext50_32x4d(num_classes: int = 2, **kwargs) -> ResNet:
  """torchvision's resnext50_32x4d."""
  return resnet_from_config("resnext50_32x4d", num_classes, **kwargs)


@register(**_torchvision("resnext101_32x8d"))
def resnext101_32x8d(num_classes: int = 2, **kwargs) -> ResNet:
  """torchvision's resnext101_32x8d."""
  return resnet_from_config("resnext101_32x8d", num_classes, **kwargs)


@register(**_torchvision("wide_resnet50_2"))
def wide_resnet50_2(num_classes: int = 2, **kwargs) -> ResNet:
  """torchvision's wide_resnet50_2."""
  return resnet_from_config("wide_resnet50_2", num_classes, **kwargs)


@register(**_torchvision("wide_resnet101_2"))
def wide_resnet101_2(num_classes: int = 2, **kwargs) -> ResNet:
  """torchvision's wide_resnet101_2."""
  return resnet_from_config("wide_resnet101_2", num_classes, **kwargs)
