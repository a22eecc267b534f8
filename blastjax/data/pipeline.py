"""The grain input pipeline: embryo examples -> sampled, decoded, augmented batches.

    loader = make_loader(source, indices=train_idx, sampling='uniform', num_frames=32,
                         augment=True, batch_size=16, shuffle=True, num_epochs=None,
                         num_devices=jax.local_device_count())
    iterator = iter(loader)            # iterator.get_state() / set_state(state) resume
    batch = next(iterator)             # dict of numpy arrays, see `make_loader`

Record order. A custom sampler decides, for every position grain asks for, which
record it reads and with which random generator. Per epoch the records (of this
process's shard) are shuffled with a generator seeded by (seed, epoch); the random
generator of a record is seeded by (seed, epoch, record), so temporal sampling and
augmentation do not depend on the worker count, the batch size or a resume. grain
workers each form whole batches from the positions they are given (worker w gets
positions w, w+W, ...); the sampler lays the records out so that worker w receives
exactly the records of batches w, w+W, ..., and positions past the end of the data
are holes that a filter drops. So `worker_count=2` yields the same batches, in the
same order, as `worker_count=0` (sliding windows excepted: rows per record vary,
so only the set of rows is the same; evaluation maps rows by example_index).

Multi-host: each JAX process reads its own shard of every epoch (records
s, s+S, ... of the epoch's order). With `drop_remainder=True` every shard has
floor(n/S) records; otherwise ceil(n/S), short shards repeating a record marked
`valid=False`, so every process yields the same number of batches.
"""

from __future__ import annotations

import sys
import zlib
from typing import Optional

import numpy as np
import grain.experimental as grain_experimental
import grain.python as grain
from PIL import Image

from blastjax.data import augment as augment_lib
from blastjax.data import sampling as sampling_lib

FOCAL_MODES = ("center", "axis", "channels")
NORMALIZATIONS = {
    # name: (mean, std) of RGB channels for values in [0, 1]; gray uses their average.
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),   # torchvision weights
    "kinetics": ((0.4345, 0.4051, 0.3775), (0.2768, 0.2713, 0.2737)),  # Hara's 3D ResNets
    "symmetric": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),              # [-1, 1], I3D / TF models
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),                   # [0, 1]
}
_MAX_WINDOWS = 10000
# Raw records (every frame of every plane, encoded: up to a few hundred MB for a long
# EmbryoScope sequence with many planes) read ahead per process/worker by grain's
# reader threads; decoding, not reading, is the bottleneck.
_READ_AHEAD = 4
_HOLE = "_hole"


def normalization_stats(normalization, channels: int) -> tuple:
  """(mean, std) float32 arrays of shape [channels] (or [1] for gray / planes)."""
  if isinstance(normalization, str):
    if normalization not in NORMALIZATIONS:
      raise ValueError(f"normalization={normalization!r} unknown; choose from "
                       f"{sorted(NORMALIZATIONS)} or pass (mean, std)")
    mean, std = NORMALIZATIONS[normalization]
  else:
    mean, std = normalization
  mean, std = np.atleast_1d(np.asarray(mean, np.float32)), np.atleast_1d(np.asarray(std, np.float32))
  if channels != 3 and mean.size == 3:
    mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
  if mean.size not in (1, channels) or std.size != mean.size or np.any(std <= 0):
    raise ValueError(f"normalization mean={mean.tolist()} std={std.tolist()}: need 1 or "
                     f"{channels} values each and positive std")
  return mean, std


def batches_per_epoch(num_records: int, batch_size: int, drop_remainder: bool = False,
                      shard_count: int = 1) -> int:
  """Batches one process yields per epoch (not for sliding windows: rows vary)."""
  per_shard = num_records // shard_count if drop_remainder else -(-num_records // shard_count)
  return per_shard // batch_size if drop_remainder else -(-per_shard // batch_size)


