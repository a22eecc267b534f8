"""Checks shared by the clip-model tests: padding invariance and a masked train step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def assert_padding_ignored(model, variables, x, mask, atol):
  """Replacing the content of padded frames (first clip, frames 3:) changes nothing."""
  apply = jax.jit(lambda v, inp: model.apply(v, inp, train=False, mask=mask))
  other = x.at[0, 3:].set(jax.random.normal(jax.random.PRNGKey(2), x[0, 3:].shape) * 9.0)
  np.testing.assert_allclose(np.asarray(apply(variables, x)), np.asarray(apply(variables, other)),
                             atol=atol)


def assert_masked_adam_steps_lower_loss(model, variables, x, mask, steps=3):
  """A few Adam steps on one batch with padding: finite losses, the last below the first."""
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
  for _ in range(steps):
    params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
