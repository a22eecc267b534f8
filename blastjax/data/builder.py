"""TFDS builder of embryo time-lapse sequences (array_record; builds and reads without TensorFlow).

blastjax.data owns the builder (blastjax.data.dataset builds and reads through it);
tfds_builders/embryo_timelapse re-exports it where TFDS's tooling looks for builders.

One example per embryo. Frames are stored as their own encoded images (the source's
JPEG/PNG bytes, or PNG after an optional build-time resize), flattened frame-major:
`frames[t * num_focal_planes + p]`. Only `Tensor` features are used, so that
`tfds.data_source` reads the dataset with no TensorFlow installed.

Configs: `synthetic` (the built-in simulator; the default), `folder` (the generic layout
of blastjax.data.layouts) and `gomez2022` (Gomez et al. 2022 as its archives extract);
the last two read `manual_dir`.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from typing import Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds

from blastjax.data import frames as frames_lib
from blastjax.data import layouts, synthetic
from blastjax.data.records import CLASS_NAMES, INDEX_FILE, REPORT_FILE, index_entry


@dataclasses.dataclass
class EmbryoTimelapseConfig(tfds.core.BuilderConfig):
  """Builder settings. `layout` chooses the reader; the rest tunes it."""

  layout: str = "synthetic"
  # Synthetic simulator (layout='synthetic').
  num_embryos: int = 100
  num_patients: int = 20
  image_size: int = 128
  interval_minutes: float = 60.0
  horizon_hours: float = 80.0
  simulator_seed: int = 0
  image_format: str = "jpeg"
  # Every layout: resize frames to this size at build time (None keeps the original).
  resize: Optional[int] = None


BUILDER_CONFIGS = [
    EmbryoTimelapseConfig(name="synthetic", layout="synthetic",
                          description="Built-in synthetic embryos (small: builds in well under a minute)."),
    EmbryoTimelapseConfig(name="folder", layout="folder",
                          description="Generic layout: labels.csv + one folder per embryo, F<offset> plane folders."),
    EmbryoTimelapseConfig(name="gomez2022", layout="gomez2022",
                          description="Gomez et al. 2022 time-lapse embryo dataset (704 embryos, 7 focal planes)."),
]


def features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "embryo_id": tfds.features.Text(),
      "patient_id": tfds.features.Text(),
      "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
      "frames": tfds.features.Tensor(shape=(None,), dtype=np.object_),
      "num_focal_planes": tfds.features.Tensor(shape=(), dtype=np.int32),
      "focal_planes": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      "hours": tfds.features.Tensor(shape=(None,), dtype=np.float32),
      "event_names": tfds.features.Tensor(shape=(None,), dtype=np.object_),
      "event_frames": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      "source": tfds.features.Text(),
      "split": tfds.features.Text(),
  })


def to_example(record: dict, resize: Optional[int] = None) -> dict:
  """A reader record (frames [T, P] of bytes) as a TFDS example."""
  frames = record["frames"]
  flat = [(frames_lib.resize(b, resize) if resize else b) for b in frames.reshape(-1)]
  events = record.get("events") or {}
  return {
      "embryo_id": record["embryo_id"], "patient_id": record["patient_id"],
      "label": int(record["label"]), "frames": np.asarray(flat, dtype=object),
      "num_focal_planes": np.int32(frames.shape[1]),
      "focal_planes": np.asarray(record["focal_planes"], np.int32),
      "hours": np.asarray(record["hours"], np.float32),
      "event_names": np.asarray(list(events.keys()), dtype=object),
      "event_frames": np.asarray(list(events.values()), np.int32),
      "source": record["source"], "split": record.get("split", ""),
  }


class EmbryoTimelapse(tfds.core.GeneratorBasedBuilder):
  """Embryo time-lapse sequences with blast / non-blast labels."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release: synthetic, folder and gomez2022 configs."}
  BUILDER_CONFIGS = BUILDER_CONFIGS
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "folder: pass --manual_dir, the folder holding labels.csv and one folder per embryo. "
      "gomez2022: extract the release's archives (embryo_dataset*.tar.gz) into --manual_dir.")

  def __init__(self, *, skip_invalid: bool = False, check_jpeg_scans: bool = False, **kwargs):
    """skip_invalid: skip (and report) invalid embryos instead of stopping the build.
    check_jpeg_scans: also decode every JPEG's Huffman-coded data to find damage PIL
    repairs silently (slow: docs/data.md). Neither is part of the config: they change
    what is tolerated or checked, not what is stored."""
    self.skip_invalid = skip_invalid
    self.check_jpeg_scans = check_jpeg_scans
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=features(), supervised_keys=None,
        description="Embryo time-lapse sequences: frames per focal plane, hours, labels, patients.",
        # Stored in the order read (sorted by embryo id), so that the light index
        # written beside the shards (INDEX_FILE) lines up with the records.
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    self.report = layouts.Report(check_jpeg_scans=self.check_jpeg_scans)
    self.index = []  # index_entry of every example, in storage order
    return {"full": self._generate_examples(dl_manager)}

  def _records(self, dl_manager) -> Iterator[dict]:
    config = self.builder_config
    if config.layout == "synthetic":
      sim = synthetic.SimulatorConfig(
          image_size=config.image_size, interval_minutes=config.interval_minutes,
          horizon_hours=config.horizon_hours, num_embryos=config.num_embryos,
          num_patients=min(config.num_patients, config.num_embryos), seed=config.simulator_seed,
          image_format=config.image_format)
      work = [(plan, sim) for plan in synthetic.plan_embryos(sim)]
      workers = min(os.cpu_count() or 1, 4)
      if workers > 1 and len(work) >= 16:
        # spawn workers import only numpy and PIL (synthetic.py), not TFDS.
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
          yield from pool.imap(synthetic.simulate_one, work, chunksize=2)
      else:
        yield from map(synthetic.simulate_one, work)
    elif config.layout == "folder":
      yield from layouts.read_folder_layout(str(dl_manager.manual_dir), self.report, self.skip_invalid)
    elif config.layout == "gomez2022":
      yield from layouts.read_gomez2022(str(dl_manager.manual_dir), self.report, self.skip_invalid)
    else:
      raise ValueError(f"unknown layout {config.layout!r}; expected synthetic, folder or gomez2022")

  def _generate_examples(self, dl_manager):
    seen = set()
    for record in self._records(dl_manager):
      if record["embryo_id"] in seen:  # readers already refuse duplicates; a last guard
        raise layouts.LayoutError(f"duplicate embryo_id {record['embryo_id']!r}")
      seen.add(record["embryo_id"])
      self.report.count(record)
      example = to_example(record, self.builder_config.resize)
      self.index.append(index_entry(example))
      yield len(self.index) - 1, example
    if not self.index:
      raise layouts.LayoutError(self._nothing_left())

  def _nothing_left(self) -> str:
    """The one line for a build with no embryo to store (TFDS would fail on an empty split)."""
    skipped = self.report.skipped
    if not skipped:
      return f"{self.builder_config.name}: no embryo found in {self._manual_dir_text()}"
    first = skipped[0]
    return (f"no embryo left to build: all {len(skipped)} were skipped as invalid (first: "
            f"{first['embryo_id']}: {first['path']}: {first['problem']})")

  def _manual_dir_text(self) -> str:
    return "the input folder" if self.builder_config.layout == "synthetic" else "--manual_dir"

  def _download_and_prepare(self, dl_manager, download_config=None):
    """TFDS's, then the build report written into the (still temporary) dataset folder:
    TFDS renames that folder into place only after this returns, so a build that is
    published always has its report (the list of skipped embryos) beside it."""
    super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
    self.write_report()

  def write_report(self) -> str:
    """Writes build_report.json (counts, skipped embryos, adaptations) and embryos.json
    (per-example ids, labels, sizes in storage order) beside the dataset."""
    path = os.path.join(self.data_dir, REPORT_FILE)
    with open(path, "w") as f:
      json.dump(getattr(self, "report", layouts.Report()).as_dict(), f, indent=2)
    with open(os.path.join(self.data_dir, INDEX_FILE), "w") as f:
      json.dump(getattr(self, "index", []), f)
    return path
