"""Inception-v3 against torchvision: parity (eval and train mode), counts, training."""

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torchvision

from blastjax import models, weights
from blastjax.testing import param_count
from blastjax.testing.golden import golden_state_dict

# He-scaled conv weights keep the logits O(1) and input-dependent through 94 conv layers.
GAIN = 2 ** 0.5
PAPER_PARAMS = 21.79e6  # Table 3 of the cleavage-stage blastocyst dataset paper.



def assert_close(ours, ref, what: str, rtol: float = 1e-4):
  ours, ref = np.asarray(ours), np.asarray(ref)
  error = float(np.abs(ours - ref).max())
  bound = rtol * max(1.0, float(np.abs(ref).max()))
  assert error <= bound, f"{what}: max abs error {error:.3g} > {bound:.3g}"
  return error


def nchw_input(shape, seed=1):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def reference():
  """torchvision inception_v3 (aux head on) with seeded weights and BN statistics, eval()."""
  model = torchvision.models.inception_v3(num_classes=2, aux_logits=True, init_weights=False)
  drawn = golden_state_dict([(k, v.shape) for k, v in model.state_dict().items()], 0)
  model.load_state_dict({k: torch.from_numpy(v * GAIN if v.ndim == 4 else v)
                         for k, v in drawn.items()})
  return model.eval()


@pytest.fixture(scope="module")
def converted(reference):
  return weights.from_torch("inception_v3", reference.state_dict(), aux_logits=True,
                            example_input=np.zeros((1, 75, 75, 3), np.float32))


@pytest.mark.parametrize("transform_input,shape", [(False, (2, 3, 107, 123)),
                                                   (True, (2, 3, 75, 91)),
                                                   (False, (2, 3, 400, 400))])  # the paper's size
def test_logits_match_torchvision(reference, converted, transform_input, shape):
  x = nchw_input(shape)
  reference.transform_input = transform_input
  try:
    with torch.no_grad():
      expected = reference(torch.from_numpy(x)).numpy()
  finally:
    reference.transform_input = False
  assert np.abs(expected[0] - expected[1]).max() > 1e-2  # The input matters.
  module = models.create("inception_v3", aux_logits=True, transform_input=transform_input)
  ours = jax.jit(module.apply)(converted, x.transpose(0, 2, 3, 1))
  assert ours.shape == (2, 2)
  assert_close(ours, expected, f"inception_v3 transform_input={transform_input} {shape}")


def test_train_mode_returns_aux_logits_like_torchvision(reference, converted):
  """At 299x299 in train mode (dropout 0): logits, aux logits and BN running means."""
  model = copy.deepcopy(reference).train()
  model.dropout.p = 0.0
  x = nchw_input((2, 3, 299, 299), seed=3)
  with torch.no_grad():
    expected = model(torch.from_numpy(x))
  module = models.create("inception_v3", aux_logits=True, dropout=0.0)
  apply = functools.partial(module.apply, train=True, mutable=["batch_stats"])
  (logits, aux), updated = jax.jit(apply)(converted, x.transpose(0, 2, 3, 1))
  # Batch statistics of two samples (the aux head's BN sees 2 values per channel) are
  # ill-conditioned: torch's own float32 aux logits are 2e-4 away from its float64 ones.
  assert_close(logits, expected.logits.numpy(), "train-mode logits", rtol=1e-3)
  assert_close(aux, expected.aux_logits.numpy(), "train-mode aux logits", rtol=1e-3)
  for path, torch_key in ((("Conv2d_1a_3x3", "bn"), "Conv2d_1a_3x3.bn"),
                          (("AuxLogits", "conv1", "bn"), "AuxLogits.conv1.bn"),
                          (("Mixed_7c", "branch_pool", "bn"), "Mixed_7c.branch_pool.bn")):
    stats = updated["batch_stats"]
    for name in path:
      stats = stats[name]
    assert_close(stats["mean"], model.state_dict()[f"{torch_key}.running_mean"].numpy(),
                 f"{torch_key} running mean")


def test_eval_mode_returns_only_logits():
  module = models.create("inception_v3", aux_logits=True)
  x = jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
  assert "AuxLogits" in variables["params"]
  assert jax.eval_shape(module.apply, variables, x).shape == (1, 2)
  with pytest.raises(ValueError, match="299x299"):
    jax.eval_shape(functools.partial(module.apply, train=True, mutable=["batch_stats"],
                                     rngs={"dropout": jax.random.PRNGKey(1)}), variables, x)


@pytest.mark.parametrize("aux_logits,expected", [(False, 21_789_666), (True, 24_348_900)])
def test_param_count_equals_torchvision(aux_logits, expected):
  with torch.device("meta"):
    reference = torchvision.models.inception_v3(num_classes=2, aux_logits=aux_logits,
                                                init_weights=False)
  assert sum(p.numel() for p in reference.parameters()) == expected
  module = models.create("inception_v3", aux_logits=aux_logits)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32))
  assert param_count(shapes) == expected
  # The paper's 21.79M is the model without the auxiliary head.
  assert (round(expected / 1e4) == round(PAPER_PARAMS / 1e4)) == (not aux_logits)


def test_features_and_channels():
  module = models.create("inception_v3", num_classes=0)
  x = jax.ShapeDtypeStruct((2, 80, 96, 1), jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
  assert jax.eval_shape(module.apply, variables, x).shape == (2, 2048)
  assert variables["params"]["Conv2d_1a_3x3"]["conv"]["kernel"].shape == (3, 3, 1, 32)
  with pytest.raises(ValueError, match="in_channels=3"):
    jax.eval_shape(models.create("inception_v3", in_channels=3).init, jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="transform_input"):
    jax.eval_shape(models.create("inception_v3", transform_input=True).init,
                   jax.random.PRNGKey(0), x)


def test_training_steps_lower_the_loss(converted):
  # aux_logits=False: logits only. No dropout, so that four steps on one batch must descend.
  module = models.create("inception_v3", dropout=0.0)
  variables = jax.tree.map(jnp.array, {
      collection: {k: v for k, v in tree.items() if k != "AuxLogits"}
      for collection, tree in converted.items()})
  optimizer = optax.adamw(1e-3)
  opt_state = optimizer.init(variables["params"])

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(variables, opt_state, x, labels, rng):
    def loss_fn(params):
      logits, updates = module.apply({**variables, "params": params}, x, train=True,
                                     mutable=["batch_stats"], rngs={"dropout": rng})
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    changes, opt_state = optimizer.update(grads, opt_state, variables["params"])
    return ({**variables, **updates, "params": optax.apply_updates(variables["params"], changes)},
            opt_state, loss)

  x = jnp.asarray(nchw_input((4, 75, 75, 3), seed=2))
  labels = jnp.array([0, 1, 1, 0])
  losses = []
  for i in range(4):
    variables, opt_state, loss = step(variables, opt_state, x, labels, jax.random.PRNGKey(i))
    losses.append(float(loss))
  assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
