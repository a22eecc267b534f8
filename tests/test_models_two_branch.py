"""yowo_cfam: CFAM attention, shapes, padding invariance and a masked train step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from blastjax import models
from blastjax.models import two_branch

# Small backbones: the stem and layer1 of resnet18 (2D map /4) and of r3d_18 (3D map /2).
SMALL = dict(backbone_2d="resnet18", backbone_3d="r3d_18",
             backbone_2d_kwargs={"stages": (0, 1)}, backbone_3d_kwargs={"stages": (0, 1)},
             inter_channels=16, out_channels=16)


def test_channel_attention_is_gram_softmax():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 5))
  module = two_branch.ChannelAttention()
  variables = module.init(jax.random.PRNGKey(1), x)
  np.testing.assert_allclose(np.asarray(module.apply(variables, x)), np.asarray(x))  # gamma = 0
  out = module.apply({"params": {"gamma": jnp.ones(1)}}, x)
  flat = np.asarray(x).reshape(2, 12, 5).transpose(0, 2, 1)  # [B, C, N] as the reference
  energy = flat @ flat.transpose(0, 2, 1)
  energy = energy.max(-1, keepdims=True) - energy
  attention = np.exp(energy - energy.max(-1, keepdims=True))
  attention /= attention.sum(-1, keepdims=True)
  expected = (attention @ flat).transpose(0, 2, 1).reshape(x.shape) + np.asarray(x)
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)


def test_last_valid_frame():
  x = jnp.arange(2 * 4).reshape(2, 4)
  mask = jnp.array([[False, False, True, True], [False] * 4])
  np.testing.assert_array_equal(np.asarray(two_branch.last_valid_frame(x, mask)), [1, 7])


def test_rejects_backbone_of_wrong_kind():
  model = models.create("yowo_cfam", backbone_2d="r3d_18")
  with pytest.raises(ValueError, match="backbone_2d='r3d_18'"):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 32, 32, 3))))


@pytest.fixture(scope="module")
def setup():
  model = models.create("yowo_cfam", num_classes=2, **SMALL)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 32, 32, 3))
  variables = jax.jit(model.init)({"params": jax.random.PRNGKey(1)}, x)
  return model, variables, x


def test_shapes_and_feature_mode(setup):
  model, variables, x = setup
  assert jax.eval_shape(lambda: model.apply(variables, x)).shape == (2, 2)
  features = models.create("yowo_cfam", num_classes=0, **SMALL)
  assert jax.eval_shape(lambda: features.apply(variables, x)).shape == (2, 16)
  assert set(variables["params"]) == {"backbone_2d", "backbone_3d", "cfam", "fc"}


def test_padded_frames_do_not_change_output(setup):
  model, variables, x = setup
  # Set gamma so that the attention path counts too.
  variables = jax.tree_util.tree_map(lambda a: a, variables)
  variables["params"]["cfam"]["sc"]["gamma"] = jnp.full((1,), 0.5)
  mask = jnp.array([[False, False, True, True], [False] * 4])
  other = x.at[0, 2:].set(7.0 * jax.random.normal(jax.random.PRNGKey(5), x[0, 2:].shape))
  apply = jax.jit(lambda inp: model.apply(variables, inp, mask=mask))
  out = apply(x)
  np.testing.assert_allclose(np.asarray(out), np.asarray(apply(other)), atol=1e-5)
  # ... while the key frame does matter.
  assert not np.allclose(np.asarray(out), np.asarray(apply(x.at[0, 1].set(0.0))), atol=1e-5)


def test_train_step_with_padding_lowers_loss(setup):
  model, variables, x = setup
  mask = jnp.array([[False, False, True, True], [False] * 4])
  labels = jnp.array([0, 1])
  tx = optax.adam(1e-3)

  def loss_fn(params, batch_stats):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                  mask=mask, mutable=["batch_stats"],
                                  rngs={"dropout": jax.random.PRNGKey(0)})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

  @jax.jit
  def step(params, batch_stats, opt_state):
    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats)
    changes, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, changes), updates["batch_stats"], opt_state, loss

  params, batch_stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)
  losses = []
  for _ in range(4):
    params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
