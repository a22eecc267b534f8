"""ViT-B/16 and ViT-L/16 against torchvision: parity, position-embedding resampling,
parameter counts, training steps."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torchvision
from torchvision.models.vision_transformer import interpolate_embeddings

from blastjax import models, weights
from blastjax.models import vit
from blastjax.testing import param_count
from blastjax.testing.golden import golden_state_dict
from tests.helpers import LARGE_MODEL



def assert_close(ours, ref, what: str):
  ours, ref = np.asarray(ours), np.asarray(ref)
  error = float(np.abs(ours - ref).max())
  bound = 1e-4 * max(1.0, float(np.abs(ref).max()))
  assert error <= bound, f"{what}: max abs error {error:.3g} > {bound:.3g}"
  return error


def torch_reference(name: str, image_size: int, seed: int = 0):
  """torchvision ViT with seeded weights, built on the meta device and filled in place
  (ViT-L holds 303M parameters: no second copy)."""
  with torch.device("meta"):
    model = getattr(torchvision.models, name)(num_classes=2, image_size=image_size)
  drawn = golden_state_dict([(k, v.shape) for k, v in model.state_dict().items()], seed)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in drawn.items()}, assign=True)
  return model.eval()


def torch_logits(model, x_nchw):
  with torch.no_grad():
    return model(torch.from_numpy(x_nchw)).numpy()


def example(size):
  return np.zeros((1, size, size, 3), np.float32)


def images(batch, size, seed=1):
  return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


@pytest.fixture(scope="module")
def vit_b_48():
  """vit_b_16 at image_size=48: torch model and converted variables (shared)."""
  reference = torch_reference("vit_b_16", 48)
  variables = weights.from_torch("vit_b_16", reference.state_dict(), image_size=48,
                                 example_input=example(48))
  return reference, variables


@functools.lru_cache(maxsize=None)
def vit_b_apply(image_size: int):
  """One jitted vit_b_16 apply per image_size (Flax checks the embedding grid)."""
  return jax.jit(models.create("vit_b_16", image_size=image_size).apply)


def test_vit_b_16_at_224_matches_torchvision():
  reference = torch_reference("vit_b_16", 224)
  variables = weights.from_torch("vit_b_16", reference.state_dict(), example_input=example(224))
  x = images(1, 224)
  assert_close(vit_b_apply(224)(variables, x.transpose(0, 2, 3, 1)), torch_logits(reference, x),
               "vit_b_16 224")


def test_vit_b_16_at_48_matches_torchvision(vit_b_48):
  reference, variables = vit_b_48
  x = images(2, 48)
  expected = torch_logits(reference, x)
  assert np.abs(expected[0] - expected[1]).max() > 1e-2  # The input matters.
  assert_close(vit_b_apply(48)(variables, x.transpose(0, 2, 3, 1)), expected, "vit_b_16 48")


def test_vit_l_16_at_48_matches_torchvision():
  reference = torch_reference("vit_l_16", 48)
  x = images(2, 48)
  expected = torch_logits(reference, x)
  variables = weights.from_torch("vit_l_16", reference.state_dict(), image_size=48,
                                 example_input=example(48))
  del reference
  ours = jax.jit(models.create("vit_l_16", image_size=48).apply)(variables, x.transpose(0, 2, 3, 1))
  assert_close(ours, expected, "vit_l_16 48")


@pytest.mark.parametrize("old,new", [(48, 80), (224, 48), (64, 64)])
def test_resize_matches_interpolate_embeddings(old, new):
  dim = 8
  pos = np.random.default_rng(0).standard_normal((1, (old // 16) ** 2 + 1, dim)).astype(np.float32)
  expected = interpolate_embeddings(new, 16, {"encoder.pos_embedding": torch.from_numpy(pos)})
  ours = vit.resize_pos_embedding(pos, (new // 16, new // 16))
  np.testing.assert_allclose(ours, expected["encoder.pos_embedding"].numpy(), rtol=1e-5, atol=1e-6)


def test_converting_to_another_image_size_matches_torchvision(vit_b_48):
  reference_48, variables_48 = vit_b_48
  state = interpolate_embeddings(80, 16, dict(reference_48.state_dict()))
  reference_80 = torch_reference("vit_b_16", 80)
  reference_80.load_state_dict(state)
  variables_80 = weights.from_torch("vit_b_16", reference_48.state_dict(), image_size=80,
                                    example_input=example(80))
  assert variables_80["params"]["encoder"]["pos_embedding"].shape == (1, 26, 768)
  x = images(2, 80).transpose(0, 2, 3, 1)
  expected = torch_logits(reference_80, x.transpose(0, 3, 1, 2))
  assert_close(vit_b_apply(80)(variables_80, x), expected, "vit_b_16 48 -> 80")
  # A model made for 48 resamples its embeddings on the fly the same way at 80.
  assert_close(vit_b_apply(48)(variables_48, x), expected, "vit_b_16 at 48 run on 80")


@pytest.mark.parametrize("name,expected", [("vit_b_16", 85_800_194), ("vit_l_16", 303_303_682)])
def test_param_count_equals_torchvision(name, expected):
  with torch.device("meta"):
    reference = getattr(torchvision.models, name)(num_classes=2)
  assert sum(p.numel() for p in reference.parameters()) == expected
  module = models.create(name)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  assert param_count(shapes) == expected


def test_features_channels_and_errors():
  module = models.create("vit_b_16", num_classes=0, image_size=32)
  x = jax.ShapeDtypeStruct((2, 32, 48, 1), jnp.float32)  # Non-square grid, one channel.
  variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
  assert jax.eval_shape(module.apply, variables, x).shape == (2, 768)
  assert variables["params"]["conv_proj"]["kernel"].shape == (16, 16, 1, 768)
  assert variables["params"]["encoder"]["pos_embedding"].shape == (1, 5, 768)
  with pytest.raises(ValueError, match="in_channels=3"):
    jax.eval_shape(models.create("vit_b_16", in_channels=3).init, jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="multiple of the patch size"):
    models.create("vit_b_16", image_size=40)
  with pytest.raises(ValueError, match="multiple of the patch size"):
    jax.eval_shape(module.init, jax.random.PRNGKey(0),
                   jax.ShapeDtypeStruct((1, 40, 48, 3), jnp.float32))


@pytest.mark.parametrize("name,batch,dropout", [("vit_b_16", 2, 0.1),
                                                 pytest.param("vit_l_16", 1, 0.0, marks=LARGE_MODEL)])
def test_training_steps_lower_the_loss(name, batch, dropout):
  module = models.create(name, image_size=32, dropout=dropout, attention_dropout=dropout)
  x = jnp.asarray(images(batch, 32, seed=2).transpose(0, 2, 3, 1))
  labels = jnp.array([0, 1][:batch])
  params = jax.jit(module.init)(jax.random.PRNGKey(0), x)["params"]
  optimizer = optax.adamw(1e-4)
  opt_state = optimizer.init(params)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, rng):
    def loss_fn(params):
      logits, _ = module.apply({"params": params}, x, train=True, mutable=["batch_stats"],
                               rngs={"dropout": rng})
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    changes, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, changes), opt_state, loss

  losses = []
  for i in range(3):
    params, opt_state, loss = step(params, opt_state, jax.random.PRNGKey(i))
    losses.append(float(loss))
  assert np.isfinite(losses).all() and losses[-1] < losses[0], f"{name}: {losses}"
