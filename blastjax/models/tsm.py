"""Temporal Shift Module (Lin et al., ICCV 2019) on any torchvision-identical ResNet.

`temporal_shift` is the reference's residual shift (mit-han-lab/temporal-shift-module,
`ops/temporal_shift.py`, `TemporalShift.shift`): of C channels, the first C // fold_div
take the next frame's values (shift left / back in time), the next C // fold_div the
previous frame's (shift right / forward in time), zeros at the ends, the rest unchanged.
`temporal_shift_online` is the reference's one-way variant (`online_demo`): the first
C // fold_div channels take the previous frame's values, zeros at the first frame.

`TSMResNet` puts the shift on the residual branch of every block (the reference's
`shift_place='blockres'`, through `ResNet.block_input_transform`), runs the per-frame
ResNet with time folded into the batch, and averages the per-frame logits over the
valid frames (TSN's 'avg' consensus). Its Flax names mirror the reference `TSN` module,
so a TSM checkpoint (with the DataParallel `module.` prefix stripped) converts through
`blastjax.weights.from_torch('tsm_resnet50', state_dict)`.

Padding (mask True = padded frame, valid frames first) cannot leak: padded frames are
replaced by looped valid frames before the network, and the shift zeroes whatever a
padded frame would pass to a valid one, so a valid frame sees exactly what it would
see in the unpadded sequence.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from blastjax.models import masking, torch_compat
from blastjax.models.registry import register
from blastjax.models.resnet import RESNET_CONFIGS, ResNet

Array = jax.Array


def _split_time(x: Array, num_segments: int) -> Array:
  if x.shape[0] % num_segments:
    raise ValueError(f"temporal_shift: leading axis {x.shape[0]} (batch * time) is not a "
                     f"multiple of num_segments={num_segments}")
  return x.reshape((x.shape[0] // num_segments, num_segments) + x.shape[1:])


def _masked_source(x: Array, valid: Optional[Array]) -> Array:
  """x [N, T, ..., C] with padded frames zeroed, so nothing of theirs is shifted out."""
  if valid is None:
    return x
  valid = jnp.reshape(valid, x.shape[:2]).astype(x.dtype)
  return x * valid.reshape(valid.shape + (1,) * (x.ndim - 2))


def temporal_shift(x: Array, num_segments: int, fold_div: int = 8,
                   valid: Optional[Array] = None) -> Array:
  """The reference's bidirectional shift of x [N * T, ..., C] (channels last).

  `valid` (bool, [N, T] or [N * T]) marks real frames; a padded frame passes zeros to
  its neighbours, as the end of the sequence does.
  """
  x5 = _split_time(x, num_segments)
  fold = x5.shape[-1] // fold_div
  source = _masked_source(x5, valid)
  zeros = jnp.zeros_like(x5[:, :1, ..., :fold])
  back = jnp.concatenate([source[:, 1:, ..., :fold], zeros], axis=1)  # t <- t + 1
  forward = jnp.concatenate([zeros, source[:, :-1, ..., fold:2 * fold]], axis=1)  # t <- t - 1
  out = jnp.concatenate([back, forward, x5[..., 2 * fold:]], axis=-1)
  return out.reshape(x.shape)


def temporal_shift_online(x: Array, num_segments: int, fold_div: int = 8,
                          valid: Optional[Array] = None) -> Array:
  """The reference's one-way (online, causal) shift of x [N * T, ..., C].

  The first C // fold_div channels of frame t are those of frame t - 1 (zeros at t = 0,
  the reference's zero-initialised shift buffer); frame t never sees a later frame.
  """
  x5 = _split_time(x, num_segments)
  fold = x5.shape[-1] // fold_div
  source = _masked_source(x5, valid)
  zeros = jnp.zeros_like(x5[:, :1, ..., :fold])
  shifted = jnp.concatenate([zeros, source[:, :-1, ..., :fold]], axis=1)
  out = jnp.concatenate([shifted, x5[..., fold:]], axis=-1)
  return out.reshape(x.shape)


SHIFTS = {"bidirectional": temporal_shift, "online": temporal_shift_online}


def make_shift(kind: str, num_segments: int, fold_div: int, valid: Optional[Array]):
  """The parameter-free block input transform for `ResNet.block_input_transform`."""
  if kind not in SHIFTS:
    raise ValueError(f"shift={kind!r}; expected one of {sorted(SHIFTS)}")
  return functools.partial(SHIFTS[kind], num_segments=num_segments, fold_div=fold_div,
                           valid=valid)


def backbone_config(name: str) -> dict:
  """`RESNET_CONFIGS[name]` with an error listing the choices."""
  if name not in RESNET_CONFIGS:
    raise ValueError(f"backbone={name!r} is not a ResNet variant; known: {', '.join(RESNET_CONFIGS)}")
  return RESNET_CONFIGS[name]


class TSMResNet(nn.Module):
  """TSN/TSM: a ResNet with a temporal shift in every residual block, average consensus."""

  backbone: str = "resnet50"
  num_classes: int = 2
  fold_div: int = 8
  shift: str = "bidirectional"  # or 'online' (one-way, causal)
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    if x.ndim != 5:
      raise ValueError(f"TSMResNet expects video [B, T, H, W, C]; got shape {x.shape}")
    batch, frames = x.shape[:2]
    x, mask = masking.compact(x, mask)
    valid = None if mask is None else ~mask
    base = ResNet(**backbone_config(self.backbone), num_classes=0, dtype=self.dtype,
                  param_dtype=self.param_dtype,
                  block_input_transform=make_shift(self.shift, frames, self.fold_div, valid),
                  name="base_model")
    features = base(x.reshape((batch * frames,) + x.shape[2:]), train=train)
    features = features.reshape(batch, frames, -1)
    if self.num_classes == 0:
      return masking.masked_mean(features, mask)
    features = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="new_fc",
                      kernel_init=nn.initializers.normal(0.001),
                      bias_init=nn.initializers.zeros)(features)
    return masking.masked_mean(logits, mask)


def tsm_key_map(collection: str, path: tuple) -> str:
  """Flax path -> key of the reference `TSN(..., is_shift=True, shift_place='blockres')`.

  The shifted conv1 of each block is wrapped by the reference's `TemporalShift`, hence
  `base_model.layer1.0.conv1.net.weight`; the classifier is `new_fc` (dropout > 0).
  """
  if path[0] == "new_fc":
    return f"new_fc.{torch_compat.torch_suffix(collection, path[-1])}"
  key = torch_compat.dotted_key_map(collection, tuple(path[1:]))
  if len(path) == 4 and path[1].startswith("layer") and path[2] == "conv1":
    key = key.replace(".conv1.", ".conv1.net.")
  return f"base_model.{key}"


def embedded_resnet(model: TSMResNet) -> dict:
  """A `model.backbone` ResNet checkpoint (ImageNet) fills the base model; see
  `blastjax.weights.from_torch(..., source=...)`."""
  return {model.backbone: {"base_model": ("*",)}}


def _tsm(backbone: str):
  """The `register` arguments of TSM on `backbone`."""
  return dict(input_kind="video", torch_key_map=tsm_key_map, min_image_size=32,
              embeds=embedded_resnet,
              reference=f"mit-han-lab/temporal-shift-module ops.models.TSN('{backbone}', "
                        "is_shift=True, shift_place='blockres')")


# kwargs: backbone, fold_div, shift ('bidirectional'|'online'), dropout_rate, dtype,
# param_dtype.
@register(**_tsm("resnet18"))
def tsm_resnet18(num_classes: int = 2, **kwargs) -> TSMResNet:
  """TSM (resnet18, residual shift in every block, average consensus)."""
  return TSMResNet(**{"backbone": "resnet18", **kwargs}, num_classes=num_classes)


@register(**_tsm("resnet50"))
def tsm_resnet50(num_classes: int = 2, **kwargs) -> TSMResNet:
  """TSM (resnet50, residual shift in every block, average consensus)."""
  return TSMResNet(**{"backbone": "resnet50", **kwargs}, num_classes=num_classes)
