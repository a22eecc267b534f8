"""Video ResNets r3d_18, mc3_18 and r2plus1d_18, identical to `torchvision.models.video`.

Tran et al., "A Closer Look at Spatiotemporal Convolutions for Action Recognition": the
paper's ResNet3D (all 3x3x3 convolutions), ResNet-MC (3D convolutions in layer1 only,
2D 1x3x3 convolutions after) and ResNet-R(2+1)D (every 3D convolution split into a
1x3x3 spatial and a 3x1x1 temporal one, with the width in between chosen so the
parameter count matches the 3D convolution). torchvision's Kinetics-400 checkpoints load
with `blastjax.weights.from_torch('r3d_18', state_dict, num_classes=400)`.

Flax module names are torchvision's keys with `_` for `.` inside a module name and one
Flax module per torch container: `stem` (children `0`, `1`, and `3`, `4` for R(2+1)D),
`layer1` .. `layer4` (children `0`, `1`: the blocks), a block holding `conv1_0` (the
conv, or for R(2+1)D `conv1_0_0` spatial conv, `conv1_0_1` BatchNorm, `conv1_0_3`
temporal conv), `conv1_1` (BatchNorm), `conv2_0`, `conv2_1`, and `downsample_0` /
`downsample_1`; then `fc`. `torch_compat.dotted_key_map` turns a Flax path into the
torch key by that one rule.

Building blocks for reuse (e.g. a two-branch model using r3d_18 as its 3D branch):
- `BasicStem`, `R2Plus1dStem`: the stems on [B, T, H, W, C] (any C).
- `BasicBlock(planes, conv_type, stride)`: one residual block; `conv_type` is one of
  `CONV_TYPES` ('3d' = Conv3DSimple, 'no_temporal' = Conv3DNoTemporal,
  '2plus1d' = Conv2Plus1D).
- `VideoResStage(planes, num_blocks, conv_type, stride)`: one `layerN`.
- `VideoResNet`: the whole net; `VIDEO_RESNET_CONFIGS[name]` holds each variant's
  kwargs. `model.apply(variables, x, return_feature_map=True)` returns the layer4 map
  [B, T', H', W', 512] before pooling; `num_classes=0` returns the pooled 512-d
  features. `include_stem=False` and `stages=(start, stop)` run part of the net (the
  stages `layer{start+1}` .. `layer{stop}`); a net that stops before layer4 returns its
  feature map. A module embedding a VideoResNet under the name `branch3d` converts a
  torchvision state_dict with `torch_compat.prefixed_key_map(dotted_key_map, 'branch3d')`.

A padding mask (True = padding frame, at any positions) is honoured by moving the valid
frames to the front and looping them over the remaining slots (`masking.compact`) before the stem, so padded content cannot change the output.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from blastjax.models import cpu_conv, masking, torch_compat
from blastjax.models.torch_compat import symmetric_padding
from blastjax.models.registry import register

Array = jax.Array

# torchvision's init: kaiming_normal_(mode='fan_out', nonlinearity='relu') for convs,
# normal(0, 0.01) and zero bias for fc, BatchNorm weight 1 and bias 0.
conv_init = torch_compat.kaiming_normal_fan_out
fc_init = nn.initializers.normal(0.01)

CONV_TYPES = ("3d", "no_temporal", "2plus1d")
STAGE_PLANES = (64, 128, 256, 512)


class Conv3d(nn.Module):
  """A torch-like Conv3d (symmetric padding) on channels-last clips [B, T, H, W, C].

  Parameters are nn.Conv's ('kernel' [kt, kh, kw, in / groups, out], optional 'bias'),
  so weights and key maps do not depend on how it computes. A (kt, 1, 1) kernel with no
  spatial stride runs as one 2D convolution over (T, H*W); any other ungrouped kernel as
  kt 2D convolutions over the B*T' output frames (one per temporal tap, on the frames that
  tap reads), summed; a grouped one as one 3D convolution. The 2D convolutions go through
  `cpu_conv` (small ones a single matrix product on the CPU). The same sums, computed the
  way XLA's CPU backend runs fastest (scripts/benchmark_conv3d.py prints the comparison: a
  strided 3x7x7 stem ~85x faster forward + backward, a strided 3x3x3 ~18x, an unstrided
  3x3x3 the same, grouped 2D convolutions ~8x slower than one grouped 3D).
  """

  features: int
  kernel_size: Tuple[int, int, int]
  strides: Tuple[int, int, int] = (1, 1, 1)
  pads: Tuple[int, int, int] = (0, 0, 0)
  groups: int = 1
  use_bias: bool = False
  dtype: Any = jnp.float32
  kernel_init: Callable = conv_init
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kt, kh, kw = self.kernel_size
    kernel = self.param("kernel", self.kernel_init,
                        (kt, kh, kw, x.shape[-1] // self.groups, self.features), self.param_dtype)
    bias = (self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    (st, sh, sw), (pt, ph, pw) = self.strides, self.pads
    b, t, h, w, c = x.shape
    if kh == kw == 1 and sh == sw == 1 and ph == pw == 0:  # temporal: 2D over (T, H*W)
      y = self._conv2d(x.reshape(b, t, h * w, c), kernel[:, 0], (st, 1), ((pt, pt), (0, 0)))
      y = y.reshape((b, y.shape[1], h, w, self.features))
    elif self.groups == 1:
      y = self._frame_convs(x, kernel)
    else:  # grouped 2D convolutions are slower still on XLA's CPU backend
      y = jax.lax.conv_general_dilated(x, kernel, self.strides, symmetric_padding(*self.pads),
                                       dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                       feature_group_count=self.groups)
    return y if bias is None else y + bias

  def _frame_convs(self, x: Array, kernel: Array) -> Array:
    """The 3D convolution as a sum over its kt temporal taps of 2D convolutions: tap dt
    reads frames dt, dt + st, ... of the temporally padded clip, one per output frame."""
    kt = kernel.shape[0]
    (st, sh, sw), (pt, ph, pw) = self.strides, self.pads
    if pt:
      x = jnp.pad(x, ((0, 0), (pt, pt), (0, 0), (0, 0), (0, 0)))
    b, t, h, w, c = x.shape
    t_out = (t - kt) // st + 1
    y = None
    for dt in range(kt):
      frames = jax.lax.slice_in_dim(x, dt, dt + st * (t_out - 1) + 1, stride=st, axis=1)
      tap = self._conv2d(frames.reshape(b * t_out, h, w, c), kernel[dt], (sh, sw), ((ph, ph), (pw, pw)))
      y = tap if y is None else y + tap
    return y.reshape((b, t_out) + y.shape[1:])

  def _conv2d(self, x, kernel, strides, padding):
    return cpu_conv.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         feature_group_count=self.groups)


def conv3d(features: int, kernel: Sequence[int], strides: Sequence[int], pads: Sequence[int],
           name: str, dtype: Any, groups: int = 1, use_bias: bool = False,
           kernel_init: Callable = conv_init, param_dtype: Any = jnp.float32) -> Conv3d:
  """A torch-like Conv3d (symmetric padding) on channels-last clips."""
  return Conv3d(features, tuple(kernel), tuple(strides), tuple(pads), groups=groups, use_bias=use_bias,
                dtype=dtype, kernel_init=kernel_init, param_dtype=param_dtype, name=name)


def batch_norm(name: str, train: bool, dtype: Any, param_dtype: Any = jnp.float32) -> nn.BatchNorm:
  """torch's BatchNorm3d with its defaults (`torch_compat.batch_norm`), named `name`."""
  return torch_compat.batch_norm(use_running_average=not train, dtype=dtype,
                                 param_dtype=param_dtype, name=name)


