"""The per-record ops of the input pipeline: small steps from a source example to a row.

Each op takes a row (a dict) and an optional numpy Generator and returns the next row;
ops with `random = True` run as grain `random_map` (a generator per row, seeded by
grain), the others as `map` (blastjax.data.pipeline composes them). The image path:

    Sample -> DrawAugmentation -> DecodePlanes -> Photometric -> ToChannels -> Normalise -> ImageRow

(Sample also draws the temporal scale of Hara's spatiotemporal crop; `image_ops` builds it from make_loader's arguments); cached features take one op,
PadFeatures. Private fields ('_indices', '_params', '_images') pass between ops;
ImageRow and PadFeatures return the batch contract's fields only.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image

from blastjax.data import augment as augment_lib
from blastjax.data import sampling as sampling_lib

NORMALIZATIONS = {
    # name: (mean, std) of RGB channels for values in [0, 1]; gray uses their average.
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),   # torchvision weights
    "kinetics": ((0.4345, 0.4051, 0.3775), (0.2768, 0.2713, 0.2737)),  # Hara's 3D ResNets
    "symmetric": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),              # [-1, 1], I3D / TF models
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),                   # [0, 1]
}


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


class Sample:
  """Temporal sampling: the frame indices (and padding mask) of one row.

  `temporal_scales` other than (1,) (clips only): a random row first draws its scale
  from them, from the row's own generator, so the clip depends only on (seed, row)."""

  def __init__(self, sampling, num_frames, observe_hours, segment_hours, clip_length, window_stride,
               random, temporal_scales=(1.0,)):
    self.options = dict(num_frames=num_frames, observe_hours=observe_hours, segment_hours=segment_hours,
                        clip_length=clip_length, window_stride=window_stride)
    self.sampling = sampling
    self.random = bool(random)
    self.temporal_scales = tuple(float(s) for s in temporal_scales)
    if self.temporal_scales != (1.0,) and sampling != "clip":
      raise ValueError(f"augment_config.temporal_scales={self.temporal_scales} with sampling={sampling!r}: "
                       "temporal scales resample clips; use sampling='clip' or temporal_scales=(1.0,)")

  def temporal_scale(self, rng) -> float:
    """1 without randomness (evaluation); no draw with one scale (the plain clip's draws)."""
    if rng is None:
      return 1.0
    if len(self.temporal_scales) == 1:
      return self.temporal_scales[0]
    return self.temporal_scales[int(rng.integers(len(self.temporal_scales)))]

  def windows(self, row, rng=None) -> list:
    rng = rng if self.random else None
    return sampling_lib.sample(self.sampling, np.asarray(row["hours"]), rng=rng,
                               embryo_id=str(row["embryo_id"]), temporal_scale=self.temporal_scale(rng),
                               **self.options)

  def __call__(self, row, rng=None) -> dict:
    (indices, mask), = self.windows(row, rng)
    return dict(row, _indices=indices, mask=mask, window_index=0)


class DrawAugmentation:
  """The augmentation of a row (one draw for all its frames; identity when off)."""

  def __init__(self, enabled: bool, config):
    self.random = bool(enabled)
    self.config = config

  def __call__(self, row, rng=None) -> dict:
    return dict(row, _params=augment_lib.draw(rng if self.random else None, self.config))


class DecodePlanes:
  """The sampled frames of the chosen focal planes, decoded, cropped and resized:
  '_images' float32 [T, P, H, W] in [0, 1] (zeros where masked); drops 'frames'."""

  random = False

  def __init__(self, image_size: int, focal_planes: str):
    self.image_size = image_size
    self.focal_planes = focal_planes

  def planes(self, row) -> list:
    offsets = np.asarray(row["focal_planes"]).reshape(-1)
    if self.focal_planes != "center":
      return list(range(offsets.size))
    center = np.flatnonzero(offsets == 0)
    if center.size == 0:
      raise ValueError(f"embryo {row['embryo_id']!r} has no central focal plane (offset 0) "
                       f"among {offsets.tolist()}: use focal_planes='axis' or 'channels'")
    return [int(center[0])]

  def __call__(self, row, rng=None) -> dict:
    row = dict(row)
    frames, indices, mask = row.pop("frames"), row["_indices"], row["mask"]
    planes = self.planes(row)
    images = np.zeros((indices.size, len(planes), self.image_size, self.image_size), np.float32)
    for step, t in enumerate(indices):
      if not mask[step]:
        for slot, plane in enumerate(planes):
          images[step, slot] = self._frame(row, frames, int(t), plane)
    row["_images"] = images
    return row

  def _frame(self, row, frames, t: int, plane: int) -> np.ndarray:
    try:
      return augment_lib.render(bytes(frames[t, plane]), row["_params"], self.image_size, colour=False)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
      raise ValueError(
          f"embryo {row['embryo_id']!r} (source index {row['example_index']}): frame {t} "
          f"(focal plane {plane}) could not be decoded: {error}") from error


