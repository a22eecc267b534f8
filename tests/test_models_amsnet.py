"""AMSNet: MFS pieces, per-step output, causality of the online shift, padding, a train step."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from blastjax import models
from blastjax.models import amsnet


def test_channel_attention_weights_channels():
  u = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 4, 32)).astype(np.float32))
  module = amsnet.ChannelAttention(reduction=4)
  variables = module.init(jax.random.PRNGKey(0), u)
  assert variables["params"]["mlp_0"]["kernel"].shape == (32, 8)  # One MLP shared by avg and max.
  out = module.apply(variables, u)
  ratio = np.asarray(out) / np.asarray(u)
  assert np.allclose(ratio, ratio[:, :1, :1, :], atol=1e-5)  # One weight per channel ...
  assert ((ratio > 0) & (ratio < 1)).all()  # ... from a sigmoid.


def test_non_local_starts_as_identity_and_mixes_positions():
  x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 4, 4, 8)).astype(np.float32))
  block = amsnet.GaussianNonLocal2D(norm=functools.partial(nn.BatchNorm, use_running_average=True))
  variables = block.init(jax.random.PRNGKey(0), x)
  np.testing.assert_allclose(np.asarray(block.apply(variables, x)), np.asarray(x), atol=1e-6)
  params = jax.tree_util.tree_map(jnp.asarray, variables["params"])
  params["W_1"]["scale"] = jnp.ones_like(params["W_1"]["scale"])  # Switch the block on.
  live = {**variables, "params": params}
  changed = x.at[0, 0, 0].add(3.0)
  delta = np.asarray(block.apply(live, changed) - block.apply(live, x))
  assert np.abs(delta[0, 3, 3]).max() > 1e-6  # A far position sees the change.


def test_per_step_logits_causal_and_padding_free():
  model = models.create("amsnet", backbone="resnet18")
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 3, 2, 32, 32, 1)).astype(np.float32)
  mask = np.array([[False, False, True], [False, False, False]])
  variables = jax.jit(lambda v: model.init(jax.random.PRNGKey(0), v, mask=jnp.asarray(mask)))(x)
  apply = jax.jit(lambda v, m: model.apply(variables, v, mask=m))
  logits = np.asarray(apply(x, jnp.asarray(mask)))
  assert logits.shape == (2, 3, 2)
  assert (logits[0, 2] == 0).all()  # Padded steps are masked.
  noisy = x.copy()
  noisy[mask] = 50.0
  np.testing.assert_allclose(np.asarray(apply(noisy, jnp.asarray(mask))), logits, atol=1e-5)
  # Online shift: a change at the last step leaves the earlier predictions alone.
  later = x.copy()
  later[:, 2] += 5.0
  out = np.asarray(apply(later, jnp.asarray(mask)))
  np.testing.assert_allclose(out[:, :2], logits[:, :2], atol=1e-5)
  assert not np.allclose(out[1, 2], logits[1, 2])


def test_registered_as_per_step_focal_model():
  spec = models.get_spec("amsnet")
  assert spec.input_kind == "video_focal" and spec.per_step
  x = jax.ShapeDtypeStruct((1, 2, 3, 32, 32, 1), jnp.float32)
  model = models.create("amsnet", num_classes=0, backbone="resnet18")
  variables = jax.eval_shape(lambda v: model.init(jax.random.PRNGKey(0), v), x)
  assert jax.eval_shape(lambda v, y: model.apply(v, y), variables, x).shape == (1, 2, 512)


def test_train_step_with_padding_lowers_loss():
  model = models.create("amsnet", backbone="resnet18", dropout_rate=0.0)
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, 2, 2, 32, 32, 1)).astype(np.float32))
  mask = jnp.asarray([[False, True], [False, False]])
  labels = jnp.asarray([0, 1])
  variables = jax.jit(lambda v: model.init(jax.random.PRNGKey(0), v, mask=mask))(x)
  optimizer = optax.adam(1e-3)

  @jax.jit
  def step(params, batch_stats, opt_state):
    def loss_fn(p):
      logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                    mask=mask, mutable=["batch_stats"])
      per_step = optax.softmax_cross_entropy_with_integer_labels(
          logits, jnp.broadcast_to(labels[:, None], mask.shape))
      weights = (~mask).astype(per_step.dtype)  # Padded steps give no loss.
      return (per_step * weights).sum() / weights.sum(), updates
    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    changes, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, changes), updates["batch_stats"], opt_state, loss

  params, stats = variables["params"], variables["batch_stats"]
  opt_state = optimizer.init(params)
  losses = []
  for _ in range(3):
    params, stats, opt_state, loss = step(params, stats, opt_state)
    losses.append(float(loss))
  assert np.isfinite(losses).all() and losses[-1] < losses[0]
