"""Every registered model of the library, through the registry alone (scenic's one test
over every model): it builds at the smallest input its spec allows, its output has the
spec's shape, and its parameter count is the documented one.

Shapes and counts come from `jax.eval_shape` (no compute, no memory for the weights), so
the whole file costs a trace per model; numerics, train steps and padding are the
per-family files' and `test_padding_anywhere.py`'s.
"""

import jax
import numpy as np
import pytest

from blastjax import models
from blastjax.testing import param_count

BATCH = 2
FRAMES = 2
FOCAL_PLANES = 3
FEATURE_DIM = 1024  # I3D features, as the seizure paper.

# Parameters with num_classes=2 (README's table). Against the reference's own count where
# one exists (torchvision live, or the golden fixture's recorded count: the per-family
# files check those); the others (no public code) are blastjax's documented counts.
EXPECTED_PARAMS = {
    "resnet18": 11_177_538,
    "resnet34": 21_285_698,
    "resnet50": 23_512_130,
    "resnet101": 42_504_258,
    "resnet152": 58_147_906,
    "resnext50_32x4d": 22_984_002,
    "resnext101_32x8d": 86_746_434,
    "wide_resnet50_2": 66_838_338,
    "wide_resnet101_2": 124_841_794,
    "densenet121": 6_955_906,
    "densenet169": 12_487_810,
    "densenet201": 18_096_770,
    "inception_v3": 21_789_666,
    "mobilenet_v3_large": 4_204_594,
    "mobilenet_v3_small": 1_519_906,
    "vit_b_16": 85_800_194,
    "vit_l_16": 303_303_682,
    "r3d_18": 33_167_298,
    "mc3_18": 11_491_266,
    "r2plus1d_18": 31_301_151,
    "mfnet3d": 7_690_306,
    "i3d": 12_289_314,
    "hara_resnet3d_18": 33_031_106,
    "hara_resnet3d_34": 63_514_562,
    "hara_resnet3d_50": 46_203_074,
    "tsm_resnet18": 11_177_538,
    "tsm_resnet50": 23_512_130,
    # No public reference code: blastjax's counts as documented.
    "resnet_lstm": 34_004_034,
    "resnet_gru": 31_380_546,
    "resnet_convlstm": 69_517_378,
    "resnet_convgru": 55_361_090,
    "amsnet": 23_850_226,  # with 3 focal planes
    "feature_lstm": 646_370,  # over 1024-d features
    "yowo_cfam": 65_323_523,
}
LIBRARY_MODELS = [name for name in models.list_models()
                  if models.get_spec(name).builder.__module__.startswith("blastjax.")]


def smallest_input(spec: models.ModelSpec) -> jax.ShapeDtypeStruct:
  """The smallest input `spec` allows: min_image_size, a few frames, BATCH examples."""
  size = spec.min_image_size
  shape = {
      "image": (BATCH, size, size, 3),
      "video": (BATCH, FRAMES, size, size, 3),
      "video_focal": (BATCH, FRAMES, FOCAL_PLANES, size, size, 3),
      "features": (BATCH, FRAMES, FEATURE_DIM),
  }[spec.input_kind]
  return jax.ShapeDtypeStruct(shape, np.float32)


def test_every_library_model_has_a_documented_count():
  assert set(EXPECTED_PARAMS) == set(LIBRARY_MODELS)


@pytest.mark.parametrize("name", LIBRARY_MODELS)
def test_builds_at_the_smallest_input_with_the_spec_output_and_count(name):
  spec = models.get_spec(name)
  model = models.create(name)  # num_classes=2
  x = smallest_input(spec)
  rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
  # One trace: init_with_output gives the eval-mode output with the variables.
  logits, variables = jax.eval_shape(
      lambda x: model.init_with_output(rngs, x, train=False), x)
  expected = (BATCH, FRAMES, 2) if spec.per_step else (BATCH, 2)
  assert logits.shape == expected, f"{name} at {x.shape}"
  assert param_count(variables) == EXPECTED_PARAMS[name]
