"""DenseNet-121/169/201, identical to torchvision's `densenet*`.

Pre-activation order as torchvision: every dense layer is BN -> ReLU -> 1x1 conv ->
BN -> ReLU -> 3x3 conv (-> dropout), its output concatenated (channels last) after its
input; a transition is BN -> ReLU -> 1x1 conv -> 2x2 average pool; the network ends with
`norm5` -> ReLU -> global average pool -> `classifier`.

Flax names are torchvision's without the `features.` level: `conv0`, `norm0`,
`denseblock2/denselayer7/norm1`, `transition1/conv`, `norm5`, `classifier`;
`densenet_key_map` adds `features.` back. `num_classes=0` returns the pooled features
(1024 / 1664 / 1920), i.e. the input of torchvision's classifier.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from blastjax.models import cpu_conv, torch_compat
from blastjax.models.checks import check_in_channels
from blastjax.models.registry import register

# torchvision's init: kaiming_normal_ (fan_in) for convs; Linear bias zero.
conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class DenseLayer(nn.Module):
  """BN-ReLU-conv1x1(bn_size * growth) -> BN-ReLU-conv3x3(growth) -> dropout."""

  growth_rate: int
  bn_size: int
  drop_rate: float
  conv: Callable
  norm: Callable

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = self.conv(self.bn_size * self.growth_rate, (1, 1), name="conv1")(
        nn.relu(self.norm(name="norm1")(x)))
    y = self.conv(self.growth_rate, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(
        nn.relu(self.norm(name="norm2")(y)))
    if self.drop_rate > 0:
      y = nn.Dropout(self.drop_rate, deterministic=not train)(y)
    return y


class DenseBlock(nn.Module):
  """`num_layers` dense layers, each seeing the concatenation of all earlier outputs."""

  num_layers: int
  growth_rate: int
  bn_size: int
  drop_rate: float
  conv: Callable
  norm: Callable

  @nn.compact
  def __call__(self, x, train: bool = False):
    features = [x]
    for i in range(1, self.num_layers + 1):
      layer = DenseLayer(self.growth_rate, self.bn_size, self.drop_rate, self.conv, self.norm,
                         name=f"denselayer{i}")
      features.append(layer(jnp.concatenate(features, axis=-1), train))
    return jnp.concatenate(features, axis=-1)


class Transition(nn.Module):
  """BN -> ReLU -> 1x1 conv (`features` channels) -> 2x2 average pool, stride 2."""

  features: int
  conv: Callable
  norm: Callable

  @nn.compact
  def __call__(self, x):
    x = self.conv(self.features, (1, 1), name="conv")(nn.relu(self.norm(name="norm")(x)))
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(nn.Module):
  """torchvision's DenseNet on NHWC input with any number of channels."""

  block_config: Sequence[int]
  growth_rate: int = 32
  num_init_features: int = 64
  bn_size: int = 4
  drop_rate: float = 0.0
  num_classes: int = 2
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  in_channels: Optional[int] = None  # Checked against the input when given.

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None, return_feature_map: bool = False):
    del mask  # Single-image model.
    check_in_channels("DenseNet", self.in_channels, x)
    conv = functools.partial(cpu_conv.Conv, use_bias=False, dtype=self.dtype,
                             param_dtype=self.param_dtype, kernel_init=conv_init)
    norm = functools.partial(torch_compat.batch_norm, use_running_average=not train,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    x = jnp.asarray(x, self.dtype)
    x = conv(self.num_init_features, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="conv0")(x)
    x = nn.relu(norm(name="norm0")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    channels = self.num_init_features
    for i, num_layers in enumerate(self.block_config, start=1):
      x = DenseBlock(num_layers, self.growth_rate, self.bn_size, self.drop_rate, conv, norm,
                     name=f"denseblock{i}")(x, train)
      channels += num_layers * self.growth_rate
      if i != len(self.block_config):
        channels //= 2
        x = Transition(channels, conv, norm, name=f"transition{i}")(x)
    x = nn.relu(norm(name="norm5")(x))
    if return_feature_map:
      return x
    x = jnp.mean(x, axis=(1, 2))
    if self.num_classes == 0:
      return x
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=torch_compat.linear_kernel_init, name="classifier")(x)


DENSENET_CONFIGS = {
    "densenet121": dict(block_config=(6, 12, 24, 16), growth_rate=32, num_init_features=64),
    "densenet169": dict(block_config=(6, 12, 32, 32), growth_rate=32, num_init_features=64),
    "densenet201": dict(block_config=(6, 12, 48, 32), growth_rate=32, num_init_features=64),
}


def densenet_key_map(collection: str, path: tuple) -> str:
  """`denseblock1/denselayer2/norm1/mean` -> `features.denseblock1.denselayer2.norm1.running_mean`."""
  key = torch_compat.joined_key_map(collection, path)
  return key if path[0] == "classifier" else f"features.{key}"


def _torchvision(name: str):
  """The `register` arguments of torchvision's model `name`."""
  return dict(input_kind="image", torch_key_map=densenet_key_map,
              reference=f"torchvision.models.{name}", min_image_size=32)


# kwargs: drop_rate, bn_size, dtype, param_dtype, in_channels.
@register(**_torchvision("densenet121"))
def densenet121(num_classes: int = 2, **kwargs) -> DenseNet:
  """torchvision's densenet121."""
  return DenseNet(**DENSENET_CONFIGS["densenet121"], num_classes=num_classes, **kwargs)


@register(**_torchvision("densenet169"))
def densenet169(num_classes: int = 2, **kwargs) -> DenseNet:
  """torchvision's densenet169."""
  return DenseNet(**DENSENET_CONFIGS["densenet169"], num_classes=num_classes, **kwargs)


@register(**_torchvision("densenet201"))
def densenet201(num_classes: int = 2, **kwargs) -> DenseNet:
  """torchvision's densenet201."""
  return DenseNet(**DENSENET_CONFIGS["densenet201"], num_classes=num_classes, **kwargs)
