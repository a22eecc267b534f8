import numpy as np

from blastjax.models import masking


def test_loop_valid_frames_ignores_padding_content():
  x = np.arange(2 * 5, dtype=np.float32).reshape(2, 5, 1)
  mask = np.array([[False, False, True, True, True], [False] * 5])
  looped = np.asarray(masking.loop_valid_frames(x, mask))
  np.testing.assert_array_equal(looped[0, :, 0], [0, 1, 0, 1, 0])
  np.testing.assert_array_equal(looped[1], x[1])
  garbage = x.copy()
  garbage[0, 2:] = 99.0
  np.testing.assert_array_equal(masking.loop_valid_frames(garbage, mask), looped)


def test_masked_mean_counts_only_valid_frames():
  x = np.array([[1.0, 3.0, 100.0]], np.float32)[..., None]
  mask = np.array([[False, False, True]])
  np.testing.assert_allclose(masking.masked_mean(x, mask), [[2.0]])
  np.testing.assert_allclose(masking.masked_mean(x, None), [[104.0 / 3]])
