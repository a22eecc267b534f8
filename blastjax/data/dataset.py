"""Building and reading the embryo_timelapse TFDS dataset.

`ensure_built` builds a config once (the synthetic default needs no input), and
`load_source` returns a random-access, picklable source of examples in the format the
pipeline reads:

    embryo_id str, patient_id str, label int (0 non_blast, 1 blast),
    frames  object [T, P]  encoded image bytes, frame-major, every plane of every frame,
    hours   float32 [T]    strictly increasing, hours since insemination,
    focal_planes int32 [P] plane offsets (0 = central), events {name: frame index},
    source str, split str ('' unless the layout fixes one).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from typing import Optional

import numpy as np

from blastjax.data import splits
from blastjax.data.records import (CLASS_NAMES, DATASET_NAME, INDEX_FILE, REPORT_FILE, SPLIT,  # noqa: F401
                                   index_entry)

_SHORT = {"num_embryos": "n", "num_patients": "p", "image_size": "px", "interval_minutes": "min",
          "horizon_hours": "h", "simulator_seed": "seed", "resize": "resize", "image_format": "fmt"}


def _builder_module():
  """blastjax.data.builder, imported when a builder is needed: it imports
  tensorflow_datasets (seconds)."""
  from blastjax.data import builder

  return builder


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def builder_config(config: str = "synthetic", **options):
  """The builder config `config` with `options` changed; its name encodes the changes,
  so differently-built variants never share a directory."""
  et = _builder_module()

  base = {c.name: c for c in et.BUILDER_CONFIGS}.get(config)
  if base is None:
    raise ValueError(f"dataset config {config!r} unknown; choose from {[c.name for c in et.BUILDER_CONFIGS]}")
  fields = {f.name for f in dataclasses.fields(et.EmbryoTimelapseConfig)}
  unknown = sorted(set(options) - fields)
  if unknown:
    raise ValueError(f"unknown dataset option(s) {unknown}; known: "
                     f"{sorted(_SHORT) + ['check_jpeg_scans', 'skip_invalid']}")
  # 120 and 120.0 minutes are the same build: coerce to the field's type.
  options = {k: (type(getattr(base, k))(v) if getattr(base, k) is not None and v is not None else v)
             for k, v in options.items()}
  changed = {k: v for k, v in options.items() if getattr(base, k) != v}
  if not changed:
    return base
  suffix = "_".join(f"{_SHORT.get(k, k)}{v}" for k, v in sorted(changed.items()))
  name = re.sub(r"[^\w.\-]", "-", f"{config}_{suffix}")
  return dataclasses.replace(base, name=name, **changed)


def get_builder(config: str = "synthetic", data_dir: Optional[str] = None, skip_invalid: bool = False,
                check_jpeg_scans: bool = False, **options):
  """The TFDS builder of `config` with builder `options` (see builder_config).

  skip_invalid and check_jpeg_scans only matter when building: they share the directory
  of the default build.
  """
  et = _builder_module()

  chosen = builder_config(config, **options)
  # A registered config goes by name: the builder is then picklable into processes
  # (grain workers) where an unpickled copy of the config object would be refused by
  # TFDS as "a custom BuilderConfig named like an available one".
  registered = any(chosen is c for c in et.BUILDER_CONFIGS)
  return et.EmbryoTimelapse(config=chosen.name if registered else chosen,
                            data_dir=data_dir or default_data_dir(),
                            file_format="array_record", skip_invalid=skip_invalid,
                            check_jpeg_scans=check_jpeg_scans)


# The builds this process has already reported as built.
_SAID_BUILT: set = set()


def build(config: str = "synthetic", data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
          overwrite: bool = False, verbose: bool = True, **options):
  """Builds the dataset `config` (with builder `options`); returns (builder, summary text).

  Safe for earlier builds: TFDS writes into a temporary directory renamed only when
  complete, and `overwrite` builds the new version beside the old one (in
  `<data_dir>/.rebuild`) and swaps them only after it succeeded.
  Raises layouts.InvalidEmbryo / layouts.LayoutError for bad input (see layouts.py).
  """
  import tensorflow_datasets as tfds

  data_dir = data_dir or default_data_dir()
  builder = get_builder(config, data_dir, **options)
  if _is_built(builder) and not overwrite:
    text = summary(builder, _report_path(builder))
    if verbose and builder.data_dir not in _SAID_BUILT:  # once per process (reproduce checks every row)
      _SAID_BUILT.add(builder.data_dir)
      print(f"Already built in {builder.data_dir} (to rebuild: python -m blastjax.data.build "
            f"--config {config} --overwrite, with the same options)\n{text}", flush=True)
    return builder, text
  if builder.builder_config.layout != "synthetic":
    if not manual_dir:
      raise ValueError(f"dataset config {config!r} reads files from disk: pass manual_dir "
                       "(the folder holding the data; see docs/data.md)")
    if not os.path.isdir(manual_dir):
      raise ValueError(f"manual_dir {manual_dir!r} is not a directory")
  target = builder
  if _is_built(builder):
    scratch = os.path.join(data_dir, ".rebuild")
    shutil.rmtree(scratch, ignore_errors=True)
    builder = get_builder(config, scratch, **options)
  if verbose:
    print(f"Building {DATASET_NAME}/{builder.builder_config.name} into {target.data_dir} ...", flush=True)
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  builder.download_and_prepare(download_config=download_config)
  builder.write_report()
  if builder is not target:
    backup = target.data_dir + ".old"
    shutil.rmtree(backup, ignore_errors=True)
    os.rename(target.data_dir, backup)
    os.rename(builder.data_dir, target.data_dir)
    shutil.rmtree(backup)
    shutil.rmtree(os.path.join(data_dir, ".rebuild"), ignore_errors=True)
    builder = get_builder(config, data_dir, **options)
  text = summary(builder, _report_path(builder))
  if verbose:
    print(text, flush=True)
  return builder, text


def ensure_built(config: str = "synthetic", data_dir: Optional[str] = None,
                 manual_dir: Optional[str] = None, verbose: bool = True, **options) -> str:
  """Builds the dataset unless a complete build is already in `data_dir`; returns data_dir.

  `options` are builder options (e.g. num_embryos, num_patients, image_size,
  interval_minutes, horizon_hours, simulator_seed, resize, skip_invalid); pass the same
  ones to load_source. A failed build leaves earlier complete builds untouched.
  """
  data_dir = data_dir or default_data_dir()
  build(config, data_dir, manual_dir=manual_dir, verbose=verbose, **options)
  return data_dir


def _read_index(builder):
  """The build's embryos.json (list of index entries), or None if absent or unreadable."""
  try:
    with open(os.path.join(builder.data_dir, INDEX_FILE)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _is_built(builder) -> bool:
  """builder.is_prepared(), without TFDS's warning about a version folder not yet there."""
  return os.path.isfile(os.path.join(builder.data_dir, "dataset_info.json")) and builder.is_prepared()


def is_built(config: str = "synthetic", data_dir: Optional[str] = None, **options) -> bool:
  """Whether a complete build of dataset `config` with `options` is in `data_dir`."""
  return _is_built(get_builder(config, data_dir, **options))


def _report_path(builder) -> str:
  return os.path.join(builder.data_dir, REPORT_FILE)


def summary(builder, report_path: Optional[str] = None) -> str:
  """Embryos per class, patients, frames, skipped embryos and adaptations of a build
  (read from its build_report.json)."""
  name = f"{DATASET_NAME}/{builder.builder_config.name}"
  if not report_path or not os.path.exists(report_path):
    return f"{name}: {builder.info.splits[SPLIT].num_examples} embryos (no build report found)"
  with open(report_path) as f:
    r = json.load(f)
  lines = [f"{name}: {r['embryos']} embryos ({r['blast']} blast, {r['non_blast']} non_blast), "
           f"{r['patients']} patients, {r['time_points']} time points, {r['images']} frame images",
           f"skipped embryos: {len(r['skipped'])}"
           + "".join(f"\n  - {s['embryo_id']}: {s['path']}: {s['problem']}" for s in r["skipped"]),
           "adaptations: " + (", ".join(f"{k}={v}" for k, v in sorted(r["adaptations"].items())) or "none"),
           f"report: {report_path}"]
  return "\n".join(lines)


def _text(value) -> str:
  return value.decode("utf-8", errors="backslashreplace") if isinstance(value, bytes) else str(value)


class EmbryoSource:
  """Random access to examples in the pipeline's format (see the module docstring).

  Picklable (grain worker processes reopen the array_record files). `indices` restricts
  it to a subset, in the given order.
  """

  def __init__(self, data_source, indices=None, name: str = DATASET_NAME, index=None):
    """index: the build's embryos.json (one entry per stored example), which lets
    metadata() answer without reading the frames."""
    self._source = data_source
    self._indices = None if indices is None else np.asarray(indices, np.int64)
    self.name = name
    self._entries = index if index is not None and len(index) == len(data_source) else None
    self._metadata = None

  def __len__(self) -> int:
    return len(self._source) if self._indices is None else int(self._indices.size)

  def __repr__(self) -> str:
    return f"EmbryoSource({self.name}, {len(self)} embryos)"

  def _index(self, index: int) -> int:
    if not -len(self) <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} embryos")
    index = index % len(self)
    return index if self._indices is None else int(self._indices[index])

  def raw(self, index: int) -> dict:
    """The stored example with ids as text, frames still flat (frame-major)."""
    example = dict(self._source[self._index(index)])
    for key in ("embryo_id", "patient_id", "source", "split"):
      example[key] = _text(example.get(key, ""))
    return example

  def __getitem__(self, index: int) -> dict:
    example = self.raw(index)
    planes = int(example.pop("num_focal_planes"))
    example["frames"] = np.asarray(example["frames"], dtype=object).reshape(-1, planes)
    names = [_text(n) for n in example.pop("event_names")]
    example["events"] = dict(zip(names, map(int, example.pop("event_frames"))))
    example["label"] = int(example["label"])
    example["hours"] = np.asarray(example["hours"], np.float32)
    example["focal_planes"] = np.asarray(example["focal_planes"], np.int32)
    return example

  def subset(self, indices, name: Optional[str] = None) -> "EmbryoSource":
    """The examples `indices` (positions in this source) as a new source."""
    indices = np.asarray(indices, np.int64).reshape(-1)
    base = np.arange(len(self._source)) if self._indices is None else self._indices
    return EmbryoSource(self._source, base[indices], name or self.name, self._entries)

  def metadata(self) -> dict:
    """Per-example labels, patient_ids, embryo_ids, splits (arrays in source order), and
    class_names, focal_planes, num_focal_planes and image_size (height, width) of the
    first example. From the build's embryos.json when present (no frame is read), else
    by reading every example once."""
    if self._metadata is None:
      if self._entries is not None:
        rows = [self._entries[self._index(i)] for i in range(len(self))]
      else:
        rows = [index_entry(self.raw(i)) for i in range(len(self))]
      first = rows[0] if rows else None
      self._metadata = {
          "labels": np.asarray([int(r["label"]) for r in rows], np.int64),
          "patient_ids": np.asarray([r["patient_id"] for r in rows], dtype=object),
          "embryo_ids": np.asarray([r["embryo_id"] for r in rows], dtype=object),
          "splits": np.asarray([r["split"] for r in rows], dtype=object),
          # The hour of each embryo's first frame; NaN for builds indexed before it was kept.
          "first_hours": np.asarray([np.nan if r.get("first_hour") is None else r["first_hour"] for r in rows],
                                    np.float64),
          "class_names": CLASS_NAMES,
          "focal_planes": None if first is None else np.asarray(first["focal_planes"], np.int32),
          "num_focal_planes": 0 if first is None else len(first["focal_planes"]),
          "image_size": None if first is None else tuple(first["image_size"]),
      }
    return self._metadata


