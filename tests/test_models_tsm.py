"""TSM: golden parity of the shift ops and of TSN-resnet18 with mit-han-lab's reference,
padding invariance, a train step."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from blastjax import models, weights
from blastjax.models import tsm
from blastjax.testing import golden, param_count

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "golden")


def _nchw_to_nhwc(x):
  return np.transpose(x, (0, 2, 3, 1))


@functools.lru_cache(maxsize=None)
def _shift_fixture():
  return golden.load_fixture(os.path.join(FIXTURES, "tsm_shift.npz"))


def test_shift_fixture_names_its_reference():
  meta = _shift_fixture()["meta"]
  assert "temporal-shift-module" in meta["reference"] and len(meta["commit"]) == 40


def test_shift_matches_reference():
  fixture = _shift_fixture()
  x = _nchw_to_nhwc(fixture["inputs"]["x"])
  out = tsm.temporal_shift(jnp.asarray(x), fixture["meta"]["num_segments"], fold_div=8)
  np.testing.assert_array_equal(np.asarray(out), _nchw_to_nhwc(fixture["outputs"]["shift"]))


def test_online_shift_matches_reference():
  fixture = _shift_fixture()
  x = _nchw_to_nhwc(fixture["inputs"]["x"])
  out = x + tsm.temporal_shift_online(jnp.asarray(x), fixture["meta"]["num_segments"], fold_div=8)
  np.testing.assert_allclose(np.asarray(out), _nchw_to_nhwc(fixture["outputs"]["online_residual"]),
                             rtol=0, atol=1e-6)


def test_online_shift_is_causal():
  x = np.random.default_rng(0).standard_normal((2 * 5, 2, 2, 16)).astype(np.float32)
  changed = x.reshape(2, 5, 2, 2, 16).copy()
  changed[:, 3:] += 10.0
  a = tsm.temporal_shift_online(jnp.asarray(x), 5).reshape(2, 5, 2, 2, 16)
  b = tsm.temporal_shift_online(jnp.asarray(changed.reshape(x.shape)), 5).reshape(2, 5, 2, 2, 16)
  np.testing.assert_array_equal(np.asarray(a[:, :3]), np.asarray(b[:, :3]))


def test_masked_shift_equals_shift_of_the_valid_prefix():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((1, 6, 2, 2, 16)).astype(np.float32)
  valid = np.array([[True] * 4 + [False] * 2])
  for shift in (tsm.temporal_shift, tsm.temporal_shift_online):
    full = shift(jnp.asarray(x.reshape(6, 2, 2, 16)), 6, valid=jnp.asarray(valid))
    prefix = shift(jnp.asarray(x[:, :4].reshape(4, 2, 2, 16)), 4)
    np.testing.assert_array_equal(np.asarray(full[:4]), np.asarray(prefix))


@pytest.fixture(scope="module")
def golden_model():
  fixture = golden.load_fixture(os.path.join(FIXTURES, "tsm_resnet18.npz"))
  state = golden.golden_state_dict(fixture["keys_and_shapes"], fixture["seed"])
  clip = np.transpose(fixture["inputs"]["clip"], (0, 1, 3, 4, 2))  # [B, T, H, W, C]
  variables = weights.from_torch("tsm_resnet18", state,
                                 example_input=np.zeros(clip.shape, np.float32))
  model = models.create("tsm_resnet18")
  return fixture, variables, clip, model


def test_golden_logits(golden_model):
  fixture, variables, clip, model = golden_model
  logits = model.apply(variables, clip, train=False)
  expected = fixture["outputs"]["logits"]
  tolerance = 1e-4 * max(1.0, float(np.abs(expected).max()))
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=tolerance)


def test_param_count_matches_reference(golden_model):
  fixture, variables, _, _ = golden_model
  ours = param_count(variables)
  torch_params = sum(int(np.prod(s)) for k, s in fixture["keys_and_shapes"]
                     if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
  assert ours == torch_params


def test_padding_cannot_leak(golden_model):
  _, variables, clip, model = golden_model
  clip = np.concatenate([clip, clip], axis=0)
  mask = np.array([[False, False, True, True], [False, False, False, True]])
  noisy = clip.copy()
  noisy[mask] = np.random.default_rng(3).standard_normal(noisy[mask].shape) * 5
  apply = jax.jit(lambda x: model.apply(variables, x, mask=jnp.asarray(mask)))
  np.testing.assert_allclose(np.asarray(apply(clip)), np.asarray(apply(noisy)), rtol=0, atol=1e-5)
  # Each padded sequence gives the logits of its valid prefix alone.
  prefix = model.apply(variables, clip[:1, :2])
  np.testing.assert_allclose(np.asarray(apply(clip)[0]), np.asarray(prefix[0]), rtol=0, atol=1e-4)


def test_features_mode():
  model = models.create("tsm_resnet18", num_classes=0)
  x = jnp.zeros((1, 2, 32, 32, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
  out = jax.eval_shape(lambda v: model.apply(v, x), shapes)
  assert out.shape == (1, 512)


def test_train_step_with_padding_lowers_loss():
  model = models.create("tsm_resnet18", shift="online", dropout_rate=0.0)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 4, 32, 32, 3)).astype(np.float32))
  mask = jnp.asarray([[False, False, False, True], [False, False, False, False]])
  labels = jnp.asarray([0, 1])
  variables = model.init(jax.random.PRNGKey(0), x, mask=mask)
  optimizer = optax.adam(1e-3)
  opt_state = optimizer.init(variables["params"])

  @jax.jit
  def step(params, batch_stats, opt_state):
    def loss_fn(p):
      logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                    mask=mask, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates
    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    changes, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, changes), updates["batch_stats"], opt_state, loss

  params, stats = variables["params"], variables["batch_stats"]
  losses = []
  for _ in range(3):
    params, stats, opt_state, loss = step(params, stats, opt_state)
    losses.append(float(loss))
  assert np.isfinite(losses).all() and losses[-1] < losses[0]