class Photometric:
  """Brightness/contrast/noise of the row's augmentation."""

  random = False

  def __call__(self, row, rng=None) -> dict:
    return dict(row, _images=augment_lib.photometric(row["_images"], row["_params"]))


class ToChannels:
  """[T, P, H, W] -> [T, H, W, C] ('center'), [T, P, H, W, C] ('axis') or planes as
  channels ('channels'); gray replicated to RGB when asked."""

  random = False

  def __init__(self, focal_planes: str, rgb: bool):
    self.focal_planes = focal_planes
    self.rgb = rgb

  def __call__(self, row, rng=None) -> dict:
    images = row["_images"]
    if self.focal_planes == "channels":
      images = np.moveaxis(images, 1, -1)
    else:
      images = images[..., None]
      if self.rgb:
        images = np.repeat(images, 3, axis=-1)
      if self.focal_planes == "center":
        images = images[:, 0]
    return dict(row, _images=images)


class Normalise:
  """(x - mean) / std per channel; padded frames set to 0."""

  random = False

  def __init__(self, normalization, channels: int):
    self.mean, self.std = normalization_stats(normalization, channels)

  def __call__(self, row, rng=None) -> dict:
    images = (row["_images"] - self.mean) * (1.0 / self.std)
    images[row["mask"]] = 0.0
    return dict(row, _images=images)


class ImageRow:
  """The row of the batch contract (see `make_loader`)."""

  random = False

  def __init__(self, single_frame: bool):
    self.single_frame = single_frame

  def __call__(self, row, rng=None) -> dict:
    images, indices, mask = row["_images"], row["_indices"], row["mask"]
    if self.single_frame:
      images = images[0]
    hours = np.where(mask, 0.0, np.asarray(row["hours"], np.float32)[np.maximum(indices, 0)])
    return {"image": np.ascontiguousarray(images, np.float32), "mask": mask.astype(bool),
            "label": np.int32(row["label"]), "hours": hours.astype(np.float32),
            "example_index": np.int32(row["example_index"]), "window_index": np.int32(row["window_index"]),
            "valid": np.bool_(row["valid"])}


class PadFeatures:
  """A cached feature sequence -> a fixed-length, masked row (see `make_feature_loader`)."""

  random = False

  def __init__(self, num_steps: int, observe_hours: Optional[float]):
    self.num_steps = num_steps
    self.observe_hours = observe_hours

  def __call__(self, row, rng=None) -> dict:
    features = np.asarray(row["features"], np.float32)
    hours = np.asarray(row["hours"], np.float32)
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
            "label": np.int32(row["label"]), "example_index": np.int32(row["example_index"]),
            "window_index": np.int32(0), "valid": np.bool_(row["valid"])}


def image_ops(*, sampling, num_frames, image_size, focal_planes, rgb, augment, augment_config,
              observe_hours, segment_hours, clip_length, window_stride, normalization,
              random_sampling) -> list:
  """The per-record ops of `make_loader`, in order (the first, Sample, picks the frames).
  The temporal scales of `augment_config` apply only when augmenting."""
  config = augment_lib.as_config(augment_config)
  return [
      Sample(sampling, num_frames, observe_hours, segment_hours, clip_length, window_stride,
             augment if random_sampling is None else random_sampling,
             config.temporal_scales if augment else (1.0,)),
      DrawAugmentation(augment, config),
      DecodePlanes(image_size, focal_planes),
      Photometric(),
      ToChannels(focal_planes, rgb),
      Normalise(normalization, 3 if rgb else 1),
      ImageRow(single_frame=sampling == "last_frame"),
  ]
