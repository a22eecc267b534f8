"""The grain input pipeline: embryo examples -> sampled, decoded, augmented batches.

    loader = make_loader(source, indices=train_idx, sampling='uniform', num_frames=32,
                         augment=True, batch_size=16, shuffle=True, num_epochs=None,
                         num_devices=jax.local_device_count())
    iterator = iter(loader)            # iterator.get_state() / set_state(state) resume
    batch = next(iterator)             # dict of numpy arrays, see `make_loader`

The record order is grain's MapDataset index arithmetic (`_records`):

    MapDataset.range(n).seed(seed).shuffle()      a permutation of `indices` per epoch
      [:m] (+ concatenate its first m - n)        m rows per epoch: a multiple of S processes
      .map(read) .random_map / .map(op) ...       the ops (blastjax.data.ops): sample, draw
                                                  augmentation, decode planes, photometric,
                                                  to channels, normalise
      [s::S] .repeat(num_epochs)                  this process's shard, epoch after epoch
      .batch(B) .to_iter_dataset() .mp_prefetch(W)

A random op's generator is seeded by grain from (seed, the row's position in the
epoch-extended order), so temporal sampling and augmentation do not depend on the
worker count, the batch size or a resume. Batches are formed on the MapDataset, and
mp_prefetch gives worker w the batches w, w+W, ... and interleaves them back in order,
so `worker_count=2` yields the same batches, in the same order, as `worker_count=0`
(sliding windows excepted: rows per record vary, so they are split and batched after
`to_iter_dataset`; only the set of rows is the same; evaluation maps rows by
example_index). The iterator state is grain's (positions, per worker): a resumed
iterator continues exactly where the saved one stopped.

Multi-host: each JAX process reads its own shard of every epoch (rows s, s+S, ... of
the epoch's order). With `drop_remainder=True` every shard has floor(n/S) records;
otherwise ceil(n/S), short shards repeating a record marked `valid=False`, so every
process yields the same number of batches.

Cached features (`make_feature_loader`) take the same path with one op, PadFeatures,
in place of sampling and decoding.
"""

from __future__ import annotations

import atexit
import json
import weakref
from typing import Optional

import grain
import grain.experimental as grain_experimental
import numpy as np
from grain import sharding

from blastjax.data import ops as ops_lib
from blastjax.data import sampling as sampling_lib

FOCAL_MODES = ("center", "axis", "channels")
_MAX_WINDOWS = 10000


def batches_per_epoch(num_records: int, batch_size: int, drop_remainder: bool = False,
                      shard_count: int = 1) -> int:
  """Batches one process yields per epoch (not for sliding windows: rows vary)."""
  per_shard = num_records // shard_count if drop_remainder else -(-num_records // shard_count)
  return per_shard // batch_size if drop_remainder else -(-per_shard // batch_size)


class Loader:
  """The batches of a grain IterDataset, iterable any number of times.

  A thin adapter, not a sampler: its iterators report `get_state()` as JSON bytes and
  take bytes, text or the dict back in `set_state()`, because the trainer checkpoints
  the state as text (blastjax/train.py `_iterator_state` / `_set_iterator_state`, the
  format grain's DataLoader had) while grain's dataset iterators speak dicts."""

  def __init__(self, dataset: grain.IterDataset):
    self.dataset = dataset

  def __iter__(self) -> "_Iterator":
    return _Iterator(iter(self.dataset))

  def __repr__(self) -> str:
    return f"Loader({self.dataset})"


class _Iterator:

  def __init__(self, iterator):
    self._iterator = iterator
    _LIVE.add(self)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._iterator is None:
      raise StopIteration
    return next(self._iterator)

  def get_state(self) -> bytes:
    return json.dumps(self._iterator.get_state()).encode()

  def set_state(self, state) -> None:
    """Restores a position from `get_state()` (bytes, text or the dict); a ValueError
    when the state is not one this pipeline wrote (e.g. a checkpoint of an older version)."""
    try:
      if isinstance(state, (bytes, str)):
        state = json.loads(state)
      self._iterator.set_state(state)
    except (KeyError, TypeError, ValueError) as error:
      raise ValueError(f"data position {str(state)[:80]!r} was not written by this input pipeline "
                       f"({type(error).__name__}: {error})") from error

  def close(self) -> None:
    """Stops grain's threads and worker processes; the iterator then yields nothing."""
    iterator, self._iterator = self._iterator, None
    if iterator is not None and hasattr(iterator, "close"):
      iterator.close()


# Iterators not yet closed. grain's iterators (and worker shared memory) left alive at
# interpreter exit run their __del__ after module teardown and print tracebacks; an
# exit hook closes and releases them first.
_LIVE = weakref.WeakSet()


