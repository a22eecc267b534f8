"""Padding masks for multi-frame models: padded frames must not change the output.

mask is bool [B, T], True where a frame is padding. Padding may sit at any position: at
the front (imaging started late), in the middle (an imaging gap) or at the end (a short
sequence), in any combination. Each model turns its input into the canonical layout
first, with `compact`: the valid frames, in temporal order, moved to the front, then
looped over the slots that remain (Hara's looping), and a mask whose valid frames come
first. Everything downstream (convolutions over time, recurrences, pooling) can then
assume valid-frames-first. Per-step models put their outputs back in the original slots
with `scatter_steps`.
"""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp


def valid_lengths(mask: Optional[jnp.ndarray], num_frames: int, batch: int) -> jnp.ndarray:
  """Number of valid (non-padding) frames per sequence, at least 1: int32 [B]."""
  if mask is None:
    return jnp.full((batch,), num_frames, jnp.int32)
  return jnp.maximum(jnp.sum(~mask, axis=1), 1).astype(jnp.int32)


def valid_first_order(mask: jnp.ndarray) -> jnp.ndarray:
  """int32 [B, T]: the indices of the valid frames in temporal order, then the padded ones."""
  return jnp.argsort(mask, axis=1, stable=True).astype(jnp.int32)


def compact_mask(mask: Optional[jnp.ndarray]) -> Optional[jnp.ndarray]:
  """The mask of `compact`'s output: the first n_valid slots valid, the rest padding."""
  if mask is None:
    return None
  lengths = jnp.sum(~mask, axis=1)
  return jnp.arange(mask.shape[1])[None, :] >= lengths[:, None]


def _take_frames(x: jnp.ndarray, source: jnp.ndarray) -> jnp.ndarray:
  """x [B, T, ...] gathered along time by source [B, T']."""
  return jnp.take_along_axis(x, source.reshape(source.shape + (1,) * (x.ndim - 2)), axis=1)


def compact(x: jnp.ndarray, mask: Optional[jnp.ndarray]):
  """(frames, mask) with the valid frames of x [B, T, ...] first, in order, then looped.

  Slot i < n holds the i-th valid frame; slot i >= n holds valid frame i mod n, so a
  convolutional net over the result sees only valid frames, and whatever the padded
  slots of x hold cannot change its output. A sequence with no valid frame keeps its
  first frame (its output is meaningless and is given no weight by the train step).
  """
  if mask is None:
    return x, None
  batch, num_frames = x.shape[:2]
  lengths = valid_lengths(mask, num_frames, batch)
  looped = jnp.arange(num_frames)[None, :] % lengths[:, None]  # [B, T]
  source = jnp.take_along_axis(valid_first_order(mask), looped, axis=1)
  return _take_frames(x, source), compact_mask(mask)


def loop_valid_frames(x: jnp.ndarray, mask: Optional[jnp.ndarray]) -> jnp.ndarray:
  """The frames of `compact(x, mask)` (valid frames first, looped)."""
  return compact(x, mask)[0]


def scatter_steps(steps: jnp.ndarray, mask: Optional[jnp.ndarray], fill: float = 0.0) -> jnp.ndarray:
  """Per-step outputs computed on `compact`'s layout, put back in the original slots.

  steps [B, T, ...] in the compacted order; returns [B, T, ...] where the valid slot t of
  the original sequence holds the output of its rank among the valid frames, and every
  padded slot holds `fill`.
  """
  if mask is None:
    return steps
  valid = ~mask
  rank = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)
  placed = _take_frames(steps, rank)
  return jnp.where(valid.reshape(valid.shape + (1,) * (steps.ndim - 2)), placed, fill)


def last_valid_index(mask: Optional[jnp.ndarray], num_frames: int, batch: int) -> jnp.ndarray:
  """int32 [B]: the position of each sequence's last valid frame (0 when none is valid)."""
  if mask is None:
    return jnp.full((batch,), num_frames - 1, jnp.int32)
  positions = jnp.where(~mask, jnp.arange(num_frames)[None, :], 0)
  return jnp.max(positions, axis=1).astype(jnp.int32)


def masked_mean(x: jnp.ndarray, mask: Optional[jnp.ndarray], axis: int = 1) -> jnp.ndarray:
  """Mean of x [B, T, ...] over valid frames along `axis` (the time axis)."""
  if mask is None:
    return jnp.mean(x, axis=axis)
  weights = (~mask).astype(x.dtype)
  weights = weights.reshape(weights.shape + (1,) * (x.ndim - 2))
  total = jnp.sum(x * weights, axis=axis)
  return total / jnp.maximum(jnp.sum(weights, axis=axis), 1.0)
