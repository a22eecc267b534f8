"""Feature cache: build, reuse, invalidation, random access and padded batches."""

import io
import os
import pickle
import shutil
import threading
import time

import jax
import numpy as np
import pytest
from PIL import Image

from blastjax import weights
from blastjax import feature_cache as fc
from blastjax.testing import golden

GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures", "golden", "i3d.npz")
LENGTHS = (5, 12, 9, 16, 7)


def _png(rng, size=20) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


def _fake_source():
  """Examples in the format of blastjax.data.dataset.load_source, some with 3 planes."""
  rng = np.random.default_rng(0)
  examples = []
  for index, length in enumerate(LENGTHS):
    planes = np.array([0, -15, 15], np.int32) if index % 2 else np.array([0], np.int32)
    frames = np.empty((length, planes.size), dtype=object)
    for t in range(length):
      for p in range(planes.size):
        frames[t, p] = _png(rng)
    examples.append({"embryo_id": f"E{index}", "patient_id": f"P{index // 2}", "label": index % 2,
                     "frames": frames, "hours": (10.0 + 2.5 * np.arange(length)).astype(np.float32),
                     "focal_planes": planes, "source": "fake"})
  return examples


@pytest.fixture(scope="module")
def variables():
  """I3D variables converted from the golden fixture's weights (no slow init)."""
  fixture = golden.load_fixture(GOLDEN)
  state = golden.golden_state_dict(fixture["keys_and_shapes"], fixture["seed"])
  return weights.from_torch("i3d", state, num_classes=2,
                            example_input=np.zeros((1, 8, 16, 16, 3), np.float32))


SETTINGS = fc.ExtractionSettings(mode="sliding_windows", clip_length=8, window_stride=4,
                                 image_size=16, batch_size=4)


@pytest.fixture(scope="module")
def built(tmp_path_factory, variables):
  source = _fake_source()
  cache_dir = str(tmp_path_factory.mktemp("cache") / "train")
  cached = fc.ensure_cache(source, cache_dir, variables=variables, settings=SETTINGS, progress=False)
  return source, cache_dir, cached


def _num_windows(length, clip=8, stride=4):
  return len(fc.sampling.window_starts(length, clip, stride))


def test_examples_have_one_step_per_window(built):
  source, _, cached = built
  assert len(cached) == len(source) and cached.feature_dim == 1024
  for index, example in enumerate(source):
    item = cached[index]
    steps = _num_windows(LENGTHS[index])
    assert item["features"].shape == (steps, 1024) and item["features"].dtype == np.float32
    assert item["hours"].shape == (steps,) and np.all(np.diff(item["hours"]) > 0)
    # A window's hour is the time of its last frame.
    assert item["hours"][-1] == example["hours"][-1]
    assert (item["label"], item["embryo_id"], item["patient_id"]) == (
        example["label"], example["embryo_id"], example["patient_id"])
  assert cached.max_steps == max(_num_windows(n) for n in LENGTHS)


def test_manifest_records_model_weights_and_settings(built, variables):
  _, _, cached = built
  manifest = cached.manifest
  assert manifest["model"] == "i3d"
  assert manifest["weights_sha256"] == fc.weights_checksum(variables)
  assert manifest["settings"]["clip_length"] == 8 and "batch_size" not in manifest["settings"]
  assert manifest["source"]["num_examples"] == len(LENGTHS)


def test_matching_manifest_reuses_cache(built, variables, monkeypatch):
  source, cache_dir, _ = built
  monkeypatch.setattr(fc, "build_cache", lambda *a, **k: pytest.fail("rebuilt a valid cache"))
  again = fc.ensure_cache(source, cache_dir, variables=variables,
                          settings=fc.ExtractionSettings(**{**SETTINGS.__dict__, "batch_size": 2}),
                          progress=False)
  np.testing.assert_array_equal(again[3]["features"], built[2][3]["features"])


