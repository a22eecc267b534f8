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

Temporal scales (Hara's "multi-scale spatiotemporal random"): `temporal_scales` other
than (1,) make clip sampling draw a scale s per sequence and take s * L frames, resampled
to L by nearest neighbour (blastjax.data.sampling.clip).

Presets (`PRESETS`, `resolve`): the augmentation of each paper, by name, with every field
overridable; `config.augmentation` of a run is a preset plus overrides (docs/pipeline.md).

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
  rotation, horizontal flip) with Hara's multi-scale crop scales available (they are
  the `benchmark` preset)."""

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
  temporal_scales: tuple = (1.0,)      # clip sampling: s * L frames resampled to L (Hara)

  def __post_init__(self):
    problems = field_problems(dataclasses.asdict(self), "augment_config")
    if problems:
      raise ValueError("; ".join(problems))

  @property
  def identity(self) -> bool:
    """True when a draw changes nothing: no random crop, rotation, flip, jitter or
    temporal scale (preset 'none'); training then samples frames as evaluation does."""
    return (self.crop == "center" and self.rotation_degrees == 0 and self.hflip_prob == 0
            and self.vflip_prob == 0 and self.brightness == 0 and self.contrast == 0
            and tuple(self.temporal_scales) == (1.0,))


FIELDS = tuple(f.name for f in dataclasses.fields(AugmentConfig))
# The type of each field (of its default): what a config section's placeholders hold.
FIELD_TYPES = {f.name: type(f.default) for f in dataclasses.fields(AugmentConfig)}


def _number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(value) -> bool:
  return isinstance(value, (tuple, list)) and bool(value) and all(_number(v) for v in value)


def _range_problem(name: str, value):
  """What is wrong with one field's value ('' when nothing): the single place the
  ranges are written (AugmentConfig and config validation both read it)."""
  if name == "crop":
    return "" if value in CROPS else f"unknown; choose from {', '.join(CROPS)}"
  if name in ("scales", "temporal_scales"):
    if not _numbers(value):
      return "need a non-empty tuple of numbers"
    if name == "scales" and any(not 0 < s <= 1 for s in value):
      return "need values in (0, 1]"
    return "need positive values" if any(s <= 0 for s in value) else ""
  if not _number(value):
    return "must be a number"
  if name in ("random_scale", "center_scale"):
    return "" if 0 < value <= 1 else "must be in (0, 1]"
  if name in ("hflip_prob", "vflip_prob"):
    return "" if 0 <= value <= 1 else "must be in [0, 1]"
  if name in ("brightness", "contrast"):
    return "" if 0 <= value < 1 else "must be in [0, 1)"
  return "" if value >= 0 else "must be >= 0"   # rotation_degrees, rotation_step


def field_problems(values: dict, prefix: str) -> list:
  """One line per bad field of `values` (AugmentConfig field -> value), each naming
  `<prefix>.<field>`."""
  problems = []
  for name in FIELDS:
    if name in values:
      problem = _range_problem(name, values[name])
      if problem:
        problems.append(f"{prefix}.{name}={values[name]!r}: {problem}")
  return problems


def _unknown(values: dict, prefix: str) -> list:
  return [f"{prefix}.{name}: unknown field {name!r}; known: {', '.join(sorted(FIELDS))}"
          for name in sorted(set(values) - set(FIELDS))]


def _coerced(values: dict) -> dict:
  """Numbers of float fields as floats, sequences of the tuple fields as float tuples
  (a config file may write `hflip_prob = 0` or `scales = [1, 0.5]`; JSON gives lists)."""
  values = dict(values)
  for name, kind in FIELD_TYPES.items():
    if name not in values:
      continue
    if kind is tuple and _numbers(values[name]):
      values[name] = tuple(float(s) for s in values[name])
    elif kind is float and _number(values[name]):
      values[name] = float(values[name])
  return values


def as_config(config) -> AugmentConfig:
  """AugmentConfig from None (defaults), a dict / ml_collections ConfigDict, or itself."""
  if config is None:
    return AugmentConfig()
  if isinstance(config, AugmentConfig):
    return config
  values = dict(config.items()) if hasattr(config, "items") else dict(config)
  unknown = _unknown(values, "augment_config")
  if unknown:
    raise ValueError("; ".join(unknown))
  return AugmentConfig(**_coerced(values))


# ----------------------------------------------------------------------------------
# Presets: each paper's augmentation. Where a paper is silent the docstring says what
# was chosen and why.

HARA_TEMPORAL_SCALES = (3.0, 2.0, 1.0, 0.5, 1.0 / 3.0)


def benchmark() -> AugmentConfig:
  """cleavage_stage_blastocyst_dataset.txt, Setup: "Multiple data augmentation methods
  are used to prevent over-fitting, including color jitter, random cropping, rotation,
  and horizontal flipping." The paper gives no magnitudes and its code is unpublished
  ("will be published soon"), so they are torchvision's usual ones: ColorJitter
  brightness/contrast 0.2, a random crop of 0.875 of the short side (the 224-of-256
  convention), rotation uniform in +-180 degrees (embryos have no orientation), flip 50 %.

  Evaluation takes the centred crop at the same 0.875 (torchvision's Resize + CenterCrop
  pairing of a RandomCrop), so the embryo has the same size in pixels in training and
  evaluation."""
  return AugmentConfig(crop="random", random_scale=0.875, center_scale=0.875, rotation_degrees=180.0,
                       hflip_prob=0.5, vflip_prob=0.0, brightness=0.2, contrast=0.2)


def hara() -> AugmentConfig:
  """hara_3d_cnn_good_practice.txt, "Multi-scale spatial random" (its best configuration,
  Tables II and III): "We randomly select the spatial position and scale of each sample
  ... The scale is randomly selected from {1, 1/2^(1/4), 1/sqrt(2), 1/2^(3/4), 1/2}. Scale
  1 means that the sample width and height are the same as the short side length of the
  frame", and "each sample is horizontally flipped with 50% probability". No rotation and
  no colour jitter (the paper has none). Its "multi-scale spatial corner" (4 corners and
  the centre, same scales; worse in the paper) is `crop='corner'`.

  Testing (Recognition): "Each clip is cropped around a center position with the maximum
  scale (i.e. the sample width and height are the same as the short side length of the
  frame)": center_scale 1, so the object is smaller in evaluation than in the average
  training crop (scales 1 to 1/2 magnify it 1x to 2x)."""
  return AugmentConfig(crop="multiscale", scales=HARA_SCALES, center_scale=1.0, rotation_degrees=0.0,
                       hflip_prob=0.5, vflip_prob=0.0, brightness=0.0, contrast=0.0)


def hara_spatiotemporal() -> AugmentConfig:
  """hara_3d_cnn_good_practice.txt, "Multi-scale spatiotemporal random": the spatial
  augmentation of `hara`, and "we select temporal scale from {3, 2, 1, 1/2, 1/3}. To
  temporally crop based on the selected scale, we first select s_t x 16-frame clip ...
  We then perform temporal scaling for the clip by nearest neighbor scaling. For
  instance, scale 2 means that we first select a 16 x 2 = 32-frame clip, and then drop
  every [other frame], and scale 1/2 means that we first select a 16/2 = 8-frame clip,
  and then make two copies of each frame." (L = clip length instead of 16; s * L is
  rounded to whole frames; sampling='clip' only.) The paper found it slightly worse than
  `hara` ("nearest neighbor scaling ... makes the training samples artificial").
  Evaluation: the centred full-scale crop, temporal scale 1."""
  return dataclasses.replace(hara(), temporal_scales=HARA_TEMPORAL_SCALES)


def amsnet() -> AugmentConfig:
  """amsnet_early_blastocyst_prediction.txt, Implementation Details: "The resolution of
  each video clip is resized and randomly cropped to 224 x 224, and the format of each
  video clip is converted to grayscale". Nothing else is named (no flip, rotation or
  jitter) and the code is not public, so: a random crop of 0.875 of the short side (the
  resize-256 / crop-224 convention of the TSM code AMSNet builds on), and for evaluation
  the centred crop at the same 0.875 (TSM's GroupScale(256) + GroupCenterCrop(224)), so
  the embryo has the same size in training and evaluation."""
  return AugmentConfig(crop="random", random_scale=0.875, center_scale=0.875, rotation_degrees=0.0,
                       hflip_prob=0.0, vflip_prob=0.0, brightness=0.0, contrast=0.0)


def none() -> AugmentConfig:
  """No augmentation (as `config.augment=False`): the centred square of the short side,
  frames sampled as in evaluation."""
  return AugmentConfig(crop="center", center_scale=1.0, rotation_degrees=0.0, hflip_prob=0.0,
                       vflip_prob=0.0, brightness=0.0, contrast=0.0)


PRESETS = {"benchmark": benchmark, "hara": hara, "hara_spatiotemporal": hara_spatiotemporal,
           "amsnet": amsnet, "none": none}
DEFAULT_PRESET = "benchmark"


def _overrides(section) -> tuple:
  """(preset name, {field: value}) of a config section; None values are not overrides."""
  values = dict(section.items()) if hasattr(section, "items") else dict(section or {})
  preset = values.pop("preset", None) or DEFAULT_PRESET
  return preset, {k: v for k, v in values.items() if v is not None}


def section_problems(section, prefix: str = "config.augmentation") -> list:
  """One line per problem of a config section (preset + overrides): an unknown preset,
  an unknown field, a value out of AugmentConfig's ranges; empty when it resolves."""
  if not hasattr(section, "items") and section is not None:
    return [f"{prefix}={section!r}: expected a dict with a preset and AugmentConfig fields"]
  preset, overrides = _overrides(section)
  problems = _unknown(overrides, prefix)
  if preset not in PRESETS:
    problems.append(f"{prefix}.preset={preset!r}: unknown; choose from {', '.join(PRESETS)}")
  return problems + field_problems(overrides, prefix)


def resolve(section=None, preset: str = "") -> AugmentConfig:
  """The AugmentConfig of a config section: its preset (default 'benchmark'; `preset`
  replaces the section's) with every field that is not None replacing the preset's.

  `None` means "not overridden", so changing only the preset (e.g. on the command line)
  changes every field that was not set explicitly."""
  problems = section_problems(section)
  if problems:
    raise ValueError("; ".join(problems))
  name, overrides = _overrides(section)
  return dataclasses.replace(PRESETS[preset or name](), **_coerced(overrides))


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
