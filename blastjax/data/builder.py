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

The DatasetInfo describes the dataset to programs that do not import blastjax: every
feature has a `doc` (shape, dtype, units, layout), `info.metadata` (metadata.json) holds
frame size, frame interval, focal planes, the config's options and, for synthetic data,
the simulator's version and seed (see `describe`), and `homepage`/`citation` name the
public release it reads and the benchmark paper.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
from typing import Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds

from blastjax.data import frames as frames_lib
from blastjax.data import layouts, synthetic
from blastjax.data.records import CLASS_NAMES, INDEX_FILE, REPORT_FILE, SPLIT, index_entry

# The public release the gomez2022 config reads (Zenodo record 6390798).
HOMEPAGE = "https://zenodo.org/records/6390798"
# The release read by the gomez2022 config, then the benchmark paper whose task (blastocyst
# prediction from cleavage-stage time-lapse frames) every config serves. The benchmark
# paper's text states no venue, year or DOI, so its entry has none.
CITATION = r"""@article{gomez2022timelapse,
  author  = {Gomez, Tristan and Feyeux, Magalie and Boulant, Justine and Normand, Nicolas and
             David, Laurent and Paul-Gilloteaux, Perrine and Fr{\'e}our, Thomas and
             Mouch{\`e}re, Harold},
  title   = {A time-lapse embryo dataset for morphokinetic parameter prediction},
  journal = {Data in Brief},
  volume  = {42},
  pages   = {108258},
  year    = {2022},
  doi     = {10.1016/j.dib.2022.108258},
}

@misc{wang_cleavage_blastocyst_dataset,
  author = {Wang, Sijia and Fan, Jing and Li, Hanhui and Zhao, Mingpeng and Li, Xuemei and
            Chan, David Yiu Leung},
  title  = {A Dataset for Deep Learning based Cleavage-stage Blastocyst Prediction with
            Time-lapse Images},
  note   = {Time-lapse images of more than 500 embryos (about 194k frames), collected
            August 2021 to July 2023},
}
"""
# Stated in metadata and in the docs of `frames` and `hours`.
FRAME_LAYOUT = "frames[t * num_focal_planes + p]"
TIME_UNIT = "hours since insemination"

# TFDS's warning each time a builder gets a config not in BUILDER_CONFIGS.
CUSTOM_CONFIG_MESSAGE = "Using custom data configuration"


class _CustomConfigNotice(logging.Filter):
  """Lowers TFDS's "Using custom data configuration" warning to DEBUG.

  Every build with changed options (the smoke run's, a test's) is such a config, and
  TFDS repeats the warning for each builder made (up to three a run) though nothing is
  wrong. As DEBUG it shows with absl's `--verbosity=1` (or the `absl` logger at DEBUG)
  and is hidden otherwise; every other record passes unchanged.
  """

  blastjax_custom_config_notice = True  # found again after a module reload

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno != logging.WARNING or not str(record.msg).startswith(CUSTOM_CONFIG_MESSAGE):
      return True
    record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
    return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _install_notice_filter() -> None:
  """On the `absl` logger (TFDS logs through absl.logging), once per process."""
  logger = logging.getLogger("absl")
  if not any(getattr(f, "blastjax_custom_config_notice", False) for f in logger.filters):
    logger.addFilter(_CustomConfigNotice())


_install_notice_filter()


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


# The fields of EmbryoTimelapseConfig that are build options (not TFDS's own: name, version...).
OPTIONS = tuple(f.name for f in dataclasses.fields(EmbryoTimelapseConfig)
                if f.name not in {g.name for g in dataclasses.fields(tfds.core.BuilderConfig)})


BUILDER_CONFIGS = [
    EmbryoTimelapseConfig(name="synthetic", layout="synthetic",
                          description="Built-in synthetic embryos (small: builds in well under a minute)."),
    EmbryoTimelapseConfig(name="folder", layout="folder",
                          description="Generic layout: labels.csv + one folder per embryo, F<offset> plane folders."),
    EmbryoTimelapseConfig(name="gomez2022", layout="gomez2022",
                          description="Gomez et al. 2022 time-lapse embryo dataset (704 embryos, 7 focal planes)."),
]


def _doc(desc: str, value_range: Optional[str] = None) -> tfds.features.Documentation:
  return tfds.features.Documentation(desc=desc, value_range=value_range)


# The docs go into features.json only: the stored records (and the version) are unchanged.
FEATURE_DOCS = {
    "embryo_id": _doc("Embryo id, unique in the dataset (synthetic SYN<patient>-<index>; folder and "
                      "gomez2022: the embryo's folder name). Examples are stored sorted by it."),
    "patient_id": _doc("Patient id, shared by the sibling embryos of one patient (synthetic P<index>; folder: "
                       "labels.csv; gomez2022: the embryo id before its last '-'). Siblings share competence "
                       "and imaging conditions: split by patient to test on new patients."),
    "label": _doc("Whether the embryo reached the blastocyst stage.", "0 = non_blast, 1 = blast"),
    "frames": _doc(f"bytes [T * P]: every focal plane of every frame, each its own encoded 8-bit grayscale "
                   f"JPEG or PNG, flattened frame-major: {FRAME_LAYOUT} is frame t (at hours[t]) of plane "
                   "focal_planes[p]; reshape(-1, num_focal_planes) gives [T, P]."),
    "num_focal_planes": _doc("int32 scalar: P, the number of focal planes of every frame.", ">= 1"),
    "focal_planes": _doc("int32 [P]: the offset of each plane, in the order of p in frames (0 = the central "
                         "plane), as the source names its planes (F<offset> folders; synthetic -15, 0, 15)."),
    "hours": _doc(f"float32 [T]: the time of each frame in {TIME_UNIT}, strictly increasing.", "hours"),
    "event_names": _doc("bytes [E]: the morphokinetic events annotated (t2, t3, t4, t5, t8, tM, tB ...; "
                        "gomez2022: its phases); may be empty (folder layout)."),
    "event_frames": _doc("int32 [E]: for each of event_names, the index t of its first frame.", "0 .. T-1"),
    "source": _doc("The layout the example was read from: synthetic, folder or gomez2022."),
    "split": _doc("The folder layout's fixed split (train, validation, test), '' otherwise. TFDS holds "
                  f"every embryo in one split, {SPLIT!r}."),
}


