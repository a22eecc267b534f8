"""AMSNet (`papers/amsnet_early_blastocyst_prediction.txt`): Attentive Multi-focus Selection.

A ResNet-50 with a temporal shift (TSM) in every residual block and, after Res-1, the
Multi-focus Feature Selection module (MFS):
1. the stem and Res-1 (torchvision's conv1 .. layer1), shared by the m focal planes;
2. channel attention over the m * c concatenated channels U: average- and max-pooled
   channel descriptors through one shared MLP, added, sigmoid, W o U;
3. a 1x1 convolution (+ BatchNorm, ReLU) reducing m * c channels back to c;
4. a Gaussian non-local block (Wang et al. 2018, f(x_i, x_j) = exp(x_i . x_j), g a 1x1
   conv, max-pool sub-sampling of the key/value side, W z + BatchNorm initialised to
   zero) added residually;
then Res-2 .. Res-4, pooling and one prediction per time step: logits [B, T, classes].

The paper's TSM "shifts part of the channels of its input feature at moment t-1 into
that at moment t" (a memory of the past), which is the reference's one-way online
shift: `shift='online'` (default) makes every prediction y_t depend only on frames
<= t, as early prediction needs. `shift='bidirectional'` gives the offline TSM, and
`shift='none'` no shift at all (Table 1's baseline row: each frame on its own).

`num_planes` (0 = all) keeps the central `num_planes` of the P input planes (planes
(P - n) // 2 onwards), for Table 1's #F rows on data that holds more planes (7 planes,
#F 3: the central 3); the planes are expected in focal-offset order.

Padded steps (mask True, at any positions: a late start, an imaging gap, a short
sequence) are closed up before the network (`masking.compact`: the valid frames first,
in order, then looped), cannot shift anything into a valid step, keep their slot in the
output and get logits 0 there; the
loss must ignore them (the paper's "ignore the loss back-propagation of the padded
frames").

Variable names: `front` is torchvision's conv1/bn1/layer1 and `back` its layer2..4 (see
`blastjax.models.resnet`), so ImageNet or Kinetics ResNet-50 weights load into both.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from blastjax.models import cpu_conv, masking, torch_compat
from blastjax.models.registry import register
from blastjax.models.resnet import ResNet
from blastjax.models.tsm import backbone_config, make_shift

Array = jax.Array


class ChannelAttention(nn.Module):
  """CBAM-style channel attention: sigmoid(MLP(avg(U)) + MLP(max(U))) o U."""

  reduction: int = 16
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, u):
    channels = u.shape[-1]
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    hidden = dense(max(channels // self.reduction, 1), name="mlp_0")
    out = dense(channels, name="mlp_2")

    def mlp(v):
      return out(nn.relu(hidden(v)))

    weights = nn.sigmoid(mlp(jnp.mean(u, axis=(1, 2))) + mlp(jnp.max(u, axis=(1, 2))))
    return u * weights[:, None, None, :]


class GaussianNonLocal2D(nn.Module):
  """2D Gaussian non-local block: z = BN(W y) + x, y_i = sum_j softmax_j(x_i . x_j) g(x_j)."""

  sub_sample: bool = True
  norm: Any = nn.BatchNorm
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, height, width, channels = x.shape
    inter = max(channels // 2, 1)
    conv = functools.partial(cpu_conv.Conv, kernel_size=(1, 1), dtype=self.dtype,
                             param_dtype=self.param_dtype)
    g = conv(inter, name="g")(x)
    keys = x
    if self.sub_sample and height >= 2 and width >= 2:
      g = nn.max_pool(g, (2, 2), strides=(2, 2))
      keys = nn.max_pool(keys, (2, 2), strides=(2, 2))
    queries = x.reshape(batch, height * width, channels)
    keys = keys.reshape(batch, -1, channels)
    g = g.reshape(batch, -1, inter)
    affinity = nn.softmax(jnp.einsum("bqc,bkc->bqk", queries, keys), axis=-1)
    y = jnp.einsum("bqk,bkc->bqc", affinity, g).reshape(batch, height, width, inter)
    y = conv(channels, name="W_0")(y)
    y = self.norm(name="W_1", scale_init=nn.initializers.zeros)(y)
    return x + y


class MultiFocusSelection(nn.Module):
  """MFS after the shared Res-1: channel attention, 1x1 reduction, non-local attention."""

  channel_attention: bool = True
  spatial_attention: bool = True
  reduction: int = 16
  norm: Any = nn.BatchNorm
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, planes):
    """planes [N, P, h, w, c] -> [N, h, w, c]."""
    n, p, h, w, c = planes.shape
    u = jnp.transpose(planes, (0, 2, 3, 1, 4)).reshape(n, h, w, p * c)  # [u_1 .. u_mc]
    if self.channel_attention:
      u = ChannelAttention(self.reduction, self.dtype, self.param_dtype,
                           name="channel_attention")(u)
    f = cpu_conv.Conv(c, (1, 1), use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                name="reduce_conv")(u)
    f = nn.relu(self.norm(name="reduce_bn")(f))
    if self.spatial_attention:
      f = GaussianNonLocal2D(norm=self.norm, dtype=self.dtype, param_dtype=self.param_dtype,
                             name="non_local")(f)
    return f


class AMSNet(nn.Module):
  """TSM-ResNet with multi-focus selection; per-step logits [B, T, num_classes]."""

  backbone: str = "resnet50"
  num_classes: int = 2
  fold_div: int = 8
  shift: str = "online"
  num_planes: int = 0
  channel_attention: bool = True
  spatial_attention: bool = True
  reduction: int = 16
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    if x.ndim != 6:
      raise ValueError(f"AMSNet expects focal video [B, T, P, H, W, C]; got shape {x.shape}")
    x = self._central_planes(x)
    batch, frames, planes = x.shape[:3]
    config = backbone_config(self.backbone)
    # The network runs on the valid frames moved to the front (a gap or a late start is
    # closed up, so the shift joins the frames on either side of it); the per-step
    # outputs go back to their original slots at the end.
    x, packed_mask = masking.compact(x, mask)
    valid = jnp.ones((batch, frames), bool) if mask is None else ~packed_mask
    norm = functools.partial(torch_compat.batch_norm, use_running_average=not train,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    # Front: time folded inside each (sequence, plane) pair so the shift runs along T.
    by_plane = jnp.swapaxes(x, 1, 2).reshape((batch * planes * frames,) + x.shape[3:])
    plane_valid = jnp.repeat(valid[:, None, :], planes, axis=1)  # [B, P, T]
    front = ResNet(**config, num_classes=0, **dtypes, stages=(0, 1), name="front",
                   block_input_transform=self._shift(frames, plane_valid.reshape(batch * planes, frames)))
    maps = front(by_plane, train=train)  # [B*P*T, h, w, c]
    maps = maps.reshape((batch, planes, frames) + maps.shape[1:])
    maps = jnp.swapaxes(maps, 1, 2).reshape((batch * frames, planes) + maps.shape[3:])
    fused = MultiFocusSelection(self.channel_attention, self.spatial_attention, self.reduction,
                                norm, **dtypes, name="mfs")(maps)  # [B*T, h, w, c]
    back = ResNet(**config, num_classes=0, **dtypes, include_stem=False, stages=(1, 4),
                  name="back", block_input_transform=self._shift(frames, valid))
    features = back(fused, train=train, return_feature_map=True)
    features = jnp.mean(features, axis=(1, 2)).reshape(batch, frames, -1)
    if self.num_classes:
      features = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
      features = nn.Dense(self.num_classes, **dtypes, name="fc")(features)
    features = jnp.where(valid[:, :, None], features, 0.0)
    return masking.scatter_steps(features, mask)

  def _shift(self, frames: int, valid):
    """The residual blocks' temporal shift; None (no transform) for shift='none'."""
    if self.shift == "none":
      return None
    return make_shift(self.shift, frames, self.fold_div, valid)

  def _central_planes(self, x):
    """x [B, T, P, ...] with only its central `num_planes` planes (all when 0)."""
    planes = x.shape[2]
    if not self.num_planes or self.num_planes == planes:
      return x
    if self.num_planes > planes:
      raise ValueError(f"AMSNet num_planes={self.num_planes}: the input has only {planes} focal planes; "
                       "use data with more planes or a smaller num_planes (model_kwargs.num_planes)")
    start = (planes - self.num_planes) // 2
    return x[:, :, start:start + self.num_planes]


def embedded_resnet(model: AMSNet) -> dict:
  """A `model.backbone` ResNet checkpoint fills the shared front (stem, Res-1) and the
  back (Res-2..4); see `blastjax.weights.from_torch(..., source=...)`."""
  return {model.backbone: {"front": ("conv1", "bn1", "layer1_*"), "back": ("layer[234]_*",)}}


@register(input_kind="video_focal", per_step=True, min_image_size=32, embeds=embedded_resnet,
          reference="amsnet_early_blastocyst_prediction.txt (no public code)")
def amsnet(num_classes: int = 2, **kwargs) -> AMSNet:
  """AMSNet: TSM-ResNet-50 + multi-focus selection, one prediction per time step; kwargs:
  backbone, fold_div, shift ('online'|'bidirectional'|'none'), num_planes (0 = all),
  channel_attention, spatial_attention, reduction, dropout_rate, dtype,
  param_dtype."""
  return AMSNet(num_classes=num_classes, **kwargs)