def downsample_stride(conv_type: str, stride: int) -> Tuple[int, int, int]:
  """The stride of a stage's 1x1x1 shortcut conv (`get_downsample_stride` in torchvision)."""
  return (1, stride, stride) if conv_type == "no_temporal" else (stride, stride, stride)


def midplanes(inplanes: int, planes: int) -> int:
  """R(2+1)D's intermediate width: the 3x3x3 conv's parameter count, split in two."""
  return (inplanes * planes * 3 * 3 * 3) // (inplanes * 3 * 3 + 3 * planes)


def spatiotemporal_conv(x: Array, conv_type: str, planes: int, mid: int, stride: int, name: str,
                        train: bool, dtype: Any, param_dtype: Any = jnp.float32) -> Array:
  """torchvision's conv builders (Conv3DSimple, Conv3DNoTemporal, Conv2Plus1D) as `name`.

  Must be called inside a compact method: the layers belong to the calling module.
  """
  conv = functools.partial(conv3d, dtype=dtype, param_dtype=param_dtype)
  if conv_type == "3d":
    return conv(planes, (3, 3, 3), (stride,) * 3, (1, 1, 1), name)(x)
  if conv_type == "no_temporal":
    return conv(planes, (1, 3, 3), (1, stride, stride), (0, 1, 1), name)(x)
  if conv_type == "2plus1d":
    x = conv(mid, (1, 3, 3), (1, stride, stride), (0, 1, 1), f"{name}_0")(x)
    x = nn.relu(batch_norm(f"{name}_1", train, dtype, param_dtype)(x))
    return conv(planes, (3, 1, 1), (stride, 1, 1), (1, 0, 0), f"{name}_3")(x)
  raise ValueError(f"conv_type={conv_type!r}; expected one of {CONV_TYPES}")