@atexit.register
def _close_live_iterators() -> None:
  for iterator in list(_LIVE):
    iterator.close()


class _Read:
  """Position in `indices` -> the source example, with its source index and validity
  (valid=False: a duplicate padding a short process shard)."""

  def __init__(self, source, indices: np.ndarray, valid: bool):
    self.source = source
    self.indices = indices
    self.valid = valid

  def __call__(self, position: int) -> dict:
    index = int(self.indices[position])
    row = dict(self.source[index])
    row["example_index"] = index
    row["valid"] = self.valid
    return row


class _SplitWindows(grain_experimental.FlatMapTransform):
  """Sliding windows: one row per window (frames not decoded yet)."""

  max_fan_out = _MAX_WINDOWS

  def __init__(self, sample: ops_lib.Sample):
    self.sample = sample

  def flat_map(self, row):
    windows = self.sample.windows(row)
    if len(windows) > _MAX_WINDOWS:
      raise ValueError(f"embryo {row['embryo_id']!r} gives {len(windows)} windows; raise window_stride")
    return [dict(row, _indices=indices, mask=mask, window_index=w) for w, (indices, mask) in enumerate(windows)]


class _WindowOps:
  """The ops after sampling, for one window; randomness drawn from (seed, example, window)
  so that it does not depend on which worker reads the record."""

  def __init__(self, ops: list, seed: int):
    self.ops = ops
    self.seed = seed

  def __call__(self, row) -> dict:
    rng = np.random.default_rng([self.seed, int(row["example_index"]), int(row["window_index"])])
    for op in self.ops:
      row = op(row, rng)
    return row


class _Collate:
  """Stacks rows, pads a short final batch (valid=False rows copy row 0) and reshapes
  every array to [num_devices, batch_size // num_devices, ...] when asked."""

  def __init__(self, batch_size: int, num_devices: Optional[int]):
    self.batch_size = batch_size
    self.num_devices = num_devices

  def __call__(self, rows):
    rows = list(rows)
    for key in rows[0]:
      shapes = {np.shape(r[key]) for r in rows}
      if len(shapes) > 1:
        raise ValueError(f"batch field {key!r} has rows of different shapes {sorted(shapes)} "
                         "(examples with different numbers of focal planes?)")
    batch = {key: np.stack([r[key] for r in rows]) for key in rows[0]}
    missing = self.batch_size - len(rows)
    if missing > 0:
      batch = {key: np.concatenate([value, np.repeat(value[:1], missing, axis=0)])
               for key, value in batch.items()}
      batch["valid"][-missing:] = False
    if self.num_devices:
      batch = {key: value.reshape((self.num_devices, -1) + value.shape[1:])
               for key, value in batch.items()}
    return batch


# ----------------------------------------------------------------------------------
# Loaders.


