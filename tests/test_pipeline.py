"""The grain pipeline: batch contract, augmentation per sequence, determinism across
worker counts, resuming from a saved iterator state, errors, the real synthetic dataset."""


import numpy as np
import pytest

from blastjax.data import pipeline
from tests.helpers.sources import MemorySource, assert_same_batches, read_batches, resume_matches

@pytest.fixture(scope="module")
def source():
  return MemorySource()


@pytest.mark.parametrize("kwargs, image_shape, steps", [
    ({"sampling": "uniform"}, (4, 5, 16, 16, 1), 5),
    ({"sampling": "last_frame"}, (4, 16, 16, 1), 1),
    ({"sampling": "segments", "segment_hours": 6.0}, (4, 5, 16, 16, 1), 5),
    ({"sampling": "clip", "clip_length": 3}, (4, 3, 16, 16, 1), 3),
    ({"sampling": "uniform", "focal_planes": "axis"}, (4, 5, 3, 16, 16, 1), 5),
    ({"sampling": "uniform", "focal_planes": "axis", "rgb": True}, (4, 5, 3, 16, 16, 3), 5),
    ({"sampling": "uniform", "focal_planes": "channels"}, (4, 5, 16, 16, 3), 5),
    ({"sampling": "last_frame", "rgb": True, "augment": True}, (4, 16, 16, 3), 1),
])
def test_batch_shapes_and_dtypes(source, kwargs, image_shape, steps):
  batches = read_batches(pipeline.make_loader(source, num_frames=5, image_size=16, batch_size=4, **kwargs))
  assert len(batches) == 2
  for batch in batches:
    assert batch["image"].shape == image_shape and batch["image"].dtype == np.float32
    assert batch["mask"].shape == (4, steps) and batch["mask"].dtype == bool
    assert batch["hours"].shape == (4, steps) and batch["hours"].dtype == np.float32
    for key in ("label", "example_index", "window_index"):
      assert batch[key].shape == (4,) and batch[key].dtype == np.int32
    assert batch["valid"].shape == (4,) and batch["valid"].dtype == bool
    assert np.isfinite(batch["image"]).all()


def test_padded_last_batch_and_labels(source):
  batches = read_batches(pipeline.make_loader(source, num_frames=3, image_size=8, batch_size=4))
  np.testing.assert_array_equal(batches[1]["valid"], [True, True, False, False])
  rows = np.concatenate([b["example_index"][b["valid"]] for b in batches])
  np.testing.assert_array_equal(rows, np.arange(6))
  labels = np.concatenate([b["label"][b["valid"]] for b in batches])
  np.testing.assert_array_equal(labels, [source[i]["label"] for i in rows])
  dropped = read_batches(pipeline.make_loader(source, num_frames=3, image_size=8, batch_size=4,
                                          drop_remainder=True))
  assert len(dropped) == 1 and dropped[0]["valid"].all()
  assert pipeline.batches_per_epoch(6, 4) == 2 and pipeline.batches_per_epoch(6, 4, True) == 1


def test_indices_select_a_split(source):
  batches = read_batches(pipeline.make_loader(source, indices=[5, 1, 3], num_frames=2, image_size=8,
                                          batch_size=2))
  rows = np.concatenate([b["example_index"][b["valid"]] for b in batches])
  np.testing.assert_array_equal(rows, [5, 1, 3])


def test_device_reshape_and_divisibility_error(source):
  batch = next(iter(pipeline.make_loader(source, num_frames=3, image_size=8, batch_size=4,
                                         num_devices=2, focal_planes="axis")))
  assert batch["image"].shape == (2, 2, 3, 3, 8, 8, 1)
  assert batch["mask"].shape == (2, 2, 3) and batch["valid"].shape == (2, 2)
  with pytest.raises(ValueError, match="batch_size=6 is not divisible by num_devices=4"):
    pipeline.make_loader(source, batch_size=6, num_devices=4)


