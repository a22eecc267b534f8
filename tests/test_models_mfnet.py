"""MFNet-3D: golden parity with cypw/PyTorch-MFNet, parameter counts (paper: 7.69M), masking, training."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blastjax import models, weights
from blastjax.models import mfnet
from blastjax.testing import golden, param_count
from tests.helpers import video_checks

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "golden")


@functools.lru_cache(maxsize=None)
def _load_case(name):
  return golden.load_converted_case(os.path.join(FIXTURES, f"{name}.npz"), "mfnet3d")


@pytest.fixture(scope="module", params=["mfnet3d", "mfnet3d_odd"])
def golden_case(request):
  return _load_case(request.param)


def test_fixture_names_its_reference(golden_case):
  fixture, _, _ = golden_case
  assert "PyTorch-MFNet" in fixture["meta"]["reference"]
  assert len(fixture["meta"]["commit"]) == 40


def test_golden_logits(golden_case):
  fixture, variables, clip = golden_case
  logits = models.create("mfnet3d", num_classes=2).apply(variables, clip)
  expected = fixture["outputs"]["logits"]
  tolerance = 1e-4 * max(1.0, float(np.abs(expected).max()))
  assert logits.shape == expected.shape == (1, 2)
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("num_classes", [2, 400, 1000])
def test_parameter_count_equals_reference(num_classes):
  """7,690,306 with 2 classes: the paper's 7.69M (8.00M with Kinetics' 400 classes)."""
  reference = _load_case("mfnet3d")[0]["meta"]["num_params"]
  model = models.create("mfnet3d", num_classes=num_classes)
  shapes = weights.variable_shapes(model, np.zeros((1, 4, 16, 16, 3), np.float32))
  assert param_count(shapes) == reference[str(num_classes)]
  if num_classes == 2:
    assert param_count(shapes) == 7_690_306


def test_features_and_feature_map():
  _, variables, clip = _load_case("mfnet3d_odd")
  model = models.create("mfnet3d", num_classes=2)
  feature_map = model.apply(variables, clip, return_feature_map=True)
  assert feature_map.shape == (1, 4, 1, 2, mfnet.FEATURE_DIM)  # only conv2 halves time
  pooled = model.clone(num_classes=0).apply(
      {c: {k: v for k, v in tree.items() if k != "classifier"} for c, tree in variables.items()},
      clip)
  np.testing.assert_allclose(np.asarray(pooled), np.asarray(feature_map.mean(axis=(1, 2, 3))),
                             atol=1e-6)


@pytest.fixture(scope="module")
def small_model():
  """The golden weights on a tiny two-clip batch, the last frame of the first clip padding."""
  _, variables, _ = _load_case("mfnet3d")
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 32, 32, 3))
  mask = jnp.array([[False, False, False, True], [False] * 4])
  return models.create("mfnet3d", num_classes=2), variables, x, mask


def test_padded_frames_do_not_change_output(small_model):
  video_checks.assert_padding_ignored(*small_model, atol=1e-5)


def test_train_step_with_padding_lowers_loss(small_model):
  video_checks.assert_masked_adam_steps_lower_loss(*small_model)
