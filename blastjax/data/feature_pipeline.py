"""Batches of cached per-frame features for models of input kind 'features' (feature_lstm).

The same record order, sharding, worker layout and resumable iterator state as the
image pipeline (`blastjax.data.pipeline`), over a `FeatureSource` instead of frames:

    loader = make_feature_loader(FeatureSource(cache_dir), indices=train_idx, batch_size=16,
                                 shuffle=True, num_epochs=None, num_devices=jax.local_device_count())

Each row is one embryo's cached sequence padded (or cut) to `num_steps` time steps:
'features' float32 [B, T, D], 'mask' bool [B, T] (True = padding), 'hours' float32
[B, T] (0 where padded), 'label', 'example_index', 'window_index' (always 0) and
'valid', as in `pipeline.make_loader`. `observe_hours` masks the steps whose features
summarise a frame taken after the cut-off (early prediction); their features are
zeroed, so nothing later than the cut-off reaches the model.
"""

from __future__ import annotations

from typing import Optional

import grain.python as grain
import numpy as np

from blastjax.data import pipeline


class _PadFeatures(grain.MapTransform):
  """One cached sequence -> a fixed-length, masked row."""

  def __init__(self, num_steps: int, observe_hours: Optional[float]):
    self.num_steps = num_steps
    self.observe_hours = observe_hours

  def map(self, element):
    features = np.asarray(element["features"], np.float32)
    hours = np.asarray(element["hours"], np.float32)
    length = min(self.num_steps, features.shape[0])
    out_features = np.zeros((self.num_steps, features.shape[1]), np.float32)
    out_hours = np.zeros(self.num_steps, np.float32)
    mask = np.ones(self.num_steps, bool)
    out_features[:length] = features[:length]
    out_hours[:length] = hours[:length]
    mask[:length] = False
    if self.observe_hours is not None:
      mask |= out_hours > self.observe_hours
      out_features[mask] = 0.0
      out_hours[mask] = 0.0
    return {"features": out_features, "mask": mask, "hours": out_hours,
            "label": np.int32(element["label"]), "example_index": np.int32(element["example_index"]),
            "window_index": np.int32(0), "valid": np.bool_(element["valid"])}


def make_feature_loader(source, *, indices=None, num_steps: Optional[int] = None,
                        observe_hours: Optional[float] = None, batch_size: int = 16,
                        shuffle: bool = False, seed: int = 0, num_epochs: Optional[int] = 1,
                        drop_remainder: bool = False, worker_count: int = 0, prefetch: int = 2,
                        num_devices: Optional[int] = None,
                        shard_by_process: bool = True) -> grain.DataLoader:
  """A grain DataLoader of feature batches from a `FeatureSource` (arguments as
  `pipeline.make_loader`; `num_steps` defaults to the longest cached sequence)."""
  if batch_size <= 0 or (num_devices is not None and (num_devices <= 0 or batch_size % num_devices)):
    raise ValueError(f"batch_size={batch_size} must be positive and divisible by num_devices={num_devices}")
  num_steps = int(num_steps or source.max_steps)
  return pipeline.batched_loader(source, [_PadFeatures(num_steps, observe_hours)], indices=indices,
                                 batch_size=batch_size, shuffle=shuffle, seed=seed, num_epochs=num_epochs,
                                 drop_remainder=drop_remainder, worker_count=worker_count, prefetch=prefetch,
                                 num_devices=num_devices, shard_by_process=shard_by_process)