class _Subset:
  """The records `indices` of `source`, plus shard-padding duplicates and a hole.

  Keys [0, n) are the records, [n, 2n) the same records marked invalid (padding of
  short process shards), 2n a hole (dropped by the filter right after reading).
  """

  def __init__(self, source, indices):
    self._source = source
    self._indices = np.asarray(indices, np.int64)
    self._digest = zlib.crc32(self._indices.tobytes())

  def __len__(self) -> int:
    return 2 * self._indices.size + 1

  def __getitem__(self, key: int) -> dict:
    n = self._indices.size
    if key == 2 * n:
      return {_HOLE: True}
    example_index = int(self._indices[key % n])
    example = dict(self._source[example_index])
    example["example_index"] = example_index
    example["valid"] = key < n
    return example

  def __repr__(self) -> str:
    return f"_Subset(num_records={self._indices.size}, indices_crc={self._digest})"


class _Sampler:
  """Positions -> records, laid out so grain's workers form the batches of one process
  (see the module docstring). Infinite when num_epochs is None."""

  def __init__(self, num_records: int, batch_size: int, worker_count: int, shuffle: bool,
               seed: int, num_epochs: Optional[int], shard_index: int, shard_count: int,
               drop_remainder: bool):
    self._n = num_records
    self._batch = batch_size
    self._workers = max(1, worker_count)
    self._shuffle = shuffle
    self._seed = seed
    self._epochs = num_epochs
    self._shard = (shard_index, shard_count)
    self._per_epoch = num_records // shard_count if drop_remainder else -(-num_records // shard_count)
    if self._per_epoch == 0:
      raise ValueError(f"{num_records} records cannot be split over {shard_count} processes")
    self._total = None if num_epochs is None else num_epochs * self._per_epoch
    self._length = self._count_positions()
    self._order_cache = {}

  def _position(self, logical: int) -> int:
    batch, row = divmod(logical, self._batch)
    round_, worker = divmod(batch, self._workers)
    return (round_ * self._batch + row) * self._workers + worker

  def _logical(self, position: int) -> int:
    local, worker = divmod(position, self._workers)
    round_, row = divmod(local, self._batch)
    return (round_ * self._workers + worker) * self._batch + row

  def _count_positions(self) -> int:
    if self._total is None:
      return sys.maxsize
    tail = range(max(0, self._total - self._workers * self._batch), self._total)
    return max(self._position(l) for l in tail) + 1

  def __len__(self) -> int:
    return self._length

  def _order(self, epoch: int) -> np.ndarray:
    order = self._order_cache.get(epoch)
    if order is None:
      order = np.arange(self._n)
      if self._shuffle:
        order = np.random.default_rng([self._seed, epoch]).permutation(self._n)
      order = order[self._shard[0]::self._shard[1]]
      self._order_cache = {epoch: order}
    return order

  def __getitem__(self, position: int) -> grain.RecordMetadata:
    if position < 0 or position >= len(self):
      raise IndexError(position)
    logical = self._logical(position)
    if self._total is not None and logical >= self._total:
      return grain.RecordMetadata(index=position, record_key=2 * self._n)
    epoch, row = divmod(logical, self._per_epoch)
    order = self._order(epoch)
    key = int(order[row]) if row < order.size else self._n + int(order[row % order.size])
    rng = np.random.default_rng([self._seed, epoch, key])
    return grain.RecordMetadata(index=position, record_key=key, rng=rng)

  def __repr__(self) -> str:
    return (f"_Sampler(n={self._n}, batch={self._batch}, workers={self._workers}, "
            f"shuffle={self._shuffle}, seed={self._seed}, epochs={self._epochs}, "
            f"shard={self._shard}, per_epoch={self._per_epoch})")


class _NotHole(grain.FilterTransform):

  def filter(self, element) -> bool:
    return _HOLE not in element