class BasicStem(nn.Module):
  """Conv (3, 7, 7) stride (1, 2, 2) -> BatchNorm -> ReLU (r3d_18, mc3_18)."""

  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    conv = functools.partial(conv3d, dtype=self.dtype, param_dtype=self.param_dtype)
    x = conv(64, (3, 7, 7), (1, 2, 2), (1, 3, 3), "0")(x)
    return nn.relu(batch_norm("1", train, self.dtype, self.param_dtype)(x))


class R2Plus1dStem(nn.Module):
  """Conv (1, 7, 7) to 45 channels, BN, ReLU, conv (3, 1, 1) to 64, BN, ReLU."""

  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    conv = functools.partial(conv3d, dtype=self.dtype, param_dtype=self.param_dtype)
    x = conv(45, (1, 7, 7), (1, 2, 2), (0, 3, 3), "0")(x)
    x = nn.relu(batch_norm("1", train, self.dtype, self.param_dtype)(x))
    x = conv(64, (3, 1, 1), (1, 1, 1), (1, 0, 0), "3")(x)
    return nn.relu(batch_norm("4", train, self.dtype, self.param_dtype)(x))


STEMS = {"basic": BasicStem, "r2plus1d": R2Plus1dStem}


class BasicBlock(nn.Module):
  """torchvision's video BasicBlock: conv-BN-ReLU, conv-BN, plus the shortcut, ReLU.

  Both convs of the block use the intermediate width computed from the block's input
  and output widths, as torchvision does.
  """

  planes: int
  conv_type: str = "3d"
  stride: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    inplanes = x.shape[-1]
    mid = midplanes(inplanes, self.planes)
    dtypes = (self.dtype, self.param_dtype)
    y = spatiotemporal_conv(x, self.conv_type, self.planes, mid, self.stride, "conv1_0", train,
                            *dtypes)
    y = nn.relu(batch_norm("conv1_1", train, *dtypes)(y))
    y = spatiotemporal_conv(y, self.conv_type, self.planes, mid, 1, "conv2_0", train, *dtypes)
    y = batch_norm("conv2_1", train, *dtypes)(y)
    if self.stride != 1 or inplanes != self.planes:
      x = conv3d(self.planes, (1, 1, 1), downsample_stride(self.conv_type, self.stride), (0, 0, 0),
                 "downsample_0", self.dtype, param_dtype=self.param_dtype)(x)
      x = batch_norm("downsample_1", train, *dtypes)(x)
    return nn.relu(y + x)


