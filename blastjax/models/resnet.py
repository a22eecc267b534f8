"""ResNet, ResNeXt and Wide ResNet, identical to torchvision's `resnet*`, `resnext*`, `wide_resnet*`.

In the style of flax `examples/imagenet/models.py`: one `ResNet` module, `conv`/`norm`
made once as `functools.partial`s, every variant a row of `RESNET_CONFIGS`.

Flax module names are torchvision's with `_` for `.`: `conv1`, `bn1`, `layer3_5` (a block)
holding `conv1` ... `bn3` and `downsample_0` (1x1 conv) / `downsample_1` (BatchNorm), and
`fc`; `resnet_key_map` turns a Flax path into the torch key by that one rule.

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
  `prefixed(resnet_key_map, 'front', '')` and `prefixed(resnet_key_map, 'back', '')`
  (each half takes the keys of its own layers; split the state_dict by key prefix).
- `prefixed(key_map, flax_prefix, torch_prefix)`: the key map of a ResNet embedded
  under `flax_prefix` in a bigger module whose torch reference holds it under
  `torch_prefix` (e.g. `prefixed(resnet_key_map, 'encoder', 'base_model')`).

`num_classes=0` returns the pooled features (512 for resnet18/34, 2048 otherwise).
The input may have any number of channels (taken from the input; `in_channels`, when
given, is checked against it).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from blastjax import weights
from blastjax.models.checks import check_in_channels
from blastjax.models.registry import register

Array = jax.Array

# torchvision's init: kaiming_normal_(mode='fan_out', nonlinearity='relu') for convs, the
# default nn.Linear init (uniform +-1/sqrt(fan_in)) for fc.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def linear_bias_init(fan_in: int):
  """torch's nn.Linear bias init: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / max(fan_in, 1) ** 0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _pad(kernel: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
  p = (kernel - 1) // 2
  return ((p, p), (p, p))


class BasicBlock(nn.Module):
  """torchvision's BasicBlock: 3x3 conv -> BN -> ReLU -> 3x3 conv -> BN, plus shortcut."""

  planes: int
  stride: int = 1
  conv: Callable = nn.Conv
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
  conv: Callable = nn.Conv
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
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, use_fast_variance=False, dtype=self.dtype)
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
    return nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=linear_kernel_init,
                    bias_init=linear_bias_init(x.shape[-1]), name="fc")(x)


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


def resnet_key_map(collection: str, path: tuple) -> str:
  """`layer1_0/downsample_1/mean` -> `layer1.0.downsample.1.running_mean`."""
  parts = [name.replace("_", ".") for name in path[:-1]]
  return ".".join(parts + [weights.torch_suffix(collection, path[-1])])


def prefixed(key_map: Callable[[str, tuple], str], flax_prefix: Union[str, Sequence[str]],
             torch_prefix: str = "") -> Callable[[str, tuple], str]:
  """`key_map` for a module embedded under `flax_prefix` (a name or a path of names).

  The returned map strips `flax_prefix` from the Flax path, applies `key_map` and puts
  `torch_prefix.` in front of the torch key (nothing when `torch_prefix` is empty). A
  path outside `flax_prefix` is an error naming both.
  """
  prefix = (flax_prefix,) if isinstance(flax_prefix, str) else tuple(flax_prefix)

  def mapped(collection: str, path: tuple) -> str:
    if tuple(path[:len(prefix)]) != prefix:
      raise ValueError(f"Flax path {'/'.join(path)} is not under {'/'.join(prefix)}")
    key = key_map(collection, tuple(path[len(prefix):]))
    return f"{torch_prefix}.{key}" if torch_prefix else key

  return mapped


def _register(name: str):
  def builder(num_classes: int = 2, **kwargs) -> ResNet:
    return resnet_from_config(name, num_classes=num_classes, **kwargs)

  builder.__name__ = name
  builder.__doc__ = (f"torchvision's {name}; kwargs: dtype, zero_init_residual, "
                     "block_input_transform, include_stem, stages, in_channels.")
  return register(name, input_kind="image", torch_key_map=resnet_key_map,
                  reference=f"torchvision.models.{name}", min_image_size=32)(builder)


resnet18 = _register("resnet18")
resnet34 = _register("resnet34")
resnet50 = _register("resnet50")
resnet101 = _register("resnet101")
resnet152 = _register("resnet152")
resnext50_32x4d = _register("resnext50_32x4d")
resnext101_32x8d = _register("resnext101_32x8d")
wide_resnet50_2 = _register("wide_resnet50_2")
wide_resnet101_2 = _register("wide_resnet101_2")