def features() -> tfds.features.FeaturesDict:
  d = FEATURE_DOCS
  return tfds.features.FeaturesDict({
      "embryo_id": tfds.features.Text(doc=d["embryo_id"]),
      "patient_id": tfds.features.Text(doc=d["patient_id"]),
      "label": tfds.features.ClassLabel(names=list(CLASS_NAMES), doc=d["label"]),
      "frames": tfds.features.Tensor(shape=(None,), dtype=np.object_, doc=d["frames"]),
      "num_focal_planes": tfds.features.Tensor(shape=(), dtype=np.int32, doc=d["num_focal_planes"]),
      "focal_planes": tfds.features.Tensor(shape=(None,), dtype=np.int32, doc=d["focal_planes"]),
      "hours": tfds.features.Tensor(shape=(None,), dtype=np.float32, doc=d["hours"]),
      "event_names": tfds.features.Tensor(shape=(None,), dtype=np.object_, doc=d["event_names"]),
      "event_frames": tfds.features.Tensor(shape=(None,), dtype=np.int32, doc=d["event_frames"]),
      "source": tfds.features.Text(doc=d["source"]),
      "split": tfds.features.Text(doc=d["split"]),
  })


def simulator_config(config: EmbryoTimelapseConfig) -> synthetic.SimulatorConfig:
  """The simulator settings of a synthetic builder config."""
  return synthetic.SimulatorConfig(
      image_size=config.image_size, interval_minutes=config.interval_minutes,
      horizon_hours=config.horizon_hours, num_embryos=config.num_embryos,
      num_patients=min(config.num_patients, config.num_embryos), seed=config.simulator_seed,
      image_format=config.image_format)


def describe(config: EmbryoTimelapseConfig) -> dict:
  """The metadata known from the config alone (JSON values). For folder and gomez2022 the
  frame size, interval and planes come from the data (`observed`), after the build."""
  meta = {"config": {"name": config.name, **{k: getattr(config, k) for k in OPTIONS}},
          "frame_layout": FRAME_LAYOUT, "time_unit": TIME_UNIT, "class_names": list(CLASS_NAMES),
          "split": SPLIT, "frame_size": None, "frame_interval_hours": None, "focal_planes": None}
  if config.layout == "synthetic":
    sim = simulator_config(config)
    size = config.resize or sim.image_size
    meta.update(frame_size=[size, size], frame_interval_hours=sim.interval_minutes / 60.0,
                focal_planes=list(sim.focal_planes),
                simulator={"version": synthetic.VERSION, "seed": sim.seed,
                           "config": json.loads(json.dumps(dataclasses.asdict(sim)))})
  return meta


def observed(index: list, intervals: list) -> dict:
  """Frame size [height, width], median frame interval (hours) and focal planes of a build,
  from its index entries and each embryo's median frame interval; a size or plane set
  that varies between embryos is given as the sorted list of those seen."""
  sizes = sorted({tuple(e["image_size"]) for e in index})
  planes = sorted({tuple(e["focal_planes"]) for e in index})
  return {"frame_size": list(sizes[0]) if len(sizes) == 1 else [list(s) for s in sizes],
          "frame_interval_hours": float(np.median(intervals)) if intervals else None,
          "focal_planes": list(planes[0]) if len(planes) == 1 else [list(p) for p in planes]}


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
        description=("Embryo time-lapse sequences, one example per embryo: every frame of every focal "
                     f"plane as encoded images ({FRAME_LAYOUT}), frame times in hours, the blast / "
                     "non_blast label, patient ids and morphokinetic events. Built by blastjax "
                     "(blastjax.data.builder); see metadata for frame size, interval and planes."),
        homepage=HOMEPAGE, citation=CITATION,
        metadata=tfds.core.MetadataDict(describe(self.builder_config)),
        # Stored in the order read (sorted by embryo id), so that the light index
        # written beside the shards (INDEX_FILE) lines up with the records.
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    self.report = layouts.Report(check_jpeg_scans=self.check_jpeg_scans)
    self.index = []  # index_entry of every example, in storage order
    self.intervals = []  # each embryo's median frame interval (hours), for metadata
    return {"full": self._generate_examples(dl_manager)}

  def _records(self, dl_manager) -> Iterator[dict]:
    config = self.builder_config
    if config.layout == "synthetic":
      sim = simulator_config(config)
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
      if len(example["hours"]) > 1:
        self.intervals.append(float(np.median(np.diff(example["hours"]))))
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
    if self.builder_config.layout != "synthetic":  # TFDS writes metadata.json after this
      self.info.metadata.update(observed(self.index, self.intervals))
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