def make_loader(source, *, indices=None, sampling: str = "uniform", num_frames: int = 32,
                image_size: int = 224, focal_planes: str = "center", rgb: bool = False,
                augment: bool = False, augment_config=None, observe_hours: Optional[float] = None,
                segment_hours: float = 6.0, clip_length: Optional[int] = None,
                window_stride: Optional[int] = None, batch_size: int = 16, shuffle: bool = False,
                seed: int = 0, num_epochs: Optional[int] = 1, drop_remainder: bool = False,
                worker_count: int = 0, prefetch: int = 2, num_devices: Optional[int] = None,
                shard_by_process: bool = True, normalization="imagenet",
                random_sampling: Optional[bool] = None) -> Loader:
  """A Loader of batches (dicts of numpy arrays) from `source`.

  Args:
    source: random-access examples (see blastjax.data.dataset), e.g. `load_source()`.
    indices: the source indices to use (a split); default all.
    sampling: one of blastjax.data.sampling.MODES.
    num_frames: T for 'uniform' and 'segments' (and clips when clip_length is None).
    image_size: output height = width.
    focal_planes: 'center' (offset 0 only), 'axis' (all planes, an extra P axis after T)
      or 'channels' (all planes as channels).
    rgb: replicate gray to 3 channels (models pretrained on RGB).
    augment: random spatial/photometric augmentation (blastjax.data.augment); off, a
      frame is the centred square of its short side resized to image_size.
    augment_config: AugmentConfig, dict of its fields, or None (defaults); its
      center_scale is also the view without augmentation (evaluation), its
      temporal_scales apply to sampling='clip' when augmenting. A run passes its
      `config.augmentation` resolved (blastjax.data.augment.resolve).
    observe_hours: only frames at or before this many hours are sampled.
    segment_hours: segment length for sampling='segments'.
    clip_length, window_stride: L and stride for 'clip' / 'sliding_windows'.
    batch_size: rows per batch of this process.
    shuffle, seed: per-epoch shuffling and all randomness.
    num_epochs: passes over the data; None repeats forever.
    drop_remainder: drop a short final batch instead of padding it.
    worker_count, prefetch: grain worker processes and batches buffered per worker.
    num_devices: reshape every array to [num_devices, batch_size // num_devices, ...].
    shard_by_process: each JAX process reads its shard of the data.
    normalization: 'imagenet' (default), 'kinetics', 'symmetric', 'none' or (mean, std),
      applied to values in [0, 1].
    random_sampling: random temporal sampling (segments, clips); default = augment.

  Returns:
    Loader; its batches hold 'image' float32 [B,H,W,C] (last_frame),
    [B,T,H,W,C] or [B,T,P,H,W,C] (focal_planes='axis'); 'mask' bool [B,T] (True =
    padding); 'label' int32 [B]; 'hours' float32 [B,T] (0 where padded);
    'example_index' int32 [B] (index into source); 'window_index' int32 [B]; 'valid'
    bool [B] (False for rows padding the final batch).
  """
  _check_arguments(sampling, focal_planes, rgb, batch_size, num_devices, num_frames, image_size)
  ops = ops_lib.image_ops(sampling=sampling, num_frames=num_frames, image_size=image_size,
                          focal_planes=focal_planes, rgb=rgb, augment=augment,
                          augment_config=augment_config, observe_hours=observe_hours,
                          segment_hours=segment_hours, clip_length=clip_length,
                          window_stride=window_stride, normalization=normalization,
                          random_sampling=random_sampling)
  order = dict(indices=indices, batch_size=batch_size, shuffle=shuffle, seed=seed, num_epochs=num_epochs,
               drop_remainder=drop_remainder, worker_count=worker_count, prefetch=prefetch,
               num_devices=num_devices, shard_by_process=shard_by_process)
  if sampling == "sliding_windows":
    return window_loader(source, ops, **order)
  return batched_loader(source, ops, **order)


def make_feature_loader(source, *, indices=None, num_steps: Optional[int] = None,
                        observe_hours: Optional[float] = None, batch_size: int = 16,
                        shuffle: bool = False, seed: int = 0, num_epochs: Optional[int] = 1,
                        drop_remainder: bool = False, worker_count: int = 0, prefetch: int = 2,
                        num_devices: Optional[int] = None, shard_by_process: bool = True) -> Loader:
  """Batches of cached per-frame features (a `FeatureSource`, see blastjax.feature_cache)
  for models of input kind 'features': the record order of `make_loader` with one op,
  PadFeatures, instead of sampling and decoding.

  Each row is one embryo's cached sequence padded (or cut) to `num_steps` time steps
  (default: the longest cached sequence): 'features' float32 [B, T, D], 'mask' bool
  [B, T] (True = padding), 'hours' float32 [B, T] (0 where padded), 'label',
  'example_index', 'window_index' (always 0) and 'valid'. `observe_hours` masks the
  steps whose features summarise a frame taken after the cut-off (early prediction);
  their features are zeroed, so nothing later than the cut-off reaches the model."""
  _check_batch(batch_size, num_devices)
  ops = [ops_lib.PadFeatures(int(num_steps or source.max_steps), observe_hours)]
  return batched_loader(source, ops, indices=indices, batch_size=batch_size, shuffle=shuffle, seed=seed,
                        num_epochs=num_epochs, drop_remainder=drop_remainder, worker_count=worker_count,
                        prefetch=prefetch, num_devices=num_devices, shard_by_process=shard_by_process)


def _records(source, ops, *, indices, shuffle, seed, num_epochs, drop_remainder,
             shard_by_process) -> grain.MapDataset:
  """This process's rows, epoch after epoch, with `ops` applied (see the module docstring)."""
  indices = _checked_indices(source, indices)
  n = indices.size
  shard_index, shard_count = _shard(shard_by_process, drop_remainder)
  per_epoch = n // shard_count if drop_remainder else -(-n // shard_count)
  if per_epoch == 0:
    raise ValueError(f"{n} records cannot be split over {shard_count} processes")
  positions = grain.MapDataset.range(n).seed(seed)
  if shuffle:
    positions = positions.shuffle()   # a new permutation each epoch
  epoch_length = per_epoch * shard_count
  rows = positions[:epoch_length].map(_Read(source, indices, True))
  if epoch_length > n:                # short shards: repeat the epoch's first records
    padding = positions[:epoch_length - n].map(_Read(source, indices, False))
    rows = grain.MapDataset.concatenate([rows, padding])
  for op in ops:
    rows = rows.random_map(op) if op.random else rows.map(op)
  return rows[shard_index::shard_count].repeat(num_epochs)


