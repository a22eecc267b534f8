"""A synthetic embryo time-lapse simulator: the default dataset and the test fixture.

Each embryo is a zona pellucida (a bright ring) around blastomeres (grey discs with dark
rims) that divide at morphokinetic times drawn around published human timings
(t2 ~ 26 h, t3 ~ 37 h, t4 ~ 39 h, t5 ~ 50 h, t8 ~ 57 h, compaction ~ 80 h after
insemination; Meseguer et al. 2011, Kirkegaard et al. 2013). Frames are rendered at
several focal planes (defocus = Gaussian blur growing with the plane's offset) with
illumination noise and fragments.

How the label arises (so that it is *not* readable from one early frame): every embryo
has a developmental competence drawn from its patient's baseline plus its own noise.
Competence sets the division timing (competent embryos divide on time and in sync) and
the label: an embryo is a blast when its competence (plus a little label noise) is
positive. Non-blast embryos divide late and irregularly, and most arrest at a random
stage and degenerate (darker, fragmented cells) -- some only after the observation
horizon, so their last frame looks normal and only the timing betrays them. Early
frames (before t2) of both classes are drawn from the same distribution.

Patient effects: embryos of a patient share a competence baseline and an imaging
brightness/contrast, so random splits that put one patient on both sides leak.
"""

from __future__ import annotations

import dataclasses
import functools
import io
from typing import Iterator, Optional

import numpy as np
from PIL import Image

# The simulator's version: bumped whenever the same SimulatorConfig (seed included) renders
# different embryos, so that a dataset's metadata says which simulator drew it.
VERSION = "1.0.0"
# Mean hours after insemination and spread of each division event (competent embryo).
EVENT_TIMES = (("t2", 26.0, 2.0), ("t3", 37.0, 2.5), ("t4", 39.0, 2.5), ("t5", 50.0, 3.0),
               ("t8", 57.0, 3.5), ("tM", 80.0, 5.0))
# Number of cells after each event.
CELLS_AFTER = {"t2": 2, "t3": 3, "t4": 4, "t5": 5, "t8": 8, "tM": 8}
# Arrest stages of non-blast embryos: the last event reached before arrest.
ARREST_STAGES = ("t2", "t3", "t4", "t5", "t8")
# How often non-blast embryos arrest after each stage: most reach 8 cells and stop there,
# so that their last frame often looks normal and only the timing betrays them.
ARREST_WEIGHTS = (0.1, 0.1, 0.15, 0.15, 0.5)
# The zona pellucida's outer radius, as a fraction of the frame side.
ZONA_RADIUS = 0.42


