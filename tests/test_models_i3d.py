"""I3D: golden parity with piergiaj/pytorch-i3d, feature mode, masking, a train step."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from blastjax import models, weights
from blastjax.models import i3d
from blastjax.testing import golden, param_count

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "golden")


@functools.lru_cache(maxsize=None)
def _load_case(name):
  return golden.load_converted_case(os.path.join(FIXTURES, f"{name}.npz"), "i3d")


@pytest.fixture(scope="module", params=["i3d", "i3d_odd"])
def golden_case(request):
  return _load_case(request.param)


def test_fixture_names_its_reference(golden_case):
  fixture, _, _ = golden_case
  assert "pytorch-i3d" in fixture["meta"]["reference"]
  assert len(fixture["meta"]["commit"]) == 40


def test_golden_logits(golden_case):
  fixture, variables, clip = golden_case
  logits = models.create("i3d", num_classes=2).apply(variables, clip, train=False)
  expected = fixture["outputs"]["logits_per_step"].mean(axis=2)  # averaged over time
  assert logits.shape == expected.shape
  # The golden weights give small logits (|logit| < 1), so the bound is relative as well.
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-6)


def test_golden_features_per_step(golden_case):
  fixture, variables, clip = golden_case
  feats = models.create("i3d", num_classes=2, features_per_step=True).apply(variables, clip)
  expected = fixture["outputs"]["features"]  # [B, 1024, T', 1, 1]
  expected = np.transpose(expected.mean(axis=(3, 4)), (0, 2, 1))  # [B, T', 1024]
  assert feats.shape == expected.shape and feats.shape[-1] == i3d.FEATURE_DIM
  tolerance = 1e-4 * max(1.0, float(np.abs(expected).max()))
  np.testing.assert_allclose(np.asarray(feats), expected, rtol=0, atol=tolerance)


def test_final_pool_matches_torch_at_full_window():
  """At 224x224 (a 7x7 Mixed_5c map) the clipped window is the reference's [2, 7, 7]."""
  x = np.random.default_rng(0).standard_normal((1, 4, 9, 8, 5)).astype(np.float32)  # NTHWC
  ours = np.asarray(i3d.final_avg_pool(jnp.asarray(x)))
  ref = torch.nn.AvgPool3d([2, 7, 7], stride=(1, 1, 1))(torch.from_numpy(x).permute(0, 4, 1, 2, 3))
  np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 4, 1).numpy(), atol=1e-6)


@pytest.mark.parametrize("size,pads", [((16, 37, 41), [(2, 3), (3, 3), (3, 3)]),
                                       ((9, 8, 7), [(3, 3), (2, 3), (3, 3)])])
def test_same_padding_is_tensorflow_same(size, pads):
  assert i3d.same_padding(size, (7, 7, 7), (2, 2, 2)) == pads


@pytest.mark.parametrize("num_classes,expected", [(2, 12_289_314), (400, 12_697_264)])
def test_parameter_count_equals_reference(num_classes, expected):
  model = models.create("i3d", num_classes=num_classes)
  shapes = weights.variable_shapes(model, np.zeros((1, 8, 32, 32, 3), np.float32))
  assert param_count(shapes) == expected


@pytest.fixture(scope="module")
def small_model():
  """The converted golden weights (no slow init) on a small two-clip batch."""
  _, variables, _ = _load_case("i3d")
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 16, 16, 3))
  return models.create("i3d", num_classes=2), variables, x


def test_padded_frames_do_not_change_output(small_model):
  model, variables, x = small_model
  mask = jnp.array([[False] * 5 + [True] * 3, [False] * 8])
  other = x.at[0, 5:].set(jax.random.normal(jax.random.PRNGKey(2), x[0, 5:].shape) * 9.0)
  apply = jax.jit(lambda v, inp: model.apply(v, inp, train=False, mask=mask))
  np.testing.assert_allclose(np.asarray(apply(variables, x)), np.asarray(apply(variables, other)),
                             atol=1e-6)


def test_train_step_with_padding_lowers_loss(small_model):
  model, variables, x = small_model
  mask = jnp.array([[False] * 5 + [True] * 3, [False] * 8])
  labels = jnp.array([0, 1])
  tx = optax.adam(1e-3)

  def loss_fn(params, batch_stats, rng):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                  mask=mask, mutable=["batch_stats"], rngs={"dropout": rng})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, updates["batch_stats"]

  @jax.jit
  def step(params, batch_stats, opt_state, rng):
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  params, batch_stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)
  losses = []
  for _ in range(3):
    params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state, jax.random.PRNGKey(0))
    losses.append(float(loss))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
