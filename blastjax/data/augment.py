"""Decoding and augmentation of embryo frames, on the host with PIL and numpy.

One random draw per sequence (`draw`), applied identically to every frame and focal
plane of that sequence (`render`), so the model sees a consistent video.

Spatial crops (Hara et al., "good practice" for 3D CNNs), a square of side
`scale * short side` of the frame:
  center      the centred square at `center_scale` (evaluation, and augment=False).
  random      random position at `random_scale` (Hara's "spatial random": scale 1).
  multiscale  random position, scale drawn from `scales` (1, 2^-1/4, 2^-1/2, 2^-3/4, 1/2).
  corner      one of the 4 corners or the centre, scale drawn from `scales`.
Then rotation (uniform in +-rotation_degrees, or on multiples of rotation_step;
embryos have no preferred orientation; corners filled with the frame's mean; multiples
of 90 degrees are exact and cost nothing), horizontal flip, brightness and contrast
jitter (torchvision ColorJitter: brightness multiplies, contrast blends with the frame
mean; factors uniform in [1-b, 1+b]).

Decoding (gray values, cut-off JPEGs) is blastjax.data.frames'. JPEG frames are decoded
at a reduced size with PIL's draft mode (DCT scaling) when the crop allows it, which is
the main speed-up.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np
from PIL import Image, ImageStat

from blastjax.data import frames

CROPS = ("center", "random", "multiscale", "corner")
HARA_SCALES = (1.0, 2 ** -0.25, 2 ** -0.5, 2 ** -0.75, 0.5)
# A JPEG may be drafted (decoded by DCT scaling) down to this fraction of the pixels the
# crop needs: at most a 1.25x upsampling (500 px frames at scale 0.875 -> 224 px decode
# at half size, 4x fewer pixels to decode and resample).
DRAFT_TOLERANCE = 0.8


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Augmentation settings; the defaults follow the paper (colour jitter, random crop,
  rotation, horizontal flip) with Hara's multi-scale crop scales available."""

  crop: str = "random"                 # one of CROPS, used when augmenting
  random_scale: float = 0.875          # crop side / short side for crop='random'
  scales: tuple = HARA_SCALES          # crop scales for 'multiscale' and 'corner'
  center_scale: float = 1.0            # crop side / short side without augmentation
  rotation_degrees: float = 180.0      # rotation uniform in [-r, r]; 0 disables
  rotation_step: float = 0.0           # >0: angles on multiples of this (90: dihedral, fast)
  hflip_prob: float = 0.5
  vflip_prob: float = 0.0
  brightness: float = 0.2              # factor uniform in [1-b, 1+b]
  contrast: float = 0.2                # factor uniform in [1-c, 1+c]

  def __post_init__(self):
    if self.crop not in CROPS:
      raise ValueError(f"augment_config.crop={self.crop!r} unknown; choose from {CROPS}")
    for name in ("random_scale", "center_scale"):
      if not 0 < getattr(self, name) <= 1:
        raise ValueError(f"augment_config.{name}={getattr(self, name)}: must be in (0, 1]")
    if not self.scales or any(not 0 < s <= 1 for s in self.scales):
      raise ValueError(f"augment_config.scales={self.scales}: need values in (0, 1]")
    for name in ("hflip_prob", "vflip_prob"):
      if not 0 <= getattr(self, name) <= 1:
        raise ValueError(f"augment_config.{name}={getattr(self, name)}: must be in [0, 1]")
    if self.rotation_degrees < 0 or self.rotation_step < 0:
      raise ValueError(f"augment_config.rotation_degrees={self.rotation_degrees}, rotation_step="
                       f"{self.rotation_step}: must be >= 0")
    for name in ("brightness", "contrast"):
      if not 0 <= getattr(self, name) < 1:
        raise ValueError(f"augment_config.{name}={getattr(self, name)}: must be in [0, 1)")


def as_config(config) -> AugmentConfig:
  """AugmentConfig from None (defaults), a dict / ml_collections ConfigDict, or itself."""
  if config is None:
    return AugmentConfig()
  if isinstance(config, AugmentConfig):
    return config
  values = dict(config.items()) if hasattr(config, "items") else dict(config)
  known = {f.name for f in dataclasses.fields(AugmentConfig)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f"augment_config has unknown field(s) {unknown}; known: {sorted(known)}")
  if "scales" in values:
    values["scales"] = tuple(float(s) for s in values["scales"])
  return AugmentConfig(**values)


@dataclasses.dataclass(frozen=True)
class Params:
  """One sequence's draw. The crop is relative: (left, top, side) as fractions of the
  short side, so frames of any size (and JPEG drafts) share it."""

  scale: float = 1.0
  offset: tuple = (0.5, 0.5)   # crop position in [0, 1] of the free room (x, y)
  angle: float = 0.0
  hflip: bool = False
  vflip: bool = False
  brightness: float = 1.0
  contrast: float = 1.0


