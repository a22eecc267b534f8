"""feature_lstm: shapes, parameter count, padding invariance, a masked train step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from blastjax import models

FEATURE_DIM = 1024
# Keras counts: LSTM 4u(D + u + 1); BatchNorm scale + bias; Dense (in + 1) * out.
PAPER_MODEL_PARAMS = (4 * 128 * (FEATURE_DIM + 128 + 1) + 4 * 64 * (128 + 64 + 1) + 2 * 64
                      + (64 * 64 + 64) + 2 * 64 + (64 * 32 + 32) + 2 * 32 + (32 + 1))


def _count(params):
  return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))


@pytest.fixture(scope="module")
def setup():
  model = models.create("feature_lstm", num_classes=2)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 7, 16))
  variables = jax.jit(model.init)({"params": jax.random.PRNGKey(1)}, x)
  return model, variables, x


def test_registered_as_features_model():
  assert models.get_spec("feature_lstm").input_kind == "features"


def test_single_sigmoid_unit_parameter_count():
  model = models.create("feature_lstm", num_classes=1)
  x = jnp.zeros((1, 7, FEATURE_DIM))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
  assert _count(shapes["params"]) == PAPER_MODEL_PARAMS


def test_output_shapes(setup):
  model, variables, x = setup
  assert jax.jit(model.apply)(variables, x).shape == (3, 2)
  features = models.create("feature_lstm", num_classes=0)
  assert jax.eval_shape(features.apply, variables, x).shape == (3, 32)


def test_padded_steps_do_not_change_output(setup):
  model, variables, x = setup
  mask = jnp.array([[False] * 4 + [True] * 3, [False] * 7, [False] + [True] * 6])
  other = jnp.where(mask[..., None], -1.0 + 5 * jax.random.normal(jax.random.PRNGKey(3), x.shape), x)
  apply = jax.jit(lambda inp, m: model.apply(variables, inp, mask=m))
  out = apply(x, mask)
  np.testing.assert_allclose(np.asarray(out), np.asarray(apply(other, mask)), atol=1e-6)
  # The first sequence equals itself cut to its 4 valid steps (state frozen on padding).
  alone = apply(x[:1, :4], None)
  np.testing.assert_allclose(np.asarray(out[:1]), np.asarray(alone), atol=1e-5)
  # Pre-padding (the paper's) gives the same result as post-padding.
  pre = jnp.concatenate([jnp.full((1, 3, x.shape[-1]), -1.0), x[:1, :4]], axis=1)
  pre_mask = jnp.array([[True] * 3 + [False] * 4])
  np.testing.assert_allclose(np.asarray(apply(pre, pre_mask)),
                             np.asarray(alone), atol=1e-5)


def test_train_step_with_padding_lowers_loss(setup):
  model, variables, x = setup
  mask = jnp.array([[False] * 4 + [True] * 3, [False] * 7, [False] * 2 + [True] * 5])
  labels = jnp.array([0, 1, 1])
  tx = optax.adam(1e-2)

  def loss_fn(params, batch_stats, rng):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                  mask=mask, mutable=["batch_stats"], rngs={"dropout": rng})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

  @jax.jit
  def step(params, batch_stats, opt_state, rng):
    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, rng)
    updates_, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates_), updates["batch_stats"], opt_state, loss

  params, batch_stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)
  losses = []
  for _ in range(5):  # one dropout draw throughout, so the objective is fixed
    params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state, jax.random.PRNGKey(0))
    losses.append(float(loss))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_no_gradient_reaches_padded_steps(setup):
  model, variables, x = setup
  mask = jnp.array([[False] * 4 + [True] * 3, [False] * 7, [False] * 2 + [True] * 5])
  grad = jax.jit(jax.grad(lambda inp: model.apply(variables, inp, mask=mask).sum()))(x)
  assert float(jnp.abs(jnp.where(mask[..., None], grad, 0.0)).max()) == 0.0
  assert float(jnp.abs(grad[1]).max()) > 0.0