def test_changed_settings_or_weights_rebuild(built, variables, tmp_path):
  source, cache_dir, first = built
  target = str(tmp_path / "copy")
  shutil.copytree(cache_dir, target)
  stride8 = fc.ExtractionSettings(**{**SETTINGS.__dict__, "window_stride": 8})
  rebuilt = fc.ensure_cache(source, target, variables=variables, settings=stride8, progress=False)
  assert rebuilt.manifest["settings"]["window_stride"] == 8
  assert rebuilt[3]["features"].shape[0] == _num_windows(16, 8, 8) < first[3]["features"].shape[0]
  changed = jax.tree_util.tree_map(lambda a: a, variables)
  changed["params"]["logits"]["conv3d"]["bias"] = changed["params"]["logits"]["conv3d"]["bias"] + 1
  assert fc.weights_checksum(changed) != rebuilt.manifest["weights_sha256"]
  fewer = source[:3]
  again = fc.ensure_cache(fewer, target, variables=changed, settings=stride8, progress=False)
  assert len(again) == 3 and again.manifest["weights_sha256"] == fc.weights_checksum(changed)


def test_uniform_mode_gives_per_step_features(variables, tmp_path):
  settings = fc.ExtractionSettings(mode="uniform", num_frames=8, image_size=16, batch_size=4)
  cached = fc.build_cache(_fake_source()[:2], str(tmp_path / "u"), variables=variables,
                          settings=settings, progress=False)
  item = cached[1]
  assert item["features"].shape == (1, 1024)  # 8 frames -> one I3D step
  assert item["hours"][0] == pytest.approx(10.0 + 2.5 * 11)


def test_loader_pads_and_masks(built):
  _, _, cached = built
  batches = list(fc.feature_batches(cached, 2))
  steps = cached.max_steps
  assert len(batches) == 3
  first = batches[0]
  assert first["features"].shape == (2, steps, 1024) and first["mask"].shape == (2, steps)
  assert first["hours"].shape == (2, steps) and first["label"].shape == (2,)
  lengths = [_num_windows(n) for n in LENGTHS]
  np.testing.assert_array_equal((~first["mask"]).sum(1), lengths[:2])
  assert np.all(first["features"][0, lengths[0]:] == 0)
  np.testing.assert_array_equal(batches[-1]["example_index"], [4, -1])
  assert len(list(fc.feature_batches(cached, 2, drop_remainder=True))) == 2
  shuffled = np.concatenate([b["example_index"] for b in fc.feature_batches(cached, 5, shuffle=True)])
  assert sorted(shuffled.tolist()) == list(range(5))
  short = next(fc.feature_batches(cached, 2, num_steps=1))
  assert short["features"].shape == (2, 1, 1024) and not short["mask"].any()


def test_source_pickles_and_reports_missing_cache(built, tmp_path):
  _, _, cached = built
  clone = pickle.loads(pickle.dumps(cached))
  np.testing.assert_array_equal(clone[1]["features"], cached[1]["features"])
  with pytest.raises(FileNotFoundError, match="manifest.json"):
    fc.FeatureSource(str(tmp_path / "nowhere"))


def test_concurrent_first_reads_open_the_arrays_once(built, monkeypatch):
  """Grain's reader threads hit a fresh source together; np.load must run once per array."""
  _, _, cached = built
  fresh = pickle.loads(pickle.dumps(cached))
  calls = []
  real_load = np.load

  def slow_load(*args, **kwargs):
    calls.append(args[0])
    time.sleep(0.05)  # widens the window in which a second thread would also load
    return real_load(*args, **kwargs)

  monkeypatch.setattr(fc.np, "load", slow_load)
  results = [None] * 8
  threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, fresh[i % 5]["features"]))
             for i in range(8)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert sorted(os.path.basename(path) for path in calls) == ["features.npy", "hours.npy"]
  np.testing.assert_array_equal(results[1], cached[1]["features"])


def test_bad_settings_are_reported():
  with pytest.raises(ValueError, match="mode"):
    fc.ExtractionSettings(mode="random")
  with pytest.raises(ValueError, match="focal plane 7"):
    fc.plane_index({"embryo_id": "E", "focal_planes": np.array([0, 15])}, 7)
