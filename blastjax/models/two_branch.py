"""YOWO-style two-branch network: a 2D net on the key frame, a 3D net on the clip, CFAM.

Köpüklü et al.'s "You Only Watch Once" (used by the restaurant action-recognition
paper): a 2D CNN extracts spatial features of the clip's key frame (its last frame), a
3D CNN spatiotemporal features of the whole clip; the 3D map is averaged over time, both
maps are brought to the same size and concatenated on channels, and the CFAM block
(channel fusion and attention mechanism) fuses them:

  conv1x1 -> BN -> ReLU -> conv3x3 -> BN -> ReLU -> channel attention -> conv3x3 -> BN
  -> ReLU -> Dropout2d(0.1) -> conv1x1

The channel attention (`CAM_Module` of YOWO, from DANet) uses the Gram matrix of the
channels: energy = X X^T [C, C]; attention = softmax(max(energy) - energy) per row;
out = gamma * attention X + X with a learned scalar gamma initialised to 0. YOWO then
regresses YOLOv2 boxes; for embryo classification the fused map is average-pooled and
classified by a Dense layer (`num_classes=0` returns the pooled CFAM features).

Backbones are registered blastjax models, chosen by name and kwargs:
`backbone_2d='resnet18'` (an 'image' model) and `backbone_3d='r3d_18'` (a 'video'
model); each must accept `return_feature_map=True` (both do, as do every ResNet and
video ResNet here). When the maps differ in size (resnet18 downsamples by 32, r3d_18 by
16) the larger is resized (bilinear, antialiased) to the smaller's size. Small variants for tests: pass
`backbone_2d_kwargs={'stages': (0, 1)}` and `inter_channels=32`.

Masks: the key frame is each clip's last valid frame, and the 3D branch loops the valid
frames over the padded slots (as every video model here), so padding cannot change the
output.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from blastjax.models import cpu_conv, masking, registry, torch_compat
from blastjax.models.registry import register


class ChannelAttention(nn.Module):
  """YOWO's `CAM_Module`: Gram-matrix channel attention with a zero-initialised gain."""

  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, height, width, channels = x.shape
    flat = x.reshape(batch, height * width, channels)
    energy = jnp.einsum("bnc,bnd->bcd", flat, flat)  # Gram matrix [B, C, C]
    energy = jnp.max(energy, axis=-1, keepdims=True) - energy
    attention = jax.nn.softmax(energy.astype(jnp.float32), axis=-1).astype(x.dtype)
    out = jnp.einsum("bcd,bnd->bnc", attention, flat).reshape(x.shape)
    gamma = self.param("gamma", nn.initializers.zeros, (1,), self.param_dtype)
    return gamma.astype(x.dtype) * out + x


class CFAM(nn.Module):
  """Channel fusion and attention mechanism of YOWO (`CFAMBlock`)."""

  inter_channels: int = 1024
  out_channels: int = 1024
  dropout_rate: float = 0.1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _conv_bn_relu(self, x, kernel: int, train: bool, name: str):
    x = cpu_conv.Conv(self.inter_channels, (kernel, kernel), padding=torch_compat.kernel_padding(kernel),
                use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                name=f"{name}_0")(x)
    x = torch_compat.batch_norm(use_running_average=not train, dtype=self.dtype,
                                param_dtype=self.param_dtype, name=f"{name}_1")(x)
    return nn.relu(x)

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self._conv_bn_relu(x, 1, train, "conv_bn_relu1")
    x = self._conv_bn_relu(x, 3, train, "conv_bn_relu2")
    x = ChannelAttention(dtype=self.dtype, param_dtype=self.param_dtype, name="sc")(x)
    x = self._conv_bn_relu(x, 3, train, "conv_bn_relu3")
    # Dropout2d drops whole channels: one draw per (example, channel).
    x = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2), deterministic=not train)(x)
    return cpu_conv.Conv(self.out_channels, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype,
                   name="conv_out_1")(x)


def _resize(feature_map, size):
  """[B, h, w, C] -> [B, *size, C] (bilinear, antialiased); unchanged when already that size."""
  if feature_map.shape[1:3] == size:
    return feature_map
  return jax.image.resize(feature_map, feature_map.shape[:1] + size + feature_map.shape[3:],
                          method="linear")


def last_valid_frame(x, mask: Optional[jnp.ndarray]):
  """x [B, T, ...] -> [B, ...] at each sequence's last non-padding frame."""
  last = masking.last_valid_index(mask, x.shape[1], x.shape[0])
  index = last.reshape((-1, 1) + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1)[:, 0]


class TwoBranchCFAM(nn.Module):
  """Key-frame 2D branch + clip 3D branch fused by CFAM; logits [B, num_classes]."""

  num_classes: int = 2
  backbone_2d: str = "resnet18"
  backbone_3d: str = "r3d_18"
  backbone_2d_kwargs: Optional[dict] = None
  backbone_3d_kwargs: Optional[dict] = None
  inter_channels: int = 1024
  out_channels: int = 1024
  dropout_rate: float = 0.1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _backbone(self, name: str, kind: str, kwargs: Optional[dict], module_name: str):
    spec = registry.get_spec(name)
    if spec.input_kind != kind:
      raise ValueError(f"two-branch {module_name}={name!r} takes {spec.input_kind!r} input; "
                       f"choose a registered {kind!r} model ({', '.join(registry.list_models(kind))})")
    # Builders take the model name as their first argument, so the module is named by clone.
    dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
    module = registry.create(name, num_classes=0, **{**dtypes, **(kwargs or {})})
    return module.clone(parent=self, name=module_name)

  @nn.compact
  def __call__(self, x, train: bool = False, mask: Optional[jnp.ndarray] = None):
    key_frame = last_valid_frame(x, mask)
    map_2d = self._backbone(self.backbone_2d, "image", self.backbone_2d_kwargs, "backbone_2d")(
        key_frame, train=train, return_feature_map=True)
    map_3d = self._backbone(self.backbone_3d, "video", self.backbone_3d_kwargs, "backbone_3d")(
        x, train=train, mask=mask, return_feature_map=True)
    map_3d = jnp.mean(map_3d, axis=1)  # YOWO averages the clip's remaining time steps
    size = tuple(min(a, b) for a, b in zip(map_2d.shape[1:3], map_3d.shape[1:3]))
    map_2d, map_3d = (_resize(m, size) for m in (map_2d, map_3d))
    fused = jnp.concatenate([map_3d, map_2d.astype(map_3d.dtype)], axis=-1)
    fused = CFAM(self.inter_channels, self.out_channels, self.dropout_rate, dtype=self.dtype,
                 param_dtype=self.param_dtype, name="cfam")(fused, train)
    pooled = jnp.mean(fused, axis=(1, 2))
    if self.num_classes == 0:
      return pooled
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="fc")(pooled)


def embedded_backbones(model: TwoBranchCFAM) -> dict:
  """Each branch's registered model fills that branch (`backbone_2d`, `backbone_3d`);
  see `blastjax.weights.from_torch(..., source=...)`."""
  return {model.backbone_2d: {"backbone_2d": ("*",)}, model.backbone_3d: {"backbone_3d": ("*",)}}


@register(input_kind="video", min_image_size=32, embeds=embedded_backbones,
          reference="Köpüklü et al., YOWO (wei-tim/YOWO cfam.py), classification head")
def yowo_cfam(num_classes: int = 2, **kwargs) -> TwoBranchCFAM:
  """YOWO-style two-branch net: 2D key-frame + 3D clip backbones fused by CFAM."""
  return TwoBranchCFAM(num_classes=num_classes, **kwargs)
