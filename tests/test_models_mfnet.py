"""MFNet-3D: golden parity with cypw/PyTorch-MFNet, parameter counts (paper: 7.69M), masking, training."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from blastjax import models, weights
from blastjax.models import mfnet
from blastjax.testing import golden

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "golden")


def _param_count(variables) -> int:
  return sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(variables["params"]))


@functools.lru_cache(maxsize=None)
def _load_case(name):
  fixture = golden.load_fixture(os.path.join(FIXTURES, f"{name}.npz"))
  state = golden.golden_state_dict(fixture["keys_and_shapes"], fixture["seed"])
  clip = fixture["inputs"]["clip_u8"].astype(np.float32) / 127.5 - 1.0  # NCTHW
  clip = np.transpose(clip, (0, 2, 3, 4, 1))  # NTHWC
  variables = weights.from_torch("mfnet3d", state, num_classes=2,
                                 example_input=np.zeros(clip.shape, np.float32))
  return fixture, variables, clip


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
  assert _param_count(shapes) == reference[str(num_classes)]
  if num_classes == 2:
    assert _param_count(shapes) == 7_690_306


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
  model, variables, x, mask = small_model
  apply = jax.jit(lambda v, inp: model.apply(v, inp, train=False, mask=mask))
  other = x.at[0, 3:].set(jax.random.normal(jax.random.PRNGKey(2), x[0, 3:].shape) * 9.0)
  np.testing.assert_allclose(np.asarray(apply(variables, x)), np.asarray(apply(variables, other)),
                             atol=1e-5)


def test_train_step_with_padding_lowers_loss(small_model):
  model, variables, x, mask = small_model
  labels = jnp.array([0, 1])
  tx = optax.adam(1e-3)

  def loss_fn(params, batch_stats):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                  mask=mask, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

  @jax.jit
  def step(params, batch_stats, opt_state):
    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats)
    deltas, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, deltas), updates["batch_stats"], opt_state, loss

  params, batch_stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)
  losses = []
  for _ in range(3):
    params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
