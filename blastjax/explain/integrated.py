"""Integrated gradients (Sundararajan et al. 2017) for every registered model: which frames
(hours) and which pixels moved the P(blast) logit away from a baseline input.

IG_i = (x_i - b_i) * mean over alpha of d f / d x_i at b + alpha (x - b), with the
midpoint rule over `steps` alphas. Completeness: the attributions sum to f(x) - f(b)
up to the rule's error, reported as `completeness_error` (it shrinks with `steps`).
A frame's attribution is the sum of IG over its pixels, channels and focal planes (or
its feature vector, for features models).

Baselines: 'zeros' (the default) is zero in the model's input space -- after
normalisation, a uniform frame at the normalisation mean (zero vectors for features
models); 'mean' is the sequence's mean valid frame at every position (video and
features models), so a frame is credited for how it differs from the embryo's average
frame; or pass an array of the input's shape. Padding frames (mask True) take the
input itself as baseline and get zero attribution.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from blastjax.explain.scores import score_fn

BASELINES = ("zeros", "mean")


@dataclasses.dataclass
class IntegratedGradients:
  """attributions: the input's shape; per_frame: [B, T] (T = 1 for image models);
  pixel_maps: [B, T, H, W] summed over channels and planes (None for features); score and
  baseline_score: [B]; completeness_error: [B], |sum(attributions) - (score - baseline_score)|."""

  attributions: np.ndarray
  per_frame: np.ndarray
  pixel_maps: Optional[np.ndarray]
  score: np.ndarray
  baseline_score: np.ndarray
  completeness_error: np.ndarray
  baseline: str


def make_baseline(x, mask, input_kind: str, baseline: Union[str, np.ndarray] = "zeros") -> np.ndarray:
  """The baseline input of `x` (see the module docstring); padding frames copy `x`."""
  x = np.asarray(x, np.float32)
  if not isinstance(baseline, str):
    base = np.asarray(baseline, np.float32)
    if base.shape != x.shape:
      raise ValueError(f"baseline of shape {base.shape} for an input of shape {x.shape}: pass the same shape")
  elif baseline == "zeros":
    base = np.zeros_like(x)
  elif baseline == "mean":
    if input_kind == "image":
      raise ValueError("baseline='mean' averages over time; an image model's input has no time axis: "
                       "use baseline='zeros' or an array")
    keep = np.ones(x.shape[:2], bool) if mask is None else ~np.asarray(mask, bool)
    weights = keep.reshape(keep.shape + (1,) * (x.ndim - 2)).astype(np.float32)
    mean = (x * weights).sum(1, keepdims=True) / np.maximum(weights.sum(1, keepdims=True), 1.0)
    base = np.broadcast_to(mean, x.shape).copy()
  else:
    raise ValueError(f"baseline={baseline!r}; expected one of {BASELINES} or an array")
  if mask is not None and input_kind != "image":
    padded = np.asarray(mask, bool)
    base[padded] = x[padded]
  return base


def integrated_gradients(model, variables: dict, spec, x, mask=None, baseline="zeros", steps: int = 32,
                         chunk: int = 8, score: str = "logit") -> IntegratedGradients:
  """IG of a batch `x` (as `spec.inputs(batch)` gives it); `chunk` alphas run at once."""
  if steps < 1:
    raise ValueError(f"steps={steps}: need at least 1")
  x = np.asarray(x, np.float32)
  base = make_baseline(x, mask, spec.input_kind, baseline)
  f = score_fn(model, variables, spec, score)
  batch = x.shape[0]

  @jax.jit
  def grads(alphas, x, base, mask):  # [k] alphas -> [k, B, ...] gradients
    points = base[None] + alphas.reshape((-1,) + (1,) * x.ndim) * (x - base)[None]
    flat = points.reshape((-1,) + x.shape[1:])
    tiled = None if mask is None else jnp.tile(mask, (alphas.shape[0], 1))
    g = jax.grad(lambda p: f(p, tiled).sum())(flat)
    return g.reshape(points.shape)

  total = np.zeros_like(x)
  alphas = (np.arange(steps, dtype=np.float32) + 0.5) / steps
  for start in range(0, steps, chunk):
    part = alphas[start:start + chunk]
    part = np.pad(part, (0, chunk - part.size), constant_values=np.nan) if part.size < chunk else part
    g = np.asarray(grads(jnp.asarray(np.nan_to_num(part, nan=0.0)), x, base, mask))
    total += g[~np.isnan(part)].sum(0)
  attributions = (x - base) * total / steps
  jitted = jax.jit(f)
  value, base_value = np.asarray(jitted(x, mask)), np.asarray(jitted(base, mask))
  error = np.abs(attributions.reshape(batch, -1).sum(1) - (value - base_value))
  per_frame, pixel_maps = _frames_and_pixels(attributions, spec.input_kind)
  return IntegratedGradients(attributions, per_frame, pixel_maps, value, base_value, error,
                             baseline if isinstance(baseline, str) else "array")


def _frames_and_pixels(attributions: np.ndarray, input_kind: str):
  """([B, T] per-frame sums, [B, T, H, W] pixel maps or None) of IG attributions."""
  batch = attributions.shape[0]
  if input_kind == "image":
    return attributions.reshape(batch, 1, -1).sum(-1), attributions.sum(-1)[:, None]
  per_frame = attributions.reshape(attributions.shape[:2] + (-1,)).sum(-1)
  if input_kind == "features":
    return per_frame, None
  pixels = attributions.sum(-1)
  if input_kind == "video_focal":
    pixels = pixels.sum(2)
  return per_frame, pixels


def frame_shares(per_frame: np.ndarray) -> np.ndarray:
  """Each frame's share of the total absolute attribution ([..., T], sums to 1)."""
  magnitude = np.abs(per_frame)
  return magnitude / np.maximum(magnitude.sum(-1, keepdims=True), 1e-30)