def test_hours_mask_and_observe_hours(source):
  batch = next(iter(pipeline.make_loader(source, sampling="segments", num_frames=4,
                                         segment_hours=4.0, observe_hours=9.0, image_size=8,
                                         batch_size=6, normalization="none")))
  assert (batch["hours"] <= 9.0).all()
  # frames at 2.x, 4.x, 6.x, 8.x h: segments [0,4) [4,8) [8,12) [12,16) -> the last is padding
  np.testing.assert_array_equal(batch["mask"][0], [False, False, False, True])
  assert (batch["hours"][batch["mask"]] == 0).all() and (batch["image"][batch["mask"]] == 0).all()
  last = next(iter(pipeline.make_loader(source, sampling="last_frame", observe_hours=5.0,
                                        image_size=8, batch_size=6)))
  np.testing.assert_allclose(last["hours"][:, 0], 4.0 + 0.1 * np.arange(6), rtol=1e-6)


def test_observe_hours_before_first_frame_names_embryo(source):
  loader = pipeline.make_loader(source, observe_hours=1.0, image_size=8, batch_size=2)
  with pytest.raises(ValueError, match=r"'E0'.*observe_hours=1\.0"):
    next(iter(loader))


def test_sliding_windows_one_row_per_window(source):
  batches = read_batches(pipeline.make_loader(source, indices=[0, 1], sampling="sliding_windows",
                                          clip_length=4, window_stride=3, image_size=8,
                                          batch_size=3))
  valid = np.concatenate([b["valid"] for b in batches])
  rows = np.concatenate([b["example_index"] for b in batches])[valid]
  windows = np.concatenate([b["window_index"] for b in batches])[valid]
  # 10 frames, L=4, stride 3: starts 0, 3, 6 -> 3 windows per embryo
  np.testing.assert_array_equal(rows, [0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(windows, [0, 1, 2, 0, 1, 2])
  hours = np.concatenate([b["hours"] for b in batches])[valid]
  np.testing.assert_allclose(hours[:3, 0], [2.0, 8.0, 14.0])
  assert batches[0]["image"].shape == (3, 4, 8, 8, 1)


def test_augmentation_same_for_frames_differs_across_sequences():
  constant = MemorySource(num_examples=4, num_frames=4, size=32, constant=True, seed=3)
  for example in constant.examples:  # every example: the same frames
    example["frames"] = constant.examples[0]["frames"]
  batch = next(iter(pipeline.make_loader(constant, num_frames=4, image_size=16, batch_size=4,
                                         augment=True, focal_planes="axis", seed=1)))
  images = batch["image"]
  for row in range(4):
    for step in range(4):
      np.testing.assert_array_equal(images[row, step], images[row, 0])
  assert not np.allclose(images[0], images[1])
  assert not np.allclose(images[1], images[2])
  plain = next(iter(pipeline.make_loader(constant, num_frames=4, image_size=16, batch_size=4)))
  np.testing.assert_array_equal(plain["image"][0], plain["image"][1])


def test_seed_reproducible_and_epochs_reshuffle(source):
  def run(seed):
    return read_batches(pipeline.make_loader(source, num_frames=3, image_size=8, batch_size=3,
                                         augment=True, shuffle=True, seed=seed, num_epochs=2))
  first, again, other = run(0), run(0), run(1)
  assert_same_batches(first, again)
  assert not all(np.array_equal(a["image"], b["image"]) for a, b in zip(first, other))
  epoch1 = np.concatenate([b["example_index"] for b in first[:2]])
  epoch2 = np.concatenate([b["example_index"] for b in first[2:]])
  assert sorted(epoch1) == sorted(epoch2) == list(range(6))
  assert not np.array_equal(epoch1, epoch2)


def test_normalization(source):
  kwargs = dict(num_frames=2, image_size=8, batch_size=6)
  raw = next(iter(pipeline.make_loader(source, normalization="none", **kwargs)))["image"]
  assert raw.min() >= 0 and raw.max() <= 1
  net = next(iter(pipeline.make_loader(source, **kwargs)))["image"]
  np.testing.assert_allclose(net, (raw - 0.449) / 0.226, atol=1e-3)
  rgb = next(iter(pipeline.make_loader(source, rgb=True, **kwargs)))["image"]
  np.testing.assert_allclose(rgb[..., 0], (raw[..., 0] - 0.485) / 0.229, atol=1e-5)
  np.testing.assert_allclose(rgb[..., 2], (raw[..., 0] - 0.406) / 0.225, atol=1e-5)
  with pytest.raises(ValueError, match="normalization='bogus'"):
    pipeline.make_loader(source, normalization="bogus")


def test_corrupt_frame_names_embryo_and_frame():
  broken = MemorySource(num_examples=3, num_frames=4, corrupt=(2, 3))
  loader = pipeline.make_loader(broken, sampling="uniform", num_frames=4, image_size=8, batch_size=3)
  with pytest.raises(ValueError, match=r"embryo 'E2'.*frame 3 \(focal plane 1\)"):
    next(iter(loader))


def test_argument_errors(source):
  with pytest.raises(ValueError, match="sampling='video'"):
    pipeline.make_loader(source, sampling="video")
  with pytest.raises(ValueError, match="rgb=True with focal_planes='channels'"):
    pipeline.make_loader(source, rgb=True, focal_planes="channels")
  with pytest.raises(ValueError, match=r"indices must lie in \[0, 6\)"):
    pipeline.make_loader(source, indices=[0, 6])


def test_resume_from_state_without_workers(source):
  kwargs = dict(num_frames=3, image_size=8, batch_size=2, augment=True, shuffle=True,
                num_epochs=2, sampling="clip", clip_length=3)
  resume_matches(source, 0, **kwargs)


@pytest.mark.parametrize("state", [
    b'{"last_seen_indices": {"0": 3}, "last_worker_index": 0, "worker_count": 0}',  # another version's
    b"not json", b"{}"])
def test_a_state_it_did_not_write_is_one_clear_error(source, state):
  iterator = iter(pipeline.make_loader(source, num_frames=2, image_size=8, batch_size=2))
  with pytest.raises(ValueError, match="was not written by this input pipeline"):
    iterator.set_state(state)


def test_two_workers_same_batches_and_resume(source):
  kwargs = dict(num_frames=3, image_size=8, batch_size=4, augment=True, shuffle=True,
                num_epochs=2, sampling="segments", segment_hours=5.0, seed=5)
  with_workers = resume_matches(source, 2, **kwargs)
  without = read_batches(pipeline.make_loader(source, worker_count=0, **kwargs))
  assert_same_batches(without, [dict(b) for b in with_workers])
  assert [b["valid"].sum() for b in without] == [4, 4, 4]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
  from blastjax.data import dataset

  options = dict(num_embryos=4, num_patients=2, image_size=64, horizon_hours=12.0,
                 interval_minutes=60.0)
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  dataset.ensure_built("synthetic", data_dir=data_dir, verbose=False, **options)
  return dataset.load_source("synthetic", data_dir=data_dir, **options)


def test_real_synthetic_dataset(synthetic):
  batches = read_batches(pipeline.make_loader(synthetic, num_frames=6, image_size=32, batch_size=4,
                                          augment=True, shuffle=True, focal_planes="axis"))
  batch, = batches
  assert batch["image"].shape == (4, 6, 3, 32, 32, 1)
  labels = [synthetic[int(i)]["label"] for i in batch["example_index"]]
  np.testing.assert_array_equal(batch["label"], labels)
  assert batch["hours"].max() <= 12.0 and not batch["mask"].any()
  assert batch["image"].std() > 0.1


def test_process_shards_cover_data_with_equal_batch_counts(source, monkeypatch):
  import grain.python as grain

  per_shard = []
  for shard_index in (0, 1, 2, 3):
    monkeypatch.setattr(pipeline.sharding, "ShardByJaxProcess",
                        lambda drop_remainder, i=shard_index: grain.ShardOptions(i, 4, drop_remainder))
    per_shard.append(read_batches(pipeline.make_loader(source, indices=[0, 1, 2, 3, 4], num_frames=2,
                                                   image_size=8, batch_size=1, shuffle=True)))
  assert [len(b) for b in per_shard] == [2, 2, 2, 2]  # ceil(5 / 4) records each
  valid = [(int(b["example_index"][0]), bool(b["valid"][0])) for s in per_shard for b in s]
  assert sorted(i for i, ok in valid if ok) == [0, 1, 2, 3, 4]
  assert sum(not ok for _, ok in valid) == 3  # repeated records pad the short shards
  assert pipeline.batches_per_epoch(5, 1, False, 4) == 2
  assert pipeline.batches_per_epoch(5, 1, True, 4) == 1