class _Prepare:
  """Sampled frames of one example -> decoded, augmented, normalised arrays."""

  def __init__(self, *, sampling, num_frames, image_size, focal_planes, rgb, augment,
               augment_config, observe_hours, segment_hours, clip_length, window_stride,
               normalization, random_sampling):
    self.sampling = sampling
    self.num_frames = num_frames
    self.image_size = image_size
    self.focal_planes = focal_planes
    self.rgb = rgb
    self.augment = augment
    self.augment_config = augment_config
    self.observe_hours = observe_hours
    self.segment_hours = segment_hours
    self.clip_length = clip_length
    self.window_stride = window_stride
    self.random_sampling = random_sampling
    channels = 3 if rgb else 1
    self.mean, self.std = normalization_stats(normalization, channels)

  def windows(self, example, rng):
    return sampling_lib.sample(
        self.sampling, np.asarray(example["hours"]), num_frames=self.num_frames,
        observe_hours=self.observe_hours, segment_hours=self.segment_hours,
        clip_length=self.clip_length, window_stride=self.window_stride,
        rng=rng if self.random_sampling else None, embryo_id=str(example["embryo_id"]))

  def _planes(self, example) -> list:
    offsets = np.asarray(example["focal_planes"]).reshape(-1)
    if self.focal_planes != "center":
      return list(range(offsets.size))
    center = np.flatnonzero(offsets == 0)
    if center.size == 0:
      raise ValueError(f"embryo {example['embryo_id']!r} has no central focal plane (offset 0) "
                       f"among {offsets.tolist()}: use focal_planes='axis' or 'channels'")
    return [int(center[0])]

  def _frame(self, example, t: int, plane: int, params) -> np.ndarray:
    data = example["frames"][t, plane]
    try:
      return augment_lib.render(bytes(data), params, self.image_size, colour=False)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
      raise ValueError(
          f"embryo {example['embryo_id']!r} (source index {example['example_index']}): frame {t} "
          f"(focal plane {plane}) could not be decoded: {error}") from error

  def __call__(self, example, indices, mask, window_index, rng) -> dict:
    params = augment_lib.draw(rng if self.augment else None, self.augment_config)
    planes = self._planes(example)
    size = self.image_size
    images = np.zeros((indices.size, len(planes), size, size), np.float32)
    for step, t in enumerate(indices):
      if not mask[step]:
        for slot, plane in enumerate(planes):
          images[step, slot] = self._frame(example, int(t), plane, params)
    images = self._layout(augment_lib.photometric(images, params), mask)
    hours = np.where(mask, 0.0, np.asarray(example["hours"], np.float32)[np.maximum(indices, 0)])
    return {"image": images, "mask": mask.astype(bool), "label": np.int32(example["label"]),
            "hours": hours.astype(np.float32), "example_index": np.int32(example["example_index"]),
            "window_index": np.int32(window_index), "valid": np.bool_(example["valid"])}

  def _layout(self, images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[T, P, H, W] in [0, 1] -> normalised [T, H, W, C] / [T, P, H, W, C] / [H, W, C]."""
    if self.focal_planes == "channels":
      images = np.moveaxis(images, 1, -1)
    else:
      images = images[..., None]
      if self.rgb:
        images = np.repeat(images, 3, axis=-1)
      if self.focal_planes == "center":
        images = images[:, 0]
    images -= self.mean
    images *= 1.0 / self.std
    images[mask] = 0.0
    if self.sampling == "last_frame":
      images = images[0]
    return np.ascontiguousarray(images, np.float32)


class _PrepareOne(grain.RandomMapTransform):
  """Every mode but sliding windows: one row per example, random by the record's rng."""

  def __init__(self, prepare: _Prepare):
    self.prepare = prepare

  def random_map(self, element, rng):
    (indices, mask), = self.prepare.windows(element, rng)
    return self.prepare(element, indices, mask, 0, rng)


class _SplitWindows(grain_experimental.FlatMapTransform):
  """Sliding windows: one element per window (frames not decoded yet)."""

  max_fan_out = _MAX_WINDOWS

  def __init__(self, prepare: _Prepare):
    self.prepare = prepare

  def flat_map(self, element):
    windows = self.prepare.windows(element, None)
    if len(windows) > _MAX_WINDOWS:
      raise ValueError(f"embryo {element['embryo_id']!r} gives {len(windows)} windows; raise window_stride")
    return [dict(element, _window=(w, indices, mask)) for w, (indices, mask) in enumerate(windows)]


class _PrepareWindow(grain.MapTransform):
  """Decodes one window; augmentation (if asked) drawn from (seed, example, window)."""

  def __init__(self, prepare: _Prepare, seed: int):
    self.prepare = prepare
    self.seed = seed

  def map(self, element):
    window, indices, mask = element["_window"]
    rng = np.random.default_rng([self.seed, int(element["example_index"]), window])
    return self.prepare(element, indices, mask, window, rng)


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


def make_loader(source, *, indices=None, sampling: str = "uniform", num_frames: int = 32,
                image_size: int = 224, focal_planes: str = "center", rgb: bool = False,
                augment: bool = False, augment_config=None, observe_hours: Optional[float] = None,
                segment_hours: float = 6.0, clip_length: Optional[int] = None,
                window_stride: Optional[int] = None, batch_size: int = 16, shuffle: bool = False,
                seed: int = 0, num_epochs: Optional[int] = 1, drop_remainder: bool = False,
                worker_count: int = 0, prefetch: int = 2, num_devices: Optional[int] = None,
                shard_by_process: bool = True, normalization="imagenet",
                random_sampling: Optional[bool] = None) -> grain.DataLoader:
  """A grain DataLoader of batches (dicts of numpy arrays) from `source`.

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
    augment_config: AugmentConfig, dict of its fields, or None (defaults).
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
    grain.DataLoader; its batches hold 'image' float32 [B,H,W,C] (last_frame),
    [B,T,H,W,C] or [B,T,P,H,W,C] (focal_planes='axis'); 'mask' bool [B,T] (True =
    padding); 'label' int32 [B]; 'hours' float32 [B,T] (0 where padded);
    'example_index' int32 [B] (index into source); 'window_index' int32 [B]; 'valid'
    bool [B] (False for rows padding the final batch).
  """
  _check_arguments(sampling, focal_planes, rgb, batch_size, num_devices, num_frames, image_size)
  prepare = _Prepare(
      sampling=sampling, num_frames=num_frames, image_size=image_size, focal_planes=focal_planes,
      rgb=rgb, augment=augment, augment_config=augment_lib.as_config(augment_config),
      observe_hours=observe_hours, segment_hours=segment_hours, clip_length=clip_length,
      window_stride=window_stride, normalization=normalization,
      random_sampling=augment if random_sampling is None else random_sampling)
  if sampling == "sliding_windows":
    transforms = [_SplitWindows(prepare), _PrepareWindow(prepare, seed)]
  else:
    transforms = [_PrepareOne(prepare)]
  return batched_loader(source, transforms, indices=indices, batch_size=batch_size, shuffle=shuffle,
                        seed=seed, num_epochs=num_epochs, drop_remainder=drop_remainder,
                        worker_count=worker_count, prefetch=prefetch, num_devices=num_devices,
                        shard_by_process=shard_by_process,
                        read_options=grain.ReadOptions(num_threads=2, prefetch_buffer_size=_READ_AHEAD))


def batched_loader(source, transforms, *, indices, batch_size, shuffle, seed, num_epochs, drop_remainder,
                   worker_count, prefetch, num_devices, shard_by_process, read_options=None) -> grain.DataLoader:
  """The record order, sharding, holes and collation every loader shares, around the
  per-record `transforms` that turn a source example into a row."""
  indices = np.arange(len(source)) if indices is None else np.asarray(indices, np.int64).reshape(-1)
  if indices.size == 0:
    raise ValueError("indices is empty: the split has no examples")
  if indices.min() < 0 or indices.max() >= len(source):
    raise ValueError(f"indices must lie in [0, {len(source)}); got min {indices.min()}, max {indices.max()}")
  shard_index, shard_count = 0, 1
  if shard_by_process:
    shard = grain.ShardByJaxProcess(drop_remainder=drop_remainder)
    shard_index, shard_count = shard.shard_index, shard.shard_count
  if worker_count > 0:
    _ensure_flags_parsed()
  operations = [_NotHole(), *transforms,
                grain.Batch(batch_size, drop_remainder=drop_remainder, batch_fn=_Collate(batch_size, num_devices))]
  sampler = _Sampler(indices.size, batch_size, worker_count, shuffle, seed, num_epochs,
                     shard_index, shard_count, drop_remainder)
  return grain.DataLoader(
      data_source=_Subset(source, indices), sampler=sampler, operations=operations,
      worker_count=worker_count, worker_buffer_size=max(1, prefetch),
      shard_options=grain.NoSharding(), read_options=read_options)


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
  if num_devices is not None and (num_devices <= 0 or batch_size % num_devices):
    raise ValueError(f"batch_size={batch_size} is not divisible by num_devices={num_devices}: "
                     f"choose a per-process batch size that is a multiple of {num_devices}")
