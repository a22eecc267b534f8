"""r3d_18, mc3_18, r2plus1d_18: live parity with torchvision, parameter counts, reuse, masking, training."""

import functools
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from blastjax import models, weights
from blastjax.models import torch_compat, video_resnet
from blastjax.testing import param_count
from tests.helpers import video_checks

NAMES = ("r3d_18", "mc3_18", "r2plus1d_18")
# torchvision's parameter counts with num_classes=2 (paper Table 4: 33.15M, 11.47M, 31.30M).
EXPECTED_PARAMS = {"r3d_18": 33_167_298, "mc3_18": 11_491_266, "r2plus1d_18": 31_301_151}


def _randomise_batch_norm(model: torch.nn.Module, seed: int) -> None:
  """Running statistics and affine terms away from their defaults, so that they matter."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm3d):
        shape = module.running_mean.shape
        module.running_mean.copy_(0.1 * torch.randn(shape, generator=gen))
        module.running_var.copy_(0.5 + torch.rand(shape, generator=gen))
        module.weight.copy_(0.5 + torch.rand(shape, generator=gen))
        module.bias.copy_(0.1 * torch.randn(shape, generator=gen))


@functools.lru_cache(maxsize=None)
def _convert(name):
  """A seeded torchvision model (BN statistics randomised, eval mode) and its conversion."""
  torch.manual_seed(0)
  reference = getattr(torchvision.models.video, name)(num_classes=2)
  _randomise_batch_norm(reference, 1)
  reference.eval()
  return reference, weights.from_torch(name, reference.state_dict(), num_classes=2)


@pytest.fixture(scope="module", params=NAMES)
def converted(request):
  return (request.param,) + _convert(request.param)


def test_parity_with_torchvision(converted):
  name, reference, variables = converted
  x = np.random.default_rng(0).standard_normal((1, 8, 40, 48, 3)).astype(np.float32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(x).permute(0, 4, 1, 2, 3)).numpy()
  logits = np.asarray(models.create(name, num_classes=2).apply(variables, x, train=False))
  assert logits.shape == expected.shape == (1, 2)
  tolerance = 1e-4 * max(1.0, float(np.abs(expected).max()))
  np.testing.assert_allclose(logits, expected, rtol=0, atol=tolerance)


def test_parameter_count_equals_torchvision(converted):
  name, reference, variables = converted
  assert param_count(variables) == sum(p.numel() for p in reference.parameters())
  assert param_count(variables) == EXPECTED_PARAMS[name]


def test_split_network_equals_whole():
  """A front (stem, layer1, layer2) and a back (layer3, layer4, fc) reproduce the whole net."""
  model = models.create("mc3_18", num_classes=2)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 4, 16, 16, 3))
  variables = _convert("mc3_18")[1]
  whole = model.apply(variables, x)
  features = model.apply(variables, x, return_feature_map=True)
  assert features.shape == (1, 4, 1, 1, 512)  # mc3 keeps time after layer1

  def part(names):
    return {c: {k: v for k, v in tree.items() if k in names} for c, tree in variables.items()}

  front = models.create("mc3_18", stages=(0, 2))
  back = models.create("mc3_18", include_stem=False, stages=(2, 4))
  middle = front.apply(part({"stem", "layer1", "layer2"}), x)
  assert middle.shape == (1, 4, 4, 4, 128)
  np.testing.assert_allclose(np.asarray(back.apply(part({"layer3", "layer4", "fc"}), middle)),
                             np.asarray(whole), atol=1e-5)
  pooled = model.clone(num_classes=0).apply(part({"stem", "layer1", "layer2", "layer3", "layer4"}), x)
  np.testing.assert_allclose(np.asarray(pooled), np.asarray(features.mean(axis=(1, 2, 3))),
                             atol=1e-6)


def test_prefixed_key_map_names_torch_keys():
  key_map = torch_compat.prefixed_key_map(torch_compat.dotted_key_map, "branch3d", "")
  assert key_map("params", ("branch3d", "layer2", "0", "conv1_0_3", "kernel")) == \
      "layer2.0.conv1.0.3.weight"
  assert key_map("batch_stats", ("branch3d", "stem", "1", "mean")) == "stem.1.running_mean"
  with pytest.raises(KeyError, match="branch3d"):
    key_map("params", ("head", "kernel"))


def test_in_channels_mismatch_is_explained():
  model = models.create("r3d_18", in_channels=1)
  with pytest.raises(ValueError, match="in_channels=1"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 16, 16, 3)))


@pytest.fixture(scope="module")
def small_mc3():
  """mc3_18 on a tiny two-clip batch, the last frame of the first clip padding."""
  model = models.create("mc3_18", num_classes=2)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 32, 32, 3))
  variables = _convert("mc3_18")[1]
  mask = jnp.array([[False, False, False, True], [False] * 4])
  return model, variables, x, mask


def test_padded_frames_do_not_change_output(small_mc3):
  video_checks.assert_padding_ignored(*small_mc3, atol=1e-6)


def test_train_step_with_padding_lowers_loss(small_mc3):
  video_checks.assert_masked_adam_steps_lower_loss(*small_mc3)


# Each way Conv3d computes (temporal 2D over (T, H*W), per-tap 2D frame convolutions with
# and without strides or temporal padding, one grouped 3D convolution) against torch's Conv3d.
CONV3D_CASES = [((3, 1, 1), (1, 1, 1), (1, 0, 0), 1), ((3, 1, 1), (2, 1, 1), (1, 0, 0), 1),
                ((1, 3, 3), (1, 2, 2), (0, 1, 1), 1), ((3, 7, 7), (1, 2, 2), (1, 3, 3), 1),
                ((3, 3, 3), (2, 2, 2), (1, 1, 1), 1), ((1, 1, 1), (2, 2, 2), (0, 0, 0), 1),
                ((2, 3, 3), (1, 1, 1), (0, 1, 1), 1), ((3, 3, 3), (1, 2, 2), (1, 1, 1), 4)]


@pytest.mark.parametrize("kernel,strides,pads,groups", CONV3D_CASES)
def test_conv3d_equals_torch_forward_and_backward(kernel, strides, pads, groups):
  x = np.random.default_rng(0).standard_normal((2, 7, 9, 9, 8)).astype(np.float32)
  conv = video_resnet.Conv3d(12, kernel, strides, pads, groups=groups, use_bias=True)
  variables = conv.init(jax.random.PRNGKey(0), jnp.asarray(x))
  variables = jax.tree.map(lambda v: v + 0.1, variables)  # a non-zero bias
  reference = torch.nn.Conv3d(8, 12, kernel, strides, pads, groups=groups)
  with torch.no_grad():
    reference.weight.copy_(torch.from_numpy(np.array(variables["params"]["kernel"]).transpose(4, 3, 0, 1, 2)))
    reference.bias.copy_(torch.from_numpy(np.array(variables["params"]["bias"])))
  x_torch = torch.from_numpy(x.transpose(0, 4, 1, 2, 3)).requires_grad_(True)
  expected = reference(x_torch)
  expected.pow(2).sum().backward()
  grad_x = jax.grad(lambda x: jnp.sum(conv.apply(variables, x) ** 2))(jnp.asarray(x))
  np.testing.assert_allclose(np.array(conv.apply(variables, jnp.asarray(x))),
                             expected.detach().numpy().transpose(0, 2, 3, 4, 1), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.array(grad_x), x_torch.grad.numpy().transpose(0, 2, 3, 4, 1), rtol=1e-3, atol=1e-3)