class VideoResStage(nn.Module):
  """One `layerN`: `num_blocks` BasicBlocks named `0`, `1`, ...; the first one strides."""

  planes: int
  num_blocks: int = 2
  conv_type: str = "3d"
  stride: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    for i in range(self.num_blocks):
      x = BasicBlock(self.planes, self.conv_type, self.stride if i == 0 else 1, dtype=self.dtype,
                     param_dtype=self.param_dtype, name=str(i))(x, train)
    return x


class VideoResNet(nn.Module):
  """torchvision's VideoResNet (BasicBlock) on clips [B, T, H, W, C]; see the module docstring."""

  conv_types: Sequence[str] = ("3d",) * 4
  layers: Sequence[int] = (2, 2, 2, 2)
  stem: str = "basic"
  num_classes: int = 2
  include_stem: bool = True
  stages: Tuple[int, int] = (0, 4)
  in_channels: Optional[int] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False, mask: Optional[Array] = None,
               return_feature_map: bool = False) -> Array:
    if self.in_channels is not None and self.include_stem and x.shape[-1] != self.in_channels:
      raise ValueError(f"input has {x.shape[-1]} channels but the model was built with "
                       f"in_channels={self.in_channels}; pass clips [B, T, H, W, {self.in_channels}]")
    x = masking.loop_valid_frames(x, mask)
    if self.include_stem:
      if self.stem not in STEMS:
        raise ValueError(f"stem={self.stem!r}; expected one of {sorted(STEMS)}")
      x = STEMS[self.stem](dtype=self.dtype, param_dtype=self.param_dtype, name="stem")(x, train)
    start, stop = self.stages
    for i in range(start, stop):
      x = VideoResStage(STAGE_PLANES[i], self.layers[i], self.conv_types[i], 1 if i == 0 else 2,
                        dtype=self.dtype, param_dtype=self.param_dtype,
                        name=f"layer{i + 1}")(x, train)
    if return_feature_map or stop < 4:
      return x
    x = jnp.mean(x, axis=(1, 2, 3))
    if self.num_classes == 0:
      return x
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=fc_init, name="fc")(x)


VIDEO_RESNET_CONFIGS = {
    "r3d_18": dict(conv_types=("3d",) * 4, stem="basic"),
    "mc3_18": dict(conv_types=("3d",) + ("no_temporal",) * 3, stem="basic"),
    "r2plus1d_18": dict(conv_types=("2plus1d",) * 4, stem="r2plus1d"),
}


def video_resnet_from_config(name: str, num_classes: int = 2, **overrides) -> VideoResNet:
  """`VideoResNet(**VIDEO_RESNET_CONFIGS[name], num_classes=..., **overrides)`."""
  return VideoResNet(num_classes=num_classes, **{**VIDEO_RESNET_CONFIGS[name], **overrides})


def _torchvision(name: str):
  """The `register` arguments of `torchvision.models.video.<name>`."""
  return dict(input_kind="video", torch_key_map=torch_compat.dotted_key_map,
              reference=f"torchvision.models.video.{name}", min_image_size=16)


@register(**_torchvision("r3d_18"))
def r3d_18(num_classes: int = 2, **kwargs) -> VideoResNet:
  """torchvision.models.video.r3d_18 (BasicBlock x [2, 2, 2, 2])."""
  return video_resnet_from_config("r3d_18", num_classes, **kwargs)


@register(**_torchvision("mc3_18"))
def mc3_18(num_classes: int = 2, **kwargs) -> VideoResNet:
  """torchvision.models.video.mc3_18 (BasicBlock x [2, 2, 2, 2])."""
  return video_resnet_from_config("mc3_18", num_classes, **kwargs)


@register(**_torchvision("r2plus1d_18"))
def r2plus1d_18(num_classes: int = 2, **kwargs) -> VideoResNet:
  """torchvision.models.video.r2plus1d_18 (BasicBlock x [2, 2, 2, 2])."""
  return video_resnet_from_config("r2plus1d_18", num_classes, **kwargs)
