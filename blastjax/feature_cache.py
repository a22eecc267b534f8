"""Per-frame feature cache: run a frozen video network once, train small heads many times.

The seizure paper's recipe (I3D features -> LSTM) applied to embryos: `build_cache` runs
a registered video model in feature mode (default `i3d` with `features_per_step=True`,
1024-d per time step) over every embryo of a source, jitted and batched, and writes

    <cache_dir>/<name>/features.npy  float32 [total_steps, D]  (all embryos, concatenated)
                       hours.npy     float32 [total_steps]
                       offsets.npy   int64   [N + 1]  embryo i owns rows offsets[i]:offsets[i+1]
                       labels.npy    int64   [N]
                       ids.json      embryo and patient ids
                       manifest.json model, kwargs, sha256 of the weights, sampling settings,
                                     source fingerprint, feature size

`ensure_cache` reuses a cache only when its manifest equals the one the current model,
weights, settings and source would produce, and rebuilds it otherwise. `FeatureSource`
gives random access to cached examples, `feature_batches` pads them into batches for
`feature_lstm`.

Temporal sampling (`ExtractionSettings.mode`):
  uniform          `num_frames` frames evenly spaced over the observed frames form one
                   clip; its per-step features are the example's time steps (64 frames
                   at 224x224 through I3D give 7 steps, as the paper's 60-frame samples).
  sliding_windows  the observed frames cut into `clip_length`-frame windows (stride
                   `window_stride`, default `clip_length`); each window's features,
                   averaged over its steps, are one time step. Sequence lengths differ
                   between embryos; `feature_batches` pads them and sets the mask.
The `hours` of a step is the time of the last frame it summarises. In `sliding_windows`
mode a step's features come from its window's frames only, so masking the steps after a
cut-off (early prediction) leaves a prediction that has seen no later frame. In
`uniform` mode the clip is divided evenly among the steps for their hours, but the
extractor's temporal kernels (and padding) reach across the whole clip, so every step
has seen later frames: config validation refuses `early_hours` with that mode.

Source examples are dicts in the format of `blastjax.data.dataset.load_source`:
'embryo_id', 'patient_id', 'label', 'frames' (object [num_frames, num_focal_planes] of
encoded PNG/JPEG bytes), 'hours' and optionally 'focal_planes' (plane offsets, 0 =
central). Frames are decoded with PIL, converted to gray, resized to `image_size`
(bilinear) and scaled to [-1, 1] (I3D's input range), replicated over `in_channels`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import threading
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from blastjax import models
from blastjax.data import frames as frames_lib
from blastjax.data import pipeline, sampling

FORMAT_VERSION = 1
MODES = ("uniform", "sliding_windows")


@dataclasses.dataclass(frozen=True)
class ExtractionSettings:
  """How frames are chosen and prepared; part of the manifest (a change rebuilds)."""

  mode: str = "uniform"
  num_frames: int = 64          # uniform: frames per embryo
  clip_length: int = 16         # sliding_windows: frames per window
  window_stride: Optional[int] = None
  observe_hours: Optional[float] = None
  image_size: int = 224
  in_channels: int = 3
  focal_plane: Optional[int] = None  # plane offset to use; None = the central plane (0)
  batch_size: int = 8           # clips per jitted call (not part of the manifest)

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"ExtractionSettings.mode={self.mode!r} unknown; choose from {MODES}")
    for field in ("num_frames", "clip_length", "image_size", "in_channels", "batch_size"):
      if getattr(self, field) <= 0:
        raise ValueError(f"ExtractionSettings.{field}={getattr(self, field)}: must be positive")

  def manifest_dict(self) -> dict:
    fields = dataclasses.asdict(self)
    fields.pop("batch_size")
    return fields


# ------------------------------------------------------------------ frames and clips


def plane_index(example: dict, focal_plane: Optional[int]) -> int:
  """Column of `frames` holding the wanted focal plane (offset 0 = central by default)."""
  planes = np.asarray(example.get("focal_planes", np.zeros(1, np.int32))).reshape(-1)
  wanted = 0 if focal_plane is None else int(focal_plane)
  hits = np.flatnonzero(planes == wanted)
  if hits.size:
    return int(hits[0])
  if focal_plane is None:
    return int(planes.size // 2)
  raise ValueError(f"embryo {example.get('embryo_id', '?')!r} has no focal plane {focal_plane} "
                   f"(its planes: {planes.tolist()}); set ExtractionSettings.focal_plane to one of them")


def decode_frame(data: bytes, image_size: int) -> np.ndarray:
  """Encoded image bytes -> float32 [image_size, image_size] gray in [-1, 1]."""
  return frames_lib.gray(data, image_size, value_range=(-1.0, 1.0))


def clip_plan(example: dict, settings: ExtractionSettings) -> list[np.ndarray]:
  """Frame indices of each clip of one embryo (one clip in 'uniform' mode)."""
  hours = np.asarray(example["hours"], np.float32)
  embryo_id = str(example.get("embryo_id", "?"))
  if settings.mode == "uniform":
    windows = sampling.sample("uniform", hours, num_frames=settings.num_frames,
                              observe_hours=settings.observe_hours, embryo_id=embryo_id)
  else:
    windows = sampling.sample("sliding_windows", hours, num_frames=settings.clip_length,
                              clip_length=settings.clip_length, window_stride=settings.window_stride,
                              observe_hours=settings.observe_hours, embryo_id=embryo_id)
  return [indices for indices, _ in windows]


def decode_clip(example: dict, indices: np.ndarray, settings: ExtractionSettings,
                plane: int) -> np.ndarray:
  """float32 [L, S, S, in_channels]; each frame is decoded once even when repeated."""
  frames = np.asarray(example["frames"], dtype=object)
  if frames.ndim == 1:
    frames = frames[:, None]
  decoded = {int(i): decode_frame(frames[int(i), plane], settings.image_size) for i in set(indices.tolist())}
  clip = np.stack([decoded[int(i)] for i in indices])
  return np.repeat(clip[..., None], settings.in_channels, axis=-1)


def step_hours(hours: np.ndarray, indices: np.ndarray, num_steps: int) -> np.ndarray:
  """Hour of the last frame each of `num_steps` steps summarises (clip divided evenly)."""
  ends = np.ceil((np.arange(num_steps) + 1) * len(indices) / num_steps).astype(np.int64) - 1
  return np.maximum.accumulate(np.asarray(hours, np.float32)[indices])[ends]


# ------------------------------------------------------------------ extraction


def weights_checksum(variables: Any) -> str:
  """sha256 over every variable (path, dtype, shape and bytes), in sorted path order."""
  import jax
  from flax import traverse_util

  flat = traverse_util.flatten_dict(jax.device_get(dict(variables)))
  digest = hashlib.sha256()
  for path in sorted(flat, key=lambda p: tuple(map(str, p))):
    array = np.ascontiguousarray(np.asarray(flat[path]))
    digest.update("/".join(map(str, path)).encode())
    digest.update(f"{array.dtype}{array.shape}".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def source_fingerprint(source) -> dict:
  """Size and sha256 of the (embryo_id, label, number of frames) list of a source."""
  digest = hashlib.sha256()
  for index in range(len(source)):
    example = source[index]
    digest.update(f"{example['embryo_id']}|{int(example['label'])}|{len(example['hours'])}\n".encode())
  return {"num_examples": len(source), "sha256": digest.hexdigest()}


def make_manifest(model_name: str, model_kwargs: dict, variables: Any, settings: ExtractionSettings,
                  source) -> dict:
  return {"format_version": FORMAT_VERSION, "model": model_name,
          "model_kwargs": json.loads(json.dumps(model_kwargs, sort_keys=True, default=str)),
          "weights_sha256": weights_checksum(variables), "settings": settings.manifest_dict(),
          "source": source_fingerprint(source)}


def extractor_module(model_name: str, model_kwargs: Optional[dict] = None):
  """The video model in feature mode (I3D: per-step 1024-d features)."""
  spec = models.get_spec(model_name)
  if spec.input_kind != "video":
    raise ValueError(f"feature extraction needs a video model; {model_name!r} takes "
                     f"{spec.input_kind!r} input")
  kwargs = dict(model_kwargs or {})
  if model_name == "i3d":
    kwargs = {"features_per_step": True, **kwargs}
  return models.create(model_name, num_classes=0, **kwargs)


def init_extractor_variables(model_name: str, model_kwargs: Optional[dict],
                             settings: ExtractionSettings, seed: int = 0) -> Any:
  """Randomly initialised extractor variables (seeded, so a rerun finds the same cache).

  Random features are only good for smoke tests: real use loads converted weights.
  """
  import jax

  length = settings.num_frames if settings.mode == "uniform" else settings.clip_length
  clip = np.zeros((1, length, settings.image_size, settings.image_size, settings.in_channels), np.float32)
  variables = extractor_module(model_name, model_kwargs).init(jax.random.PRNGKey(seed), clip, train=False)
  return jax.tree.map(np.asarray, dict(variables))


@functools.lru_cache(maxsize=8)
def _feature_fn(model_name: str, kwargs_json: str):
  """The jitted feature function of a model, shared by every extraction that uses it."""
  import jax

  module = extractor_module(model_name, json.loads(kwargs_json))
  return jax.jit(lambda v, x: module.apply(v, x, train=False))


class _Extractor:
  """The model in feature mode, jitted once for [batch_size, L, S, S, C] clips."""

  def __init__(self, model_name: str, model_kwargs: dict, variables: Any, batch_size: int):
    self._apply = _feature_fn(model_name, json.dumps(model_kwargs, sort_keys=True))
    self._variables = variables
    self.batch_size = batch_size

  def __call__(self, clips: np.ndarray) -> np.ndarray:
    """[n, L, S, S, C] -> features [n, steps, D] (pooled features get one step)."""
    count = clips.shape[0]
    padded = np.zeros((self.batch_size,) + clips.shape[1:], np.float32)
    padded[:count] = clips
    features = np.asarray(self._apply(self._variables, padded))[:count]
    return features if features.ndim == 3 else features[:, None, :]


def _extract_all(source, extractor: _Extractor, settings: ExtractionSettings, progress: bool):
  """Per embryo: (features [T, D], hours [T]); clips of all embryos share the batches."""
  from tqdm import tqdm

  results: list[list] = [[] for _ in range(len(source))]
  pending: list = []  # (embryo index, clip indices, clip, hours)

  def flush():
    if not pending:
      return
    feats = extractor(np.stack([clip for _, _, clip, _ in pending]))
    for (index, indices, _, hours), feat in zip(pending, feats):
      if settings.mode == "uniform":
        results[index].append((feat, step_hours(hours, indices, feat.shape[0])))
      else:
        latest = np.asarray(hours, np.float32)[indices].max(keepdims=True)  # looped windows
        results[index].append((feat.mean(axis=0, keepdims=True), latest))
    pending.clear()

  for index in tqdm(range(len(source)), desc="extracting features", unit="embryo",
                    disable=not progress):
    example = source[index]
    plane = plane_index(example, settings.focal_plane)
    for indices in clip_plan(example, settings):
      pending.append((index, indices, decode_clip(example, indices, settings, plane), example["hours"]))
      if len(pending) == extractor.batch_size:
        flush()
  flush()
  return [(np.concatenate([f for f, _ in parts]), np.concatenate([h for _, h in parts]))
          for parts in results]


def extract_features(source, *, variables: Any, model_name: str = "i3d", model_kwargs: Optional[dict] = None,
                     settings: ExtractionSettings = ExtractionSettings(), progress: bool = True) -> list:
  """Per example of `source` (a sequence of examples): (features [T, D], hours [T])."""
  extractor = _Extractor(model_name, dict(model_kwargs or {}), variables, settings.batch_size)
  return _extract_all(source, extractor, settings, progress)


def build_cache(source, cache_dir: str, *, variables: Any, model_name: str = "i3d",
                model_kwargs: Optional[dict] = None, settings: ExtractionSettings = ExtractionSettings(),
                progress: bool = True) -> "FeatureSource":
  """Extracts features of every example of `source` into `cache_dir` (replacing it)."""
  model_kwargs = dict(model_kwargs or {})
  manifest = make_manifest(model_name, model_kwargs, variables, settings, source)
  per_embryo = extract_features(source, variables=variables, model_name=model_name,
                                model_kwargs=model_kwargs, settings=settings, progress=progress)
  lengths = np.array([f.shape[0] for f, _ in per_embryo], np.int64)
  tmp = cache_dir.rstrip("/") + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  np.save(os.path.join(tmp, "features.npy"), np.concatenate([f for f, _ in per_embryo]).astype(np.float32))
  np.save(os.path.join(tmp, "hours.npy"), np.concatenate([h for _, h in per_embryo]).astype(np.float32))
  np.save(os.path.join(tmp, "offsets.npy"), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
  examples = [source[i] for i in range(len(source))]
  np.save(os.path.join(tmp, "labels.npy"), np.array([int(e["label"]) for e in examples], np.int64))
  with open(os.path.join(tmp, "ids.json"), "w") as f:
    json.dump({"embryo_id": [str(e["embryo_id"]) for e in examples],
               "patient_id": [str(e.get("patient_id", "")) for e in examples]}, f)
  manifest["feature_dim"] = int(per_embryo[0][0].shape[-1]) if per_embryo else 0
  manifest["max_steps"] = int(lengths.max()) if lengths.size else 0
  with open(os.path.join(tmp, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
  shutil.rmtree(cache_dir, ignore_errors=True)
  os.replace(tmp, cache_dir)
  return FeatureSource(cache_dir)


def read_manifest(cache_dir: str) -> Optional[dict]:
  path = os.path.join(cache_dir, "manifest.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def ensure_cache(source, cache_dir: str, *, variables: Any, model_name: str = "i3d",
                 model_kwargs: Optional[dict] = None, settings: ExtractionSettings = ExtractionSettings(),
                 progress: bool = True) -> "FeatureSource":
  """The cache in `cache_dir` if its manifest matches; otherwise (re)builds it."""
  model_kwargs = dict(model_kwargs or {})
  existing = read_manifest(cache_dir)
  if existing is not None:
    wanted = make_manifest(model_name, model_kwargs, variables, settings, source)
    found = {k: existing.get(k) for k in wanted}
    if found == wanted:
      return FeatureSource(cache_dir)
    changed = sorted(k for k in wanted if found[k] != wanted[k])
    if progress:
      print(f"feature cache {cache_dir} is stale ({', '.join(changed)} changed): rebuilding", flush=True)
  return build_cache(source, cache_dir, variables=variables, model_name=model_name,
                     model_kwargs=model_kwargs, settings=settings, progress=progress)


# ------------------------------------------------------------------ reading


class FeatureSource:
  """Random access to a feature cache; picklable (arrays are memory-mapped lazily).

  `source[i]` is {'features' float32 [T_i, D], 'hours' float32 [T_i], 'label' int,
  'embryo_id' str, 'patient_id' str}.
  """

  def __init__(self, cache_dir: str):
    self.cache_dir = cache_dir
    self.manifest = read_manifest(cache_dir)
    if self.manifest is None:
      raise FileNotFoundError(f"no feature cache in {cache_dir!r} (manifest.json missing): build it with "
                              "blastjax.feature_cache.ensure_cache or scripts/extract_features.py")
    with open(os.path.join(cache_dir, "ids.json")) as f:
      ids = json.load(f)
    self._embryo_ids, self._patient_ids = ids["embryo_id"], ids["patient_id"]
    self._offsets = np.load(os.path.join(cache_dir, "offsets.npy"))
    self._labels = np.load(os.path.join(cache_dir, "labels.npy"))
    self._arrays = None
    self._open_lock = threading.Lock()

  def __getstate__(self):
    return {"cache_dir": self.cache_dir}

  def __setstate__(self, state):
    self.__init__(state["cache_dir"])

  def _open(self):
    """Memory-maps the arrays once, under a lock.

    Grain's reader threads call `__getitem__` concurrently; without the lock each would
    parse the .npy headers at the same time, and CPython 3.11's `ast` (which np.load
    uses for the header) fails under that ("AST constructor recursion depth mismatch").
    """
    with self._open_lock:
      if self._arrays is None:
        self._arrays = tuple(np.load(os.path.join(self.cache_dir, f"{name}.npy"), mmap_mode="r")
                             for name in ("features", "hours"))
    return self._arrays

  def __len__(self) -> int:
    return int(self._labels.size)

  @property
  def feature_dim(self) -> int:
    return int(self.manifest["feature_dim"])

  @property
  def max_steps(self) -> int:
    return int(self.manifest["max_steps"])

  def __getitem__(self, index: int) -> dict:
    if not -len(self) <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} cached embryos")
    index %= len(self)
    features, hours = self._open()
    start, stop = int(self._offsets[index]), int(self._offsets[index + 1])
    return {"features": np.array(features[start:stop], np.float32),
            "hours": np.array(hours[start:stop], np.float32),
            "label": int(self._labels[index]), "embryo_id": self._embryo_ids[index],
            "patient_id": self._patient_ids[index]}


def feature_batches(source: FeatureSource, batch_size: int, *, num_steps: Optional[int] = None,
                    shuffle: bool = False, seed: int = 0, drop_remainder: bool = False,
                    indices: Optional[Sequence[int]] = None) -> Iterator[dict]:
  """One pass over `source` (or its `indices`) in padded batches of `batch_size`:
  {'features' [B,T,D], 'mask' [B,T], 'hours' [B,T], 'label' [B], 'example_index' [B]}.

  The rows of `pipeline.make_feature_loader` (one process, no sharding). `num_steps`
  (default: the longest cached sequence) fixes T, so every batch has the same shape and
  a jitted step compiles once. A last partial batch is padded with repeats of its first
  example flagged by `example_index` -1, unless `drop_remainder`.
  """
  loader = pipeline.make_feature_loader(source, indices=indices, num_steps=num_steps, batch_size=batch_size,
                                        shuffle=shuffle, seed=seed, drop_remainder=drop_remainder,
                                        shard_by_process=False)
  for batch in loader:
    yield {"features": batch["features"], "mask": batch["mask"], "hours": batch["hours"],
           "label": batch["label"],
           "example_index": np.where(batch["valid"], batch["example_index"], -1).astype(np.int64)}
