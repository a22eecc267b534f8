"""DenseNet: parity with torchvision, parameter counts, a train step, key names."""

import jax
import jax.numpy as jnp
import pytest

from blastjax import models
from blastjax.models import densenet
from blastjax.testing import param_count
from tests.helpers.torchvision_parity import (assert_case_parity, assert_gradient_step_lowers_the_loss,
                                              assert_train_steps_lower_the_loss, convert_case)

NAMES = ["densenet121", "densenet169", "densenet201"]


@pytest.fixture(scope="module", params=NAMES)
def case(request):
  return request.param, convert_case(request.param)


def test_parity_on_odd_input_and_at_400(case):
  name, result = case
  assert_case_parity(name, result)


def test_parameter_count_equals_torchvision(case):
  _, result = case
  assert param_count(result["variables"]) == result["torch_params"]


@pytest.mark.parametrize("name", ["densenet121", "densenet201"])
def test_train_steps_lower_the_loss(name):
  assert_train_steps_lower_the_loss(name)


def test_a_gradient_step_lowers_the_loss_of_densenet169():
  """densenet169 is as sharp as the deep ResNets on this batch (see
  test_models_resnet.test_one_train_step_lowers_the_loss_of_deep_nets)."""
  assert_gradient_step_lowers_the_loss("densenet169")


def test_key_map_uses_torchvision_names():
  key_map = densenet.densenet_key_map
  assert key_map("batch_stats", ("denseblock3", "denselayer12", "norm2", "mean")) == \
      "features.denseblock3.denselayer12.norm2.running_mean"
  assert key_map("params", ("transition1", "conv", "kernel")) == "features.transition1.conv.weight"
  assert key_map("params", ("norm5", "bias")) == "features.norm5.bias"
  assert key_map("params", ("classifier", "kernel")) == "classifier.weight"


def test_features_mode_and_dropout_rng():
  model = models.create("densenet121", num_classes=0, drop_rate=0.5)
  x = jnp.zeros((1, 32, 32, 3))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  out = jax.eval_shape(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"],
                                             rngs={"dropout": jax.random.PRNGKey(1)}), shapes)
  assert out[0].shape == (1, 1024)
  feature_map = jax.eval_shape(lambda v: model.apply(v, x, return_feature_map=True), shapes)
  assert feature_map.shape == (1, 1, 1, 1024)


def test_wrong_channel_count_is_named():
  model = models.create("densenet121", in_channels=1)
  with pytest.raises(ValueError, match=r"DenseNet built with in_channels=1 got an input with 3 channels"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