def batched_loader(source, ops, *, indices, batch_size, shuffle, seed, num_epochs, drop_remainder,
                   worker_count, prefetch, num_devices, shard_by_process) -> Loader:
  """Rows from `ops` batched on the MapDataset, so batch k is the same whichever worker
  (of any number: mp_prefetch gives worker w batches w, w+W, ...) computes it."""
  rows = _records(source, ops, indices=indices, shuffle=shuffle, seed=seed, num_epochs=num_epochs,
                  drop_remainder=drop_remainder, shard_by_process=shard_by_process)
  batches = rows.batch(batch_size, drop_remainder=drop_remainder, batch_fn=_Collate(batch_size, num_devices))
  return _loader(batches.to_iter_dataset(_read_options(prefetch)), worker_count, prefetch)


def window_loader(source, ops, *, indices, batch_size, shuffle, seed, num_epochs, drop_remainder,
                  worker_count, prefetch, num_devices, shard_by_process) -> Loader:
  """Sliding windows: a record gives a varying number of rows, so rows are split and
  batched on the IterDataset; with workers only the set of rows is the same (each
  worker batches the windows of its records; evaluation maps rows by example_index)."""
  sample, after = ops[0], ops[1:]
  records = _records(source, [], indices=indices, shuffle=shuffle, seed=seed, num_epochs=num_epochs,
                     drop_remainder=drop_remainder, shard_by_process=shard_by_process)
  rows = grain_experimental.FlatMapIterDataset(records.to_iter_dataset(_read_options(prefetch)),
                                               _SplitWindows(sample))
  batches = rows.map(_WindowOps(after, seed)).batch(
      batch_size, drop_remainder=drop_remainder, batch_fn=_Collate(batch_size, num_devices))
  return _loader(batches, worker_count, prefetch)


def _loader(dataset: grain.IterDataset, worker_count: int, prefetch: int) -> Loader:
  if worker_count > 0:
    _ensure_flags_parsed()
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=max(1, prefetch)))
  return Loader(dataset)


def _read_options(prefetch: int) -> grain.ReadOptions:
  """Two threads of each process compute elements ahead, `prefetch` buffered: decoding,
  not reading, is the bottleneck, and a batch of decoded frames is large."""
  return grain.ReadOptions(num_threads=2, prefetch_buffer_size=max(1, prefetch))


def _checked_indices(source, indices) -> np.ndarray:
  indices = np.arange(len(source)) if indices is None else np.asarray(indices, np.int64).reshape(-1)
  if indices.size == 0:
    raise ValueError("indices is empty: the split has no examples")
  if indices.min() < 0 or indices.max() >= len(source):
    raise ValueError(f"indices must lie in [0, {len(source)}); got min {indices.min()}, max {indices.max()}")
  return indices


def _shard(shard_by_process: bool, drop_remainder: bool) -> tuple:
  if not shard_by_process:
    return 0, 1
  shard = sharding.ShardByJaxProcess(drop_remainder=drop_remainder)
  return shard.shard_index, shard.shard_count


def _ensure_flags_parsed():
  """grain's worker processes read absl flags; outside an absl app (notebooks, pytest,
  other programs) nothing parsed them, so take their defaults."""
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _check_arguments(sampling, focal_planes, rgb, batch_size, num_devices, num_frames, image_size):
  if sampling not in sampling_lib.MODES:
    raise ValueError(f"sampling={sampling!r} unknown; choose from {sampling_lib.MODES}")
  if focal_planes not in FOCAL_MODES:
    raise ValueError(f"focal_planes={focal_planes!r} unknown; choose from {FOCAL_MODES}")
  if rgb and focal_planes == "channels":
    raise ValueError("rgb=True with focal_planes='channels': the channels already hold the "
                     "focal planes; use focal_planes='axis' or rgb=False")
  if batch_size <= 0 or num_frames <= 0 or image_size <= 0:
    raise ValueError(f"batch_size={batch_size}, num_frames={num_frames}, image_size={image_size}: "
                     "must be positive")
  _check_batch(batch_size, num_devices)


def _check_batch(batch_size, num_devices):
  if batch_size <= 0:
    raise ValueError(f"batch_size={batch_size} must be positive")
  if num_devices is not None and (num_devices <= 0 or batch_size % num_devices):
    raise ValueError(f"batch_size={batch_size} is not divisible by num_devices={num_devices}: "
                     f"choose a per-process batch size that is a multiple of {num_devices}")
