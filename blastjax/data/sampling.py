"""Temporal sampling: which frames of an embryo's time-lapse a model sees.

Pure numpy on the `hours` array of one embryo (hours since insemination, increasing).
Every sampler returns `(indices, mask)`: int64 frame indices [T] into the sequence and
a bool mask [T] that is True where the position is padding (its index is -1 and it is
never decoded). Only the returned frames are decoded by the pipeline.

Modes (the `sampling` argument of `blastjax.data.pipeline.make_loader`):
  last_frame       the last observed frame (single-frame paradigm), T = 1.
  uniform          T frames evenly spaced over the observed frames (the paper's 32).
                   Sequences shorter than T repeat frames (nearest index), no padding.
  segments         one frame per `segment_hours` segment of absolute time [k s, (k+1) s),
                   k = 0..T-1 (AMSNet: 6 h segments, T = 28 for 168 h); random frame of
                   the segment when training, its middle frame otherwise; segments with
                   no frame are padding.
  clip             L contiguous frames at a random start when training, the centred
                   clip otherwise; a sequence shorter than L is looped (Hara et al.).
                   With a temporal scale s (Hara's multi-scale temporal crop) the span
                   is s * L frames, resampled to L by nearest neighbour.
  sliding_windows  evaluation: every L-frame window with a stride (default L), plus a last
                   window aligned to the end when the stride leaves frames uncovered; one
                   row per window.

Gaps in the imaging (a late start, a pause, an early end): only `segments` works in
absolute time, so only it pads, and its padding can be anywhere in the mask: at the
front (segments before the first frame), in the middle (segments inside a gap) or at the
end. The other modes work on frame indices: a gap is simply not there for them (a clip
or window may span it; `uniform` spreads its T frames over the frames that exist).
Models accept padding at any positions (blastjax.models.masking). Every mode samples
only frames at or before `observe_hours`, so a prediction at a cut-off never sees a
later frame.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

MODES = ("last_frame", "uniform", "segments", "clip", "sliding_windows")


def observed_length(hours: np.ndarray, observe_hours: Optional[float], embryo_id: str = "?") -> int:
  """Number of frames taken at or before `observe_hours` (all frames when None).

  Early prediction: the model may only see what was imaged up to that time. An embryo
  with no frame at or before `observe_hours` is an error (it cannot be predicted).
  """
  hours = np.asarray(hours)
  if hours.size == 0:
    raise ValueError(f"embryo {embryo_id!r} has no frames")
  if observe_hours is None:
    return int(hours.size)
  count = int(np.searchsorted(hours, observe_hours, side="right"))
  if count == 0:
    raise ValueError(
        f"embryo {embryo_id!r} has no frame at or before observe_hours={observe_hours} "
        f"(its first frame is at {float(hours[0]):.2f} h): raise observe_hours or leave "
        "this embryo out of the split")
  return count


def last_frame(num_observed: int):
  return np.array([num_observed - 1], np.int64), np.zeros(1, bool)


def uniform(num_observed: int, num_frames: int):
  indices = np.round(np.linspace(0, num_observed - 1, num_frames)).astype(np.int64)
  return indices, np.zeros(num_frames, bool)


def segments(hours: np.ndarray, num_observed: int, num_frames: int, segment_hours: float,
             rng: Optional[np.random.Generator] = None):
  """One frame per segment [k s, (k+1) s) of absolute hours, k < num_frames."""
  if segment_hours <= 0:
    raise ValueError(f"segment_hours={segment_hours}: must be positive")
  hours = np.asarray(hours[:num_observed], np.float64)
  bounds = np.arange(num_frames + 1) * float(segment_hours)
  starts = np.searchsorted(hours, bounds[:-1], side="left")
  ends = np.searchsorted(hours, bounds[1:], side="left")
  counts = ends - starts
  mask = counts == 0
  if rng is None:
    offsets = (counts - 1) // 2
  else:
    offsets = np.floor(rng.random(num_frames) * np.maximum(counts, 1)).astype(np.int64)
  indices = np.where(mask, -1, starts + offsets).astype(np.int64)
  return indices, mask


def temporal_span(clip_length: int, temporal_scale: float = 1.0) -> int:
  """Frames a clip of `clip_length` covers at `temporal_scale`: s * L rounded, at least 1."""
  return max(1, int(round(float(temporal_scale) * clip_length)))


def clip(num_observed: int, clip_length: int, rng: Optional[np.random.Generator] = None,
         temporal_scale: float = 1.0):
  """A contiguous clip; looped when the sequence is shorter than the clip.

  `temporal_scale` s (Hara's multi-scale temporal crop): the contiguous span is s * L
  frames (rounded), scaled to L by nearest neighbour: position i takes span frame
  floor(i * span / L). s = 2 takes every other frame of a 2L span, s = 1/2 repeats each
  frame of an L/2 span twice; s = 1 is the plain clip (and draws the same start)."""
  span = temporal_span(clip_length, temporal_scale)
  if num_observed >= span:
    last_start = num_observed - span
    start = last_start // 2 if rng is None else int(rng.integers(0, last_start + 1))
    frames = start + np.arange(span)
  else:
    frames = np.arange(span) % num_observed
  indices = frames[(np.arange(clip_length) * span) // clip_length]
  return indices.astype(np.int64), np.zeros(clip_length, bool)


def window_starts(num_observed: int, clip_length: int, stride: Optional[int] = None) -> list:
  stride = clip_length if stride is None else int(stride)
  if stride <= 0:
    raise ValueError(f"window_stride={stride}: must be positive")
  if num_observed <= clip_length:
    return [0]
  starts = list(range(0, num_observed - clip_length + 1, stride))
  if starts[-1] + clip_length < num_observed:
    starts.append(num_observed - clip_length)
  return starts


def sliding_windows(num_observed: int, clip_length: int, stride: Optional[int] = None):
  """All windows as a list of (indices, mask); a short sequence gives one looped window."""
  windows = []
  for start in window_starts(num_observed, clip_length, stride):
    indices = (start + np.arange(clip_length)) % num_observed
    windows.append((indices.astype(np.int64), np.zeros(clip_length, bool)))
  return windows


def sample(mode: str, hours: np.ndarray, *, num_frames: int, observe_hours: Optional[float] = None,
           segment_hours: float = 6.0, clip_length: Optional[int] = None,
           window_stride: Optional[int] = None, rng: Optional[np.random.Generator] = None,
           embryo_id: str = "?", temporal_scale: float = 1.0):
  """Frame indices and padding masks of one embryo, as a list of windows.

  Every mode but 'sliding_windows' returns a list of one (indices, mask) pair. `rng`
  None means deterministic (evaluation) sampling. `temporal_scale` applies to 'clip'
  only (see `clip`).
  """
  count = observed_length(hours, observe_hours, embryo_id)
  length = int(clip_length or num_frames)
  if mode == "last_frame":
    return [last_frame(count)]
  if mode == "uniform":
    return [uniform(count, num_frames)]
  if mode == "segments":
    return [segments(hours, count, num_frames, segment_hours, rng)]
  if mode == "clip":
    return [clip(count, length, rng, temporal_scale)]
  if mode == "sliding_windows":
    return sliding_windows(count, length, window_stride)
  raise ValueError(f"sampling={mode!r} unknown; choose from {MODES}")


def num_steps(mode: str, num_frames: int, clip_length: Optional[int] = None) -> int:
  """T, the length of the time axis a mode produces."""
  if mode == "last_frame":
    return 1
  if mode in ("clip", "sliding_windows"):
    return int(clip_length or num_frames)
  return int(num_frames)
