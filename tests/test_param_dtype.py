"""`param_dtype`: registered models create their parameters in it (DESIGN: parameters in
float32 by default; the compute dtype is `dtype`). Shapes only (jax.eval_shape), so
nothing is compiled; the parity tests in test_models_*.py pin the float32 default."""

import jax
import jax.numpy as jnp
import pytest

from blastjax import models

IMAGE = (2, 32, 32, 3)
CASES = {
    "resnet18": (IMAGE, {}),
    "densenet121": (IMAGE, {}),
    "mobilenet_v3_small": (IMAGE, {}),
    "vit_b_16": (IMAGE, {"image_size": 32}),
    "r3d_18": ((2, 4, 16, 16, 3), {}),
    "r2plus1d_18": ((2, 4, 16, 16, 3), {}),
    "tsm_resnet18": ((2, 2, 32, 32, 3), {}),
    "feature_lstm": ((2, 3, 6), {}),
    "i3d": ((2, 4, 32, 32, 3), {}),
    "inception_v3": ((1, 75, 75, 3), {}),
    "hara_resnet3d_18": ((2, 4, 32, 32, 3), {}),
    "mfnet3d": ((2, 4, 16, 16, 3), {}),
    "amsnet": ((1, 2, 3, 32, 32, 1), {"backbone": "resnet18", "num_planes": 3}),
    "resnet_convlstm": ((1, 2, 32, 32, 3), {"backbone": "resnet18", "hidden_size": 8}),
    "resnet_gru": ((1, 2, 32, 32, 3), {"backbone": "resnet18", "hidden_size": 8}),
    "yowo_cfam": ((2, 4, 32, 32, 3), {"inter_channels": 16, "out_channels": 16}),
}


def _variables(name, **kwargs):
  shape, extra = CASES[name]
  module = models.create(name, num_classes=2, **extra, **kwargs)
  return jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(shape)))


def _dtypes(tree):
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): leaf.dtype for path, leaf in flat}


@pytest.mark.parametrize("name", sorted(CASES))
def test_param_dtype_sets_every_parameter(name):
  default = _variables(name)
  half = _variables(name, param_dtype=jnp.bfloat16)
  assert set(_dtypes(default["params"]).values()) == {jnp.dtype(jnp.float32)}
  wrong = {k: v for k, v in _dtypes(half["params"]).items() if v != jnp.bfloat16}
  assert not wrong, f"{name}: parameters not in bfloat16: {sorted(wrong)[:5]}"
  # Same names and shapes; only the dtype changes.
  shapes = lambda tree: jax.tree.map(lambda leaf: leaf.shape, tree)
  assert shapes(half) == shapes(default)
  # BatchNorm running statistics stay float32 (linen keeps them in float32).
  assert set(_dtypes(half.get("batch_stats", {})).values()) <= {jnp.dtype(jnp.float32)}
