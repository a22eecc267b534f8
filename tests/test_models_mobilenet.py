"""MobileNetV3 large/small against torchvision: parity, parameter counts, training."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torchvision

from blastjax import models, weights
from blastjax.models import mobilenet
from blastjax.testing import param_count
from blastjax.testing.golden import golden_state_dict

NAMES = ("mobilenet_v3_large", "mobilenet_v3_small")
# Conv weights are scaled so that the logits are O(1) and differ between inputs (the
# hard activations saturate), yet torch's own float32 result stays within 1e-5 of float64.
GAIN = {"mobilenet_v3_large": 1.3, "mobilenet_v3_small": 1.5}



def torch_reference(name: str, seed: int = 0, gain: float = 1.0):
  """torchvision model with seeded weights, random BN statistics, He-scaled convs, eval()."""
  model = getattr(torchvision.models, name)(num_classes=2).eval()
  drawn = golden_state_dict([(k, v.shape) for k, v in model.state_dict().items()], seed)
  model.load_state_dict({k: torch.from_numpy(v * gain if v.ndim == 4 else v)
                         for k, v in drawn.items()})
  return model


def assert_close(ours, ref, what: str):
  ours, ref = np.asarray(ours), np.asarray(ref)
  error = float(np.abs(ours - ref).max())
  bound = 1e-4 * max(1.0, float(np.abs(ref).max()))
  assert error <= bound, f"{what}: max abs error {error:.3g} > {bound:.3g}"
  return error


@pytest.fixture(scope="module", params=NAMES)
def converted(request):
  """(name, torch model, Flax module, converted variables), shared by the tests below."""
  name = request.param
  reference = torch_reference(name, gain=GAIN[name])
  variables = weights.from_torch(name, reference.state_dict(),
                                 example_input=np.zeros((1, 32, 32, 3), np.float32))
  return name, reference, models.create(name), variables


@pytest.mark.parametrize("shape", [(2, 67, 75), (1, 400, 400)])
def test_logits_match_torchvision(converted, shape):
  name, reference, module, variables = converted
  x = np.random.default_rng(1).standard_normal((shape[0], 3) + shape[1:]).astype(np.float32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(x)).numpy()
  assert np.abs(expected[0] - expected[-1]).max() > 1e-3 or shape[0] == 1
  ours = jax.jit(module.apply)(variables, x.transpose(0, 2, 3, 1))
  assert ours.shape == (shape[0], 2)
  assert_close(ours, expected, f"{name} {shape}")


@pytest.mark.parametrize("name", NAMES)
def test_param_count_equals_torchvision(name):
  with torch.device("meta"):
    expected = sum(p.numel() for p in getattr(torchvision.models, name)(num_classes=2).parameters())
  shapes = weights.variable_shapes(models.create(name), np.zeros((1, 32, 32, 3), np.float32))
  assert param_count(shapes) == expected
  assert {"large": 4_204_594, "small": 1_519_906}[name.rsplit("_", 1)[-1]] == expected


def test_features_and_channels():
  module = models.create("mobilenet_v3_small", num_classes=0)
  x = jax.ShapeDtypeStruct((2, 33, 47, 5), jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
  assert jax.eval_shape(module.apply, variables, x).shape == (2, 576)
  assert variables["params"]["features_0"]["conv"]["kernel"].shape == (3, 3, 5, 16)
  with pytest.raises(ValueError, match="in_channels=3"):
    jax.eval_shape(models.create("mobilenet_v3_small", in_channels=3).init,
                   jax.random.PRNGKey(0), x)


def test_rgb_stem_adapts_to_one_channel(converted):
  name, reference, _, _ = converted
  gray = weights.from_torch(name, reference.state_dict(), in_channels=1, adapt_channels=True,
                            example_input=np.zeros((1, 32, 32, 1), np.float32))
  rgb = reference.state_dict()["features.0.0.weight"].numpy().transpose(2, 3, 1, 0)
  np.testing.assert_allclose(gray["params"]["features_0"]["conv"]["kernel"],
                             rgb.sum(axis=2, keepdims=True), rtol=1e-6)


def test_conv_bn_unit_trains_like_torchvision():
  """eps 1e-3 and torch momentum 0.01 (Flax 0.99): train-mode output and running mean."""
  from torchvision.ops.misc import Conv2dNormActivation
  norm = functools.partial(torch.nn.BatchNorm2d, eps=1e-3, momentum=0.01)
  reference = Conv2dNormActivation(3, 8, kernel_size=3, stride=2, norm_layer=norm,
                                   activation_layer=torch.nn.Hardswish).train()
  x = np.random.default_rng(0).standard_normal((4, 3, 9, 11)).astype(np.float32)
  expected = reference(torch.from_numpy(x)).detach().numpy()
  unit = mobilenet.ConvNormActivation(8, 3, stride=2, activation=jax.nn.hard_swish)
  variables = {
      "params": {"conv": {"kernel": reference[0].weight.detach().numpy().transpose(2, 3, 1, 0)},
                 "bn": {"scale": np.ones(8, np.float32), "bias": np.zeros(8, np.float32)}},
      "batch_stats": {"bn": {"mean": np.zeros(8, np.float32), "var": np.ones(8, np.float32)}}}
  ours, updated = jax.jit(functools.partial(unit.apply, train=True, mutable=["batch_stats"]))(
      variables, x.transpose(0, 2, 3, 1))
  assert_close(np.asarray(ours).transpose(0, 3, 1, 2), expected, "train-mode output")
  assert_close(updated["batch_stats"]["bn"]["mean"], reference[1].running_mean.numpy(),
               "running mean")


def test_wrong_state_dict_is_reported(converted):
  name, reference, _, _ = converted
  state = dict(reference.state_dict())
  state.pop("classifier.3.bias")
  with pytest.raises(weights.ConversionError, match="classifier.3.bias"):
    weights.from_torch(name, state, example_input=np.zeros((1, 32, 32, 3), np.float32))


def make_train_step(module, optimizer):
  """One jitted AdamW step: softmax cross-entropy, mutable batch_stats, dropout rng."""

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(variables, opt_state, x, labels, rng):
    def loss_fn(params):
      logits, updates = module.apply({**variables, "params": params}, x, train=True,
                                     mutable=["batch_stats"], rngs={"dropout": rng})
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    changes, opt_state = optimizer.update(grads, opt_state, variables["params"])
    params = optax.apply_updates(variables["params"], changes)
    return {**variables, **updates, "params": params}, opt_state, loss

  return step


def test_training_steps_lower_the_loss(converted):
  name, _, module, variables = converted
  optimizer = optax.adamw(1e-3)
  variables = jax.tree.map(jnp.array, variables)
  opt_state = optimizer.init(variables["params"])
  step = make_train_step(module, optimizer)
  x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 32, 32, 3)), jnp.float32)
  labels = jnp.array([0, 1])
  losses = []
  for _ in range(4):
    # One dropout mask for every step, so the losses are of the same function: with a new
    # mask per step, mobilenet_v3_small's dropout noise outweighed 4 steps of descent
    # ([0.421, 0.450, 0.410, 0.448] with the packages of 2026-12-02).
    variables, opt_state, loss = step(variables, opt_state, x, labels, jax.random.PRNGKey(0))
    losses.append(float(loss))
  assert np.isfinite(losses).all() and losses[-1] < losses[0], f"{name}: {losses}"