def draw(rng: Optional[np.random.Generator], config: AugmentConfig) -> Params:
  """The augmentation of one sequence; `rng` None gives the evaluation view."""
  if rng is None:
    return Params(scale=config.center_scale)
  if config.crop == "center":
    scale, offset = config.center_scale, (0.5, 0.5)
  elif config.crop == "random":
    scale, offset = config.random_scale, (float(rng.random()), float(rng.random()))
  else:
    scale = float(config.scales[int(rng.integers(len(config.scales)))])
    if config.crop == "multiscale":
      offset = (float(rng.random()), float(rng.random()))
    else:
      offset = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5)][int(rng.integers(5))]
  if config.rotation_step > 0:
    steps = int(config.rotation_degrees // config.rotation_step)
    angle = float(config.rotation_step * rng.integers(-steps, steps + 1))
  else:
    angle = float(rng.uniform(-config.rotation_degrees, config.rotation_degrees))
  return Params(scale=scale, offset=offset, angle=angle,
                hflip=bool(rng.random() < config.hflip_prob),
                vflip=bool(rng.random() < config.vflip_prob),
                brightness=float(rng.uniform(1 - config.brightness, 1 + config.brightness)),
                contrast=float(rng.uniform(1 - config.contrast, 1 + config.contrast)))


def crop_box(width: int, height: int, params: Params) -> tuple:
  """The crop (left, top, right, bottom) in pixels of a width x height frame."""
  side = params.scale * min(width, height)
  left = params.offset[0] * (width - side)
  top = params.offset[1] * (height - side)
  return (left, top, left + side, top + side)


def decode(data: bytes, params: Params, image_size: int) -> Image.Image:
  """The frame as a loaded PIL image; a JPEG is drafted (decoded at 1/2, 1/4 or 1/8
  size by DCT scaling) as far as the crop of `params` still yields `image_size` pixels."""
  return frames.decode(data, short_side=DRAFT_TOLERANCE * image_size / params.scale)


def render(data: bytes, params: Params, image_size: int, colour: bool = True) -> np.ndarray:
  """Decodes one encoded frame and applies `params`: float32 [image_size, image_size] in [0, 1].

  Fast path: JPEG draft, then an integer box reduction while the crop keeps at least
  `image_size` pixels, then one resampling pass (a resize of the crop box, or one affine
  transform doing crop, rotation and resize together). colour=False leaves brightness and
  contrast to the caller (the pipeline applies them to a whole sequence at once).
  """
  image, white = frames.to_gray(decode(data, params, image_size))
  left, top, right, _ = crop_box(image.width, image.height, params)
  side = right - left
  reduction = int(side // image_size)
  if reduction >= 2:
    image = image.reduce(reduction)
    left, top, side = left / reduction, top / reduction, side / reduction
  quarter_turns = params.angle / 90.0
  exact_quarters = quarter_turns == round(quarter_turns)
  if not exact_quarters:
    image = _rotated_crop(image, (left, top, side), params.angle, image_size)
  else:
    image = image.resize((image_size, image_size), Image.BILINEAR,
                         box=(left, top, left + side, top + side))
  array = np.asarray(image, np.float32) * np.float32(1.0 / white)
  if exact_quarters and round(quarter_turns) % 4:
    array = np.rot90(array, int(round(quarter_turns)))
  if params.hflip:
    array = array[:, ::-1]
  if params.vflip:
    array = array[::-1, :]
  return photometric(array, params) if colour else array


def _rotated_crop(image: Image.Image, crop: tuple, angle: float, size: int) -> Image.Image:
  """The crop (left, top, side) rotated by `angle` degrees about its centre and resized
  to size x size in one affine pass; outside the frame is filled with its mean."""
  left, top, side = crop
  center_x, center_y = left + side / 2, top + side / 2
  scale = side / size
  cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
  a, b, d, e = scale * cos, -scale * sin, scale * sin, scale * cos
  half = size / 2
  coefficients = (a, b, center_x - (a + b) * half, d, e, center_y - (d + e) * half)
  if image.mode == "F":
    fill = float(np.asarray(image, np.float32).mean())
  else:
    fill = int(round(ImageStat.Stat(image).mean[0]))
  return image.transform((size, size), Image.AFFINE, coefficients, Image.BILINEAR, fillcolor=fill)


def photometric(array: np.ndarray, params: Params) -> np.ndarray:
  """Brightness then contrast (torchvision ColorJitter semantics: contrast blends with
  each frame's mean), clipped to [0, 1]; `array` is [..., H, W]."""
  if params.brightness == 1.0 and params.contrast == 1.0:
    return np.ascontiguousarray(array)
  array = array * np.float32(params.brightness)
  if params.contrast != 1.0:
    mean = np.clip(array, 0, 1).mean(axis=(-2, -1), keepdims=True, dtype=np.float32)
    array = (array - mean) * np.float32(params.contrast) + mean
  return np.clip(array, 0.0, 1.0, out=array)
