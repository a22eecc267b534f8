"""The built dataset describes itself to programs without blastjax: feature docs, metadata,
homepage and citation; TFDS's custom-config warning is not repeated; the documented
plain-TFDS and grain snippets (README.md, docs/data.md) run as written."""

import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import logging as absl_logging
from PIL import Image

from blastjax.data import dataset, synthetic
from tests.helpers.layouts import make_folder_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"num_embryos": 8, "num_patients": 3, "image_size": 32, "interval_minutes": 480.0}
SIMULATOR = synthetic.SimulatorConfig(image_size=32, interval_minutes=480.0, num_embryos=8, num_patients=3)
NOTICE = "Using custom data configuration"


@contextlib.contextmanager
def captured_logs():
  """Every record that reaches the root logger's handlers (absl logs propagate there)."""
  records = []
  handler = logging.Handler(logging.NOTSET)
  handler.emit = records.append
  logging.getLogger().addHandler(handler)
  try:
    yield records
  finally:
    logging.getLogger().removeHandler(handler)


def notices(records, level=logging.WARNING):
  return [r for r in records if r.getMessage().startswith(NOTICE) and r.levelno == level]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """A tiny synthetic build, and the log records of building it, reading it and making its
  builder again (each of which used to repeat TFDS's warning)."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  with captured_logs() as records:
    dataset.ensure_built("synthetic", data_dir=data_dir, verbose=False, **TINY)
    source = dataset.load_source("synthetic", data_dir=data_dir, **TINY)
    builder = dataset.get_builder("synthetic", data_dir, **TINY)
  return {"data_dir": data_dir, "source": source, "builder": builder, "records": records,
          "name": f"embryo_timelapse/{builder.builder_config.name}"}


def stored_info(built):
  """The DatasetInfo as another program reads it: from the files alone."""
  return tfds.builder_from_directory(built["builder"].data_dir).info


def test_features_are_documented_and_the_stated_layout_holds(built):
  features = stored_info(built).features
  for key in ("embryo_id", "patient_id", "label", "frames", "num_focal_planes", "focal_planes", "hours",
              "event_names", "event_frames", "source", "split"):
    assert features[key].doc.desc, f"feature {key} has no doc"
  assert "frames[t * num_focal_planes + p]" in features["frames"].doc.desc
  assert "bytes [T * P]" in features["frames"].doc.desc
  assert "float32 [T]" in features["hours"].doc.desc and "hours since insemination" in features["hours"].doc.desc
  assert features["hours"].doc.value_range == "hours"
  assert features["label"].doc.value_range == "0 = non_blast, 1 = blast"
  assert features["label"].names == ["non_blast", "blast"]
  assert "patient" in features["patient_id"].doc.desc
  # The documented layout is the stored one: flat index t * P + p is the simulator's [t, p].
  source = built["source"]
  raw, plans = source.raw(5), synthetic.plan_embryos(SIMULATOR)
  direct = synthetic.simulate_embryo({p.embryo_id: p for p in plans}[raw["embryo_id"]], SIMULATOR)
  planes = int(raw["num_focal_planes"])
  for t, p in ((0, 2), (4, 1), (9, 0)):
    assert raw["frames"][t * planes + p] == direct["frames"][t, p]


def test_metadata_equals_the_simulator_config_and_the_data(built):
  meta = stored_info(built).metadata
  with open(os.path.join(built["builder"].data_dir, "metadata.json")) as f:
    assert json.load(f) == dict(meta)
  assert meta["simulator"]["version"] == synthetic.VERSION
  assert meta["simulator"]["seed"] == SIMULATOR.seed == 0
  expected = {**dataclasses.asdict(SIMULATOR), "focal_planes": list(SIMULATOR.focal_planes)}
  assert meta["simulator"]["config"] == expected
  assert meta["frame_size"] == [32, 32] and meta["frame_interval_hours"] == 8.0
  assert meta["focal_planes"] == [-15, 0, 15] and meta["class_names"] == ["non_blast", "blast"]
  assert meta["frame_layout"] == "frames[t * num_focal_planes + p]" and meta["split"] == "full"
  config = built["builder"].builder_config
  assert meta["config"] == {"name": config.name, "layout": "synthetic", "num_embryos": 8, "num_patients": 3,
                            "image_size": 32, "interval_minutes": 480.0, "horizon_hours": 80.0,
                            "simulator_seed": 0, "image_format": "jpeg", "resize": None}
  example = built["source"][0]  # the data agrees with what the metadata says of it
  with Image.open(io.BytesIO(example["frames"][0, 0])) as image:
    assert [image.height, image.width] == meta["frame_size"]
  assert np.allclose(np.diff(example["hours"]), meta["frame_interval_hours"])
  assert example["focal_planes"].tolist() == meta["focal_planes"]


def test_folder_build_metadata_comes_from_the_data(tmp_path):
  manual, data_dir = make_folder_tree(str(tmp_path / "in")), str(tmp_path / "out")
  dataset.build("folder", data_dir, manual_dir=manual, verbose=False)
  builder = dataset.get_builder("folder", data_dir)
  meta = tfds.builder_from_directory(builder.data_dir).info.metadata
  example = dataset.load_source("folder", data_dir=data_dir)[0]
  assert meta["frame_size"] == [16, 16] and meta["frame_interval_hours"] == pytest.approx(0.25)
  assert meta["focal_planes"] == example["focal_planes"].tolist() and sorted(meta["focal_planes"]) == [-15, 0]
  assert meta["config"]["layout"] == "folder" and "simulator" not in meta


def test_homepage_and_citation(built):
  info = stored_info(built)
  assert info.homepage == "https://zenodo.org/records/6390798"
  citation = info.citation
  assert citation.count("{") == citation.count("}")
  entries = re.findall(r"@(\w+)\{(\w+),", citation)
  assert entries == [("article", "gomez2022timelapse"), ("misc", "wang_cleavage_blastocyst_dataset")]
  assert "A time-lapse embryo dataset for morphokinetic parameter prediction" in citation
  assert "journal = {Data in Brief}" in citation and "year    = {2022}" in citation
  assert "Gomez, Tristan" in citation
  assert "A Dataset for Deep Learning based Cleavage-stage Blastocyst Prediction with" in citation
  assert "Wang, Sijia" in citation and "Chan, David Yiu Leung" in citation


def test_custom_config_warning_at_most_once_and_visible_with_verbosity(built):
  assert len(notices(built["records"])) <= 1
  with captured_logs() as records:
    absl_logging.warning("another warning stays")  # only TFDS's notice is lowered
    dataset.get_builder("synthetic", built["data_dir"], **TINY)
  assert [r.getMessage() for r in records if r.levelno == logging.WARNING] == ["another warning stays"]
  old = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.DEBUG)  # what --verbosity=1 sets
  try:
    with captured_logs() as records:
      dataset.get_builder("synthetic", built["data_dir"], **TINY)
  finally:
    absl_logging.set_verbosity(old)
  assert len(notices(records, logging.DEBUG)) == 1 and not notices(records)


def python_block(path, after):
  """The first ```python block after the line containing `after` in `path`."""
  with open(os.path.join(ROOT, path)) as f:
    text = f.read()
  return re.search(r"```python\n(.*?)```", text[text.index(after):], re.S).group(1)


def run_script(code, cwd, env):
  path = os.path.join(cwd, "snippet.py")
  with open(path, "w") as f:
    f.write(code)
  result = subprocess.run([sys.executable, path], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": "", **env})
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_documented_grain_script_reads_the_build(built, tmp_path):
  code = python_block("docs/data.md", "### From another program")
  assert not re.search(r"^\s*(import|from) blastjax", code, re.M) and 'if __name__ == "__main__":' in code
  code, count = re.subn(r'^NAME = ".*?"', f"NAME = {built['name']!r}", code, flags=re.M)
  assert count == 1
  out = run_script(code, str(tmp_path), {"TFDS_DATA_DIR": built["data_dir"]}).splitlines()
  assert out[0] == "['non_blast', 'blast'] [32, 32] 8.0 [-15, 0, 15] 1.0.0 0"
  first = built["source"][0]
  label = ("non_blast", "blast")[first["label"]]
  assert out[1] == f"8 {first['embryo_id']} {first['patient_id']} (10, 3) {label} [ 8. 80.]"
  assert out[2].startswith("(8, 32, 32) uint8 [") and out[2].endswith("] 80.0")
  assert out[3] == "1 batches"


def test_readme_snippet_reads_the_build(built, tmp_path):
  code = python_block("README.md", "The built dataset reads from any program")
  assert not re.search(r"^\s*(import|from) blastjax", code, re.M)
  code, count = re.subn(r'^name = ".*?"', f"name = {built['name']!r}", code, flags=re.M)
  assert count == 1
  home = tmp_path / "home"
  home.mkdir()
  os.symlink(built["data_dir"], home / "tensorflow_datasets")  # the snippet reads ~/tensorflow_datasets
  out = run_script(code, str(tmp_path), {"HOME": str(home)})
  first = built["source"][0]
  label = ("non_blast", "blast")[first["label"]]
  assert out.strip() == f"[32, 32] 8.0 {first['embryo_id']} {label} 80.0 (32, 32)"
