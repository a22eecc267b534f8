"""The TFDS builder, the build CLI and the readers of the built dataset (no TensorFlow)."""

import io
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from blastjax.data import build, dataset
from tests.helpers.layouts import make_folder_tree, make_gomez_tree

TINY = {"num_embryos": 8, "num_patients": 3, "image_size": 32, "interval_minutes": 480.0}


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  assert dataset.ensure_built("synthetic", data_dir=data_dir, verbose=False, **TINY) == data_dir
  return data_dir


def test_tensorflow_is_not_installed():
  with pytest.raises(ImportError):
    __import__("tensorflow")


def test_synthetic_build_reads_in_the_pipeline_format(synthetic_dir):
  source = dataset.load_source("synthetic", split="all", data_dir=synthetic_dir, **TINY)
  assert len(source) == 8
  example = source[0]
  assert isinstance(example["embryo_id"], str) and isinstance(example["patient_id"], str)
  assert example["label"] in (0, 1) and example["source"] == "synthetic"
  assert example["frames"].dtype == object and example["frames"].shape == (10, 3)
  assert example["hours"].dtype == np.float32 and np.all(np.diff(example["hours"]) > 0)
  assert example["focal_planes"].tolist() == [-15, 0, 15]
  assert all(isinstance(k, str) and isinstance(v, int) for k, v in example["events"].items())
  with Image.open(io.BytesIO(example["frames"][3, 1])) as image:
    assert image.size == (32, 32) and image.mode == "L"
  meta = source.metadata()
  assert meta["class_names"] == ("non_blast", "blast") and meta["num_focal_planes"] == 3
  assert meta["image_size"] == (32, 32) and meta["labels"].shape == (8,)
  order = [source[i]["embryo_id"] for i in range(len(source))]
  assert order == sorted(order) and meta["embryo_ids"].tolist() == order  # stored in id order
  assert meta["labels"].tolist() == [source[i]["label"] for i in range(len(source))]
  scanned = dataset.EmbryoSource(source._source).metadata()  # without embryos.json
  assert scanned["embryo_ids"].tolist() == order and scanned["image_size"] == (32, 32)
  assert np.array_equal(scanned["labels"], meta["labels"]) and scanned["num_focal_planes"] == 3
  clone = pickle.loads(pickle.dumps(source))
  assert clone[5]["embryo_id"] == source[5]["embryo_id"]
  # Same embryos as the simulator draws directly.
  from blastjax.data import synthetic
  sim = synthetic.SimulatorConfig(image_size=32, interval_minutes=480.0, num_embryos=8, num_patients=3)
  direct = synthetic.simulate_embryo(synthetic.plan_embryos(sim)[5], sim)
  stored = {source[i]["embryo_id"]: source[i] for i in range(len(source))}[direct["embryo_id"]]
  assert stored["frames"][4, 2] == direct["frames"][4, 2] and stored["events"] == direct["events"]


def test_train_test_splits_and_errors(synthetic_dir):
  train = dataset.load_source("synthetic", split="train", data_dir=synthetic_dir, **TINY)
  test = dataset.load_source("synthetic", split="test", data_dir=synthetic_dir, **TINY)
  ids = lambda s: {s[i]["embryo_id"] for i in range(len(s))}
  assert len(train) + len(test) == 8 and not ids(train) & ids(test)
  assert set(train.metadata()["embryo_ids"]) == ids(train)
  assert train.metadata()["labels"].tolist() == [train[i]["label"] for i in range(len(train))]
  with pytest.raises(ValueError, match="split 'valid' unknown"):
    dataset.load_source("synthetic", split="valid", data_dir=synthetic_dir, **TINY)
  with pytest.raises(FileNotFoundError, match="python -m blastjax.data.build"):
    dataset.load_source("synthetic", data_dir=synthetic_dir, num_embryos=9)
  same = dataset.load_source("synthetic", data_dir=synthetic_dir, **{**TINY, "interval_minutes": 480})
  assert len(same) == 8  # 480 and 480.0 minutes name the same build
  with pytest.raises(ValueError, match="unknown dataset option"):
    dataset.load_source("synthetic", data_dir=synthetic_dir, colour=True)


def test_plain_tfds_reads_it_in_a_process_without_blastjax(synthetic_dir):
  name = f"embryo_timelapse/{dataset.builder_config('synthetic', **TINY).name}"
  code = f"""
import sys, numpy as np, tensorflow_datasets as tfds
source = tfds.data_source({name!r}, split="full", data_dir={synthetic_dir!r})
example = source[0]
frames = np.asarray(example["frames"]).reshape(-1, int(example["num_focal_planes"]))
builder = tfds.builder({name!r}, data_dir={synthetic_dir!r})
assert "blastjax" not in sys.modules and "tensorflow" not in sys.modules
print(len(source), frames.shape, builder.info.features["label"].names)
"""
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd="/", env={**os.environ, "PYTHONPATH": ""})
  assert result.returncode == 0, result.stderr[-2000:]
  assert "8 (10, 3) ['non_blast', 'blast']" in result.stdout