def load_source(config: str = "synthetic", split: str = "all", data_dir: Optional[str] = None,
                split_seed: int = 0, **options) -> EmbryoSource:
  """The built dataset `config` as an EmbryoSource; a clear error if it is not built.

  split: 'all' (every embryo), or a split name. When the layout fixes splits (the
  folder layout's `split` column) a name selects those embryos; otherwise 'train' and
  'test' are the paper's class-balanced half/half split (splits.paper_split, by
  `split_seed`).
  """
  builder = get_builder(config, data_dir, **options)
  if not _is_built(builder):
    raise FileNotFoundError(
        f"dataset {DATASET_NAME}/{builder.builder_config.name} is not built in {builder.data_dir}: "
        f"run `python -m blastjax.data.build --config {config} --data_dir {data_dir or default_data_dir()}` "
        "(add --manual_dir for folder/gomez2022), or call blastjax.data.dataset.ensure_built")
  source = EmbryoSource(builder.as_data_source()[SPLIT], name=f"{DATASET_NAME}/{builder.builder_config.name}",
                        index=_read_index(builder))
  if split in ("all", SPLIT):
    return source
  meta = source.metadata()
  fixed = sorted({s for s in meta["splits"] if s})
  if fixed:
    if split not in fixed:
      raise ValueError(f"split {split!r} not in the dataset's split column; available: {['all'] + fixed}")
    return source.subset(np.flatnonzero(meta["splits"] == split), f"{source.name}[{split}]")
  if split not in ("train", "test"):
    raise ValueError(f"split {split!r} unknown; use 'all', 'train' or 'test' (paper split by split_seed)")
  train, test = splits.paper_split(meta["labels"], split_seed)
  return source.subset(train if split == "train" else test, f"{source.name}[{split}]")
