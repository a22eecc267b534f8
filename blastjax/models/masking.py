"""Padding masks for multi-frame models: padded frames must not change the output.

mask is bool [B, T], True where a frame is padding. Valid frames come first.
"""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp


def valid_lengths(mask: Optional[jnp.ndarray], num_frames: int, batch: int) -> jnp.ndarray:
  """Number of valid (non-padding) frames per sequence, at least 1: int32 [B]."""
  if mask is None:
    return jnp.full((batch,), num_frames, jnp.int32)
  return jnp.maximum(jnp.sum(~mask, axis=1), 1).astype(jnp.int32)


def loop_valid_frames(x: jnp.ndarray, mask: Optional[jnp.ndarray]) -> jnp.ndarray:
  """Replaces padded frames of x [B, T, ...] by looping the valid ones (Hara's looping).

  A convolutional net over the result sees only valid frames, so whatever the padded
  slots hold cannot change its output.
  """
  if mask is None:
    return x
  batch, num_frames = x.shape[:2]
  lengths = valid_lengths(mask, num_frames, batch)
  source = jnp.arange(num_frames)[None, :] % lengths[:, None]  # [B, T]
  return jnp.take_along_axis(x, source.reshape(source.shape + (1,) * (x.ndim - 2)), axis=1)


def masked_mean(x: jnp.ndarray, mask: Optional[jnp.ndarray], axis: int = 1) -> jnp.ndarray:
  """Mean of x [B, T, ...] over valid frames along `axis` (the time axis)."""
  if mask is None:
    return jnp.mean(x, axis=axis)
  weights = (~mask).astype(x.dtype)
  weights = weights.reshape(weights.shape + (1,) * (x.ndim - 2))
  total = jnp.sum(x * weights, axis=axis)
  return total / jnp.maximum(jnp.sum(weights, axis=axis), 1.0)
