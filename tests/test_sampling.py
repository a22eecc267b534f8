"""Temporal sampling: indices, masks, the observe_hours cut-off, looping, windows."""

import numpy as np
import pytest

from blastjax.data import sampling


def test_observed_length_cuts_at_observe_hours():
  hours = np.array([0.5, 1.0, 2.0, 3.0], np.float32)
  assert sampling.observed_length(hours, None) == 4
  assert sampling.observed_length(hours, 2.0) == 3
  assert sampling.observed_length(hours, 2.5) == 3
  assert sampling.observed_length(hours, 0.5) == 1


def test_observed_length_error_names_embryo_and_hours():
  with pytest.raises(ValueError, match=r"'E7'.*observe_hours=0\.25"):
    sampling.observed_length(np.array([0.5, 1.0]), 0.25, embryo_id="E7")


def test_last_frame_is_last_observed():
  hours = np.arange(10, dtype=np.float32)
  (indices, mask), = sampling.sample("last_frame", hours, num_frames=32, observe_hours=4.0)
  np.testing.assert_array_equal(indices, [4])
  np.testing.assert_array_equal(mask, [False])


def test_uniform_spans_observed_window():
  indices, mask = sampling.uniform(100, 32)
  assert indices.shape == (32,) and indices[0] == 0 and indices[-1] == 99
  assert np.all(np.diff(indices) > 0) and not mask.any()
  short, short_mask = sampling.uniform(5, 8)
  np.testing.assert_array_equal(short, [0, 1, 1, 2, 2, 3, 3, 4])
  assert not short_mask.any()


def test_uniform_respects_observe_hours():
  hours = np.arange(1, 101, dtype=np.float32)
  (indices, _), = sampling.sample("uniform", hours, num_frames=4, observe_hours=40.0)
  np.testing.assert_array_equal(indices, [0, 13, 26, 39])


def test_segments_deterministic_middle_and_padding():
  hours = np.arange(0.5, 20.0, 1.0)  # 0.5 .. 19.5: segments [0,6) [6,12) [12,18) [18,24) [24,30)
  indices, mask = sampling.segments(hours, hours.size, 5, 6.0)
  np.testing.assert_array_equal(mask, [False, False, False, False, True])
  np.testing.assert_array_equal(indices, [2, 8, 14, 18, -1])


def test_segments_random_frame_stays_in_its_segment():
  hours = np.arange(0.25, 30.0, 0.5)
  rng = np.random.default_rng(0)
  draws = np.stack([sampling.segments(hours, hours.size, 5, 6.0, rng)[0] for _ in range(50)])
  segment_of = np.floor(hours[draws] / 6.0)
  np.testing.assert_array_equal(segment_of, np.broadcast_to(np.arange(5), draws.shape))
  assert len({tuple(d) for d in draws}) > 1


def test_segments_gap_and_observe_hours_are_padding():
  hours = np.array([1.0, 2.0, 13.0, 14.0, 20.0])  # nothing in [6, 12)
  (indices, mask), = sampling.sample("segments", hours, num_frames=4, segment_hours=6.0,
                                     observe_hours=14.0)
  np.testing.assert_array_equal(mask, [False, True, False, True])
  assert indices[1] == -1 and indices[3] == -1 and indices[2] in (2, 3)


def test_clip_random_contiguous_and_center():
  rng = np.random.default_rng(1)
  starts = set()
  for _ in range(30):
    indices, mask = sampling.clip(20, 6, rng)
    assert np.all(np.diff(indices) == 1) and 0 <= indices[0] <= 14 and not mask.any()
    starts.add(int(indices[0]))
  assert len(starts) > 3
  np.testing.assert_array_equal(sampling.clip(20, 6)[0], np.arange(7, 13))


def test_clip_loops_short_sequences():
  indices, mask = sampling.clip(3, 8, np.random.default_rng(0))
  np.testing.assert_array_equal(indices, [0, 1, 2, 0, 1, 2, 0, 1])
  assert not mask.any()


def test_sliding_windows_cover_the_sequence():
  windows = sampling.sliding_windows(20, 6, 5)
  starts = [int(w[0][0]) for w in windows]
  assert starts == [0, 5, 10, 14]
  assert all(w[0].size == 6 and np.all(np.diff(w[0]) == 1) for w in windows)
  assert [int(w[0][0]) for w in sampling.sliding_windows(12, 4)] == [0, 4, 8]
  (short, _), = sampling.sliding_windows(3, 5)
  np.testing.assert_array_equal(short, [0, 1, 2, 0, 1])


def test_sliding_windows_stride_and_mode_errors():
  with pytest.raises(ValueError, match="window_stride"):
    sampling.sliding_windows(10, 4, 0)
  with pytest.raises(ValueError, match="sampling='bogus'"):
    sampling.sample("bogus", np.arange(3.0), num_frames=2)


def test_num_steps():
  assert sampling.num_steps("last_frame", 32) == 1
  assert sampling.num_steps("uniform", 32) == 32
  assert sampling.num_steps("clip", 32, 16) == 16
  assert sampling.num_steps("sliding_windows", 8) == 8