def test_cli_folder_build_errors_skips_and_keeps_earlier_build(tmp_path, capsys):
  manual, data_dir = make_folder_tree(str(tmp_path / "in"), split=True), str(tmp_path / "out")
  args = ["--config", "folder", "--manual_dir", manual, "--data_dir", data_dir]
  assert build.main(args) == 0
  out = capsys.readouterr().out
  assert "3 embryos (2 blast, 1 non_blast), 2 patients, 9 time points, 18 frame images" in out
  source = dataset.load_source("folder", split="train", data_dir=data_dir)
  assert [source[i]["embryo_id"] for i in range(len(source))] == ["E2"]  # the split column
  with open(os.path.join(manual, "E3", "F0", "0001_1.75h.png"), "wb") as f:
    f.write(b"not an image")
  assert build.main(args + ["--overwrite"]) == 2
  err = capsys.readouterr().err
  assert "E3" in err and "0001_1.75h.png" in err and "Traceback" not in err
  assert len(dataset.load_source("folder", data_dir=data_dir)) == 3  # the earlier build survived
  assert build.main(args + ["--overwrite", "--skip_invalid"]) == 0
  out = capsys.readouterr().out
  assert "skipped embryos: 1" in out and "E3" in out
  assert len(dataset.load_source("folder", data_dir=data_dir)) == 2
  builder = dataset.get_builder("folder", data_dir)
  report = json.load(open(os.path.join(builder.data_dir, "build_report.json")))
  assert report["skipped"][0]["embryo_id"] == "E3"
  assert not os.path.exists(os.path.join(data_dir, ".rebuild"))


def test_gomez_build_with_resize_reports_adaptations(tmp_path):
  manual, data_dir = make_gomez_tree(str(tmp_path / "g")), str(tmp_path / "out")
  _, text = dataset.build("gomez2022", data_dir, manual_dir=manual, verbose=False, resize=8)
  assert "3 embryos (2 blast, 1 non_blast), 2 patients" in text
  assert "truncated_jpeg_recovered=1" in text and "nested_duplicate_folder_ignored=3" in text
  source = dataset.load_source("gomez2022", data_dir=data_dir, resize=8)
  example = {source[i]["embryo_id"]: source[i] for i in range(len(source))}["AA83-7"]
  assert example["events"]["tB"] == 4 and example["source"] == "gomez2022"
  with Image.open(io.BytesIO(example["frames"][0, 0])) as image:
    assert image.size == (8, 8)


def test_build_needs_manual_dir(tmp_path, capsys):
  assert build.main(["--config", "folder", "--data_dir", str(tmp_path)]) == 2
  assert "manual_dir" in capsys.readouterr().err
  assert build.main(["--config", "folder", "--num_embryos", "3", "--manual_dir", str(tmp_path)]) == 2
  assert "synthetic only" in capsys.readouterr().err


def test_synthetic_build_in_worker_processes_matches_the_simulator(tmp_path):
  options = {"num_embryos": 16, "num_patients": 4, "image_size": 32, "interval_minutes": 960.0}
  data_dir = dataset.ensure_built("synthetic", data_dir=str(tmp_path), verbose=False, **options)
  source = dataset.load_source("synthetic", data_dir=data_dir, **options)
  from blastjax.data import synthetic
  sim = synthetic.SimulatorConfig(image_size=32, interval_minutes=960.0, num_embryos=16, num_patients=4)
  plans = synthetic.plan_embryos(sim)
  assert source.metadata()["embryo_ids"].tolist() == [p.embryo_id for p in plans]
  direct = synthetic.simulate_embryo(plans[11], sim)
  assert np.array_equal(source[11]["frames"], direct["frames"]) and source[11]["label"] == plans[11].label


def test_default_config_builder_unpickles_in_another_process(tmp_path):
  """grain workers unpickle the source; a registered config must survive that."""
  builder = dataset.get_builder("synthetic", data_dir=str(tmp_path), num_embryos=100)
  path = tmp_path / "builder.pkl"
  path.write_bytes(__import__("pickle").dumps(builder))
  code = f"import pickle; b = pickle.loads(open({str(path)!r}, 'rb').read()); print(b.builder_config.name)"
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "synthetic"


def test_already_built_is_said_once_per_process(synthetic_dir, capsys, monkeypatch):
  """A command that checks several runs' datasets (reproduce: every row) says "Already
  built" once, not once per check."""
  monkeypatch.setattr(dataset, "_SAID_BUILT", set())
  for _ in range(3):
    dataset.ensure_built("synthetic", synthetic_dir, **TINY)
  assert capsys.readouterr().out.count("Already built in ") == 1
