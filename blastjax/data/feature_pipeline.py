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
  indices = np.arange(len(source)) if indices is None else np.asarray(indices, np.int64).reshape(-1)
  if indices.size == 0:
    raise ValueError("indices is empty: the split has no examples")
  if indices.min() < 0 or indices.max() >= len(source):
    raise ValueError(f"indices must lie in [0, {len(source)}); got min {indices.min()}, max {indices.max()}")
  num_steps = int(num_steps or source.max_steps)
  shard_index, shard_count = 0, 1
  if shard_by_process:
    shard = grain.ShardByJaxProcess(drop_remainder=drop_remainder)
    shard_index, shard_count = shard.shard_index, shard.shard_count
  if worker_count > 0:
    pipeline._ensure_flags_parsed()
  operations = [pipeline._NotHole(), _PadFeatures(num_steps, observe_hours),
                grain.Batch(batch_size, drop_remainder=drop_remainder,
                            batch_fn=pipeline._Collate(batch_size, num_devices))]
  sampler = pipeline._Sampler(indices.size, batch_size, worker_count, shuffle, seed, num_epochs,
                              shard_index, shard_count, drop_remainder)
  return grain.DataLoader(
      data_source=pipeline._Subset(source, indices), sampler=sampler, operations=operations,
      worker_count=worker_count, worker_buffer_size=max(1, prefetch),
      shard_options=grain.NoSharding())