@dataclasses.dataclass(frozen=True)
class SimulatorConfig:
  """Rendering and sampling settings; the defaults are the realistic ones."""

  image_size: int = 500
  interval_minutes: float = 10.0
  horizon_hours: float = 80.0
  focal_planes: tuple = (-15, 0, 15)
  num_embryos: int = 120
  num_patients: int = 24
  seed: int = 0
  image_format: str = "jpeg"

  def __post_init__(self):
    checks = [("image_size", self.image_size >= 32, "at least 32"),
              ("interval_minutes", self.interval_minutes > 0, "positive"),
              ("horizon_hours", self.horizon_hours > self.interval_minutes / 60, "longer than one interval"),
              ("focal_planes", 0 in self.focal_planes, "must include the central plane 0"),
              ("num_embryos", self.num_embryos >= 2, "at least 2"),
              ("num_patients", 1 <= self.num_patients <= self.num_embryos, "between 1 and num_embryos"),
              ("image_format", self.image_format in ("jpeg", "png"), "'jpeg' or 'png'")]
    for field, ok, what in checks:
      if not ok:
        raise ValueError(f"SimulatorConfig.{field}={getattr(self, field)!r}: {what}")

  @property
  def hours(self) -> np.ndarray:
    step = self.interval_minutes / 60.0
    return np.arange(step, self.horizon_hours + 1e-9, step, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class EmbryoPlan:
  """Everything random about one embryo, drawn once; rendering is then deterministic."""

  embryo_id: str
  patient_id: str
  label: int
  event_hours: dict  # event -> hours (events never reached are absent)
  arrest_hours: Optional[float]
  brightness: float
  contrast: float
  fragmentation: float
  seed: int


def _patient_baselines(rng: np.random.Generator, num_patients: int):
  competence = rng.normal(0.0, 0.7, num_patients)
  competence -= competence.mean()  # keeps the classes near balance in small datasets
  brightness = rng.uniform(0.9, 1.1, num_patients)
  contrast = rng.uniform(0.85, 1.15, num_patients)
  return competence, brightness, contrast


def plan_embryos(config: SimulatorConfig) -> list[EmbryoPlan]:
  """Draws every embryo of the dataset (ids, labels, timings), deterministically by seed."""
  rng = np.random.default_rng(config.seed)
  competence_base, bright_base, contrast_base = _patient_baselines(rng, config.num_patients)
  patients = np.sort(rng.integers(0, config.num_patients, config.num_embryos))
  patients[:config.num_patients] = np.arange(config.num_patients)  # every patient has embryos
  patients = np.sort(patients)  # ids (patient, then index) in sorted order
  plans = []
  for index, patient in enumerate(patients):
    competence = competence_base[patient] + rng.normal(0.0, 1.0)
    label = int(competence + rng.normal(0.0, 0.35) > 0.0)
    # Less competent embryos divide later and less synchronously.
    delay = 1.0 + 0.2 * max(0.0, -competence) + rng.normal(0.0, 0.03)
    jitter = 1.0 + 0.8 * max(0.0, -competence)
    event_hours, previous = {}, 0.0
    for name, mean, spread in EVENT_TIMES:
      hours = max(previous + 0.5, mean * delay + rng.normal(0.0, spread * jitter))
      event_hours[name] = float(hours)
      previous = hours
    arrest_hours = None
    if not label:
      stage = ARREST_STAGES[rng.choice(len(ARREST_STAGES), p=ARREST_WEIGHTS)]
      position = list(event_hours).index(stage)
      event_hours = dict(list(event_hours.items())[:position + 1])
      arrest_hours = float(event_hours[stage] + rng.uniform(6.0, 40.0))
    plans.append(EmbryoPlan(
        embryo_id=f"SYN{patient:03d}-{index:04d}", patient_id=f"P{patient:03d}", label=label,
        event_hours=event_hours, arrest_hours=arrest_hours,
        brightness=float(bright_base[patient] * rng.uniform(0.97, 1.03)),
        contrast=float(contrast_base[patient]),
        fragmentation=float(np.clip(rng.beta(1.2, 6.0), 0, 1)),
        seed=int(rng.integers(0, 2**31 - 1))))
  return plans


def _cell_layout(rng: np.random.Generator, count: int, radius: float) -> np.ndarray:
  """Centres of `count` cells packed inside a circle of `radius` (relaxed repulsion)."""
  if count == 1:
    return np.zeros((1, 2))
  angles = np.linspace(0, 2 * np.pi, count, endpoint=False) + rng.uniform(0, 2 * np.pi)
  ring = radius * (0.45 if count <= 4 else 0.55)
  centres = np.stack([np.cos(angles), np.sin(angles)], 1) * ring
  return centres + rng.normal(0, radius * 0.05, centres.shape)


def _disc(yy, xx, cy, cx, r, soft):
  dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
  return np.clip((r - dist) / soft + 0.5, 0.0, 1.0), dist


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
  """Separable Gaussian blur (numpy only)."""
  if sigma < 0.3:
    return image
  radius = int(3 * sigma) + 1
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  taps /= taps.sum()
  padded = np.pad(image, radius, mode="edge")
  rows = sum(t * padded[:, i:i + image.shape[1]] for i, t in enumerate(taps))
  return sum(t * rows[i:i + image.shape[0], :] for i, t in enumerate(taps))


def _stage(plan: EmbryoPlan, hours: float) -> tuple[int, bool, float]:
  """Cell count, whether compacted, and degeneration in [0, 1] at `hours`."""
  cells = 1
  for name, when in plan.event_hours.items():
    if hours >= when:
      cells = CELLS_AFTER[name]
  compacted = "tM" in plan.event_hours and hours >= plan.event_hours["tM"]
  degeneration = 0.0
  if plan.arrest_hours is not None and hours > plan.arrest_hours:
    degeneration = float(np.clip((hours - plan.arrest_hours) / 15.0, 0.0, 1.0))
  return cells, compacted, degeneration


@functools.lru_cache(maxsize=8)
def _grid(size: int):
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
  zona, dist = _disc(yy, xx, 0.0, 0.0, ZONA_RADIUS, 0.01)
  ring = 0.55 + 0.25 * np.exp(-((dist - 0.40) / 0.015) ** 2)  # background + bright zona ring
  return yy, xx, zona, ring.astype(np.float32)


def render_sharp(plan: EmbryoPlan, cells: int, compacted: bool, degeneration: float,
                 size: int) -> np.ndarray:
  """The in-focus optical section of an embryo state (float, centred, before noise)."""
  layout_rng = np.random.default_rng([plan.seed, cells])
  yy, xx, zona, ring = _grid(size)
  image = ring.copy()
  inner = 0.36 * (1.0 - 0.15 * degeneration)
  cell_radius = inner * (0.95 if cells == 1 else 0.72 / cells ** 0.45)
  rim_width = 0.008 if not compacted else 0.03
  for cy, cx in _cell_layout(layout_rng, cells, inner - cell_radius):
    body, d = _disc(yy, xx, cy, cx, cell_radius, 0.01 if not compacted else 0.04)
    rim = np.exp(-np.minimum(((d - cell_radius) / rim_width) ** 2, 30.0))
    image += body * (0.12 - 0.25 * degeneration) - rim * (0.18 if not compacted else 0.05)
  fragments = int(plan.fragmentation * 12 + degeneration * 20)
  for _ in range(fragments):
    fy, fx = layout_rng.uniform(-inner, inner, 2) * 0.8
    blob, _ = _disc(yy, xx, fy, fx, 0.012 + 0.01 * layout_rng.random(), 0.005)
    image -= 0.2 * blob * zona
  return image


class _Renderer:
  """Renders one embryo's frames; the defocused planes of each developmental state
  (cell count, compaction, degeneration in steps of 1/8) are computed once."""

  def __init__(self, plan: EmbryoPlan, focal_planes, size: int):
    self.plan, self.focal_planes, self.size = plan, tuple(focal_planes), size
    self._cache = {}

  def _planes(self, hours: float) -> list[np.ndarray]:
    cells, compacted, degeneration = _stage(self.plan, hours)
    key = (cells, compacted, round(degeneration * 8))
    if key not in self._cache:
      sharp = render_sharp(self.plan, cells, compacted, key[2] / 8.0, self.size)
      self._cache[key] = [_blur(sharp, abs(o) / 15.0 * self.size / 128.0) for o in self.focal_planes]
    return self._cache[key]

  def frames(self, hours: float, frame_index: int) -> list[np.ndarray]:
    """Grayscale uint8 frames at `hours`, one per focal plane; each plane has its own noise
    and the embryo drifts slowly in the dish (a shift of a few pixels)."""
    plan = self.plan
    shift = drift_pixels(plan, hours, self.size)
    frames = []
    for offset, image in zip(self.focal_planes, self._planes(hours)):
      noise_rng = np.random.default_rng([plan.seed, frame_index, int(offset) + 1000])
      image = np.roll(image, (shift, shift), axis=(0, 1))
      image = (image - 0.55) * plan.contrast + 0.55 * plan.brightness
      image = image + noise_rng.normal(0.0, 0.025, image.shape).astype(np.float32)
      frames.append(np.clip(image * 255.0, 0, 255).astype(np.uint8))
    return frames


def drift_pixels(plan: EmbryoPlan, hours: float, size: int) -> int:
  """The embryo's shift in the dish at `hours` (pixels down and right, both axes)."""
  return int(round(0.01 * size * np.sin(hours / 3.0 + plan.seed % 7)))


def embryo_disc(plan: EmbryoPlan, hours: float, size: int) -> tuple[float, float, float]:
  """(row, column, radius) in pixels of the embryo (the zona's outline) in its frame at
  `hours`: where the embryo is, for checks of saliency maps (blastjax.explain)."""
  centre = size / 2.0 + drift_pixels(plan, hours, size)
  return centre, centre, ZONA_RADIUS * size


def render_planes(plan: EmbryoPlan, hours: float, focal_planes, size: int,
                  frame_index: int) -> list[np.ndarray]:
  """Grayscale uint8 frames of `plan` at `hours`, one per focal plane offset.

  Defocus is a Gaussian blur growing with |offset|; each plane has its own noise.
  """
  return _Renderer(plan, focal_planes, size).frames(hours, frame_index)


def encode(frame: np.ndarray, image_format: str = "jpeg") -> bytes:
  """Encodes a uint8 frame as JPEG (quality 90, like incubator exports) or PNG."""
  buffer = io.BytesIO()
  if image_format == "jpeg":
    Image.fromarray(frame).save(buffer, format="JPEG", quality=90)
  elif image_format == "png":
    Image.fromarray(frame).save(buffer, format="PNG", compress_level=1)
  else:
    raise ValueError(f"image_format={image_format!r}: choose 'jpeg' or 'png'")
  return buffer.getvalue()


def simulate_embryo(plan: EmbryoPlan, config: SimulatorConfig) -> dict:
  """The example of one embryo, in the dataset's format (frames as encoded bytes [T, P])."""
  hours = config.hours
  renderer = _Renderer(plan, config.focal_planes, config.image_size)
  frames = np.empty((hours.size, len(config.focal_planes)), dtype=object)
  for t, h in enumerate(hours):
    for p, frame in enumerate(renderer.frames(float(h), t)):
      frames[t, p] = encode(frame, config.image_format)
  events = {name: int(np.searchsorted(hours, when)) for name, when in plan.event_hours.items()
            if when <= hours[-1]}
  return {"embryo_id": plan.embryo_id, "patient_id": plan.patient_id, "label": plan.label,
          "frames": frames, "hours": hours, "focal_planes": np.asarray(config.focal_planes, np.int32),
          "events": events, "source": "synthetic", "split": ""}


def simulate_one(plan_and_config) -> dict:
  """simulate_embryo((plan, config)): the picklable unit of work of a process pool."""
  return simulate_embryo(*plan_and_config)


def simulate(config: SimulatorConfig) -> Iterator[dict]:
  """Every embryo of the synthetic dataset, in id order."""
  for plan in plan_embryos(config):
    yield simulate_embryo(plan, config)
