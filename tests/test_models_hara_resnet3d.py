"""Hara et al.'s 3D ResNets: golden parity with kenshohara/3D-ResNets-PyTorch, counts, shortcuts, masking, training."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blastjax import models, weights
from blastjax.models import hara_resnet3d
from blastjax.testing import golden, param_count
from tests.helpers import video_checks

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "golden")
CASES = ("hara_resnet3d_18", "hara_resnet3d_34", "hara_resnet3d_50", "hara_resnet3d_50_options")


@functools.lru_cache(maxsize=None)
def _load_case(name):
  meta = golden.load_fixture(os.path.join(FIXTURES, f"{name}.npz"))["meta"]
  return golden.load_converted_case(os.path.join(FIXTURES, f"{name}.npz"), meta["model"], **meta["kwargs"])


@pytest.fixture(scope="module", params=CASES)
def golden_case(request):
  return _load_case(request.param)


def test_fixture_names_its_reference(golden_case):
  fixture, _, _ = golden_case
  assert "3D-ResNets-PyTorch" in fixture["meta"]["reference"]
  assert len(fixture["meta"]["commit"]) == 40


def test_golden_logits(golden_case):
  fixture, variables, clip = golden_case
  meta = fixture["meta"]
  logits = models.create(meta["model"], num_classes=2, **meta["kwargs"]).apply(variables, clip)
  expected = fixture["outputs"]["logits"]
  tolerance = 1e-4 * max(1.0, float(np.abs(expected).max()))
  assert logits.shape == expected.shape == (1, 2)
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=tolerance)


def test_parameter_count_equals_reference(golden_case):
  fixture, variables, _ = golden_case
  assert param_count(variables) == fixture["meta"]["num_params"]


@pytest.mark.parametrize("name,expected", [("hara_resnet3d_18", 33_031_106),
                                           ("hara_resnet3d_34", 63_514_562),
                                           ("hara_resnet3d_50", 46_203_074)])
def test_registered_defaults(name, expected):
  """18 uses type-A shortcuts (no downsample parameters), 34 and 50 type B."""
  model = models.create(name, num_classes=2)
  shapes = weights.variable_shapes(model, np.zeros((1, 8, 32, 32, 3), np.float32))
  assert param_count(shapes) == expected
  has_downsample = "downsample_0" in shapes["params"]["layer2"]["0"]
  assert has_downsample == (name != "hara_resnet3d_18")


def test_type_a_shortcut_subsamples_pads_and_stops_gradient():
  x = jnp.arange(2 * 5 * 5 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 5, 5, 3)
  out = hara_resnet3d.type_a_shortcut(x, 8, 2, stop_gradient=True)
  assert out.shape == (2, 3, 3, 3, 8)
  np.testing.assert_array_equal(np.asarray(out[..., :3]), np.asarray(x[:, ::2, ::2, ::2]))
  assert not np.any(np.asarray(out[..., 3:]))
  grad = lambda stop: jax.grad(  # noqa: E731
      lambda v: hara_resnet3d.type_a_shortcut(v, 8, 2, stop).sum())(x)
  assert not np.any(np.asarray(grad(True)))
  assert float(grad(False).sum()) == 2 * 27 * 3


def test_unknown_shortcut_type_is_explained():
  model = models.create("hara_resnet3d_18", shortcut_type="C")
  with pytest.raises(ValueError, match="shortcut_type='C'"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 32, 32, 3)))


@pytest.fixture(scope="module")
def small_model():
  """hara_resnet3d_18 (golden weights) on a tiny two-clip batch, one padding frame."""
  _, variables, _ = _load_case("hara_resnet3d_18")
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 32, 32, 3))
  mask = jnp.array([[False, False, False, True], [False] * 4])
  return models.create("hara_resnet3d_18", num_classes=2), variables, x, mask


def test_padded_frames_do_not_change_output(small_model):
  video_checks.assert_padding_ignored(*small_model, atol=1e-6)


def test_train_step_with_padding_lowers_loss(small_model):
  video_checks.assert_masked_adam_steps_lower_loss(*small_model)
