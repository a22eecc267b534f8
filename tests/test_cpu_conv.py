"""blastjax.models.cpu_conv: the patches @ kernel route equals XLA's convolution (forward
and gradients), is taken exactly where its docstring says, and leaves parameters alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blastjax.models import cpu_conv

NHWC = ("NHWC", "HWIO", "NHWC")


def _random(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _primitives(fn, *args):
  return {eqn.primitive.name for eqn in jax.make_jaxpr(fn)(*args).jaxpr.eqns}


@pytest.mark.parametrize("shape, kernel, strides, padding", [
    ((2, 5, 5, 8), (3, 3), (1, 1), ((1, 1), (1, 1))),
    ((2, 6, 7, 8), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((1, 9, 9, 3), (7, 7), (2, 2), ((3, 3), (3, 3))),    # a stem
    ((2, 8, 8, 4), (1, 1), (2, 2), ((0, 0), (0, 0))),    # a strided shortcut
    ((3, 8, 4, 6), (3, 1), (2, 1), ((1, 1), (0, 0))),    # a temporal (kt, 1) over (T, H*W)
    ((2, 2, 2, 16), (3, 3), (1, 1), ((1, 1), (1, 1))),   # the 2x2 maps XLA is slow on
    ((2, 7, 7, 5), (3, 3), (2, 2), "SAME"),
    ((2, 7, 7, 5), (3, 2), (1, 2), "VALID"),
    ((2, 6, 6, 4), (4, 4), (4, 4), ((0, 0), (0, 0))),   # ViT-like patches
    ((2, 5, 5, 4), (3, 3), (1, 1), ((2, 0), (0, 1))),   # asymmetric padding
])
def test_equals_xla_convolution_forward_and_backward(shape, kernel, strides, padding):
  x = _random(shape, 0)
  k = _random(kernel + (shape[-1], 6), 1)
  assert cpu_conv.uses_im2col(x.shape, k.shape, strides, padding)

  def loss(conv):
    return lambda x, k: jnp.sum(jnp.sin(conv(x, k, strides, padding, dimension_numbers=NHWC)))

  ours = cpu_conv.conv_general_dilated(x, k, strides, padding, dimension_numbers=NHWC)
  xla = jax.lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=NHWC)
  assert ours.shape == xla.shape
  np.testing.assert_allclose(ours, xla, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.grad(loss(cpu_conv.conv_general_dilated), argnums=(0, 1))(x, k),
                  jax.grad(loss(jax.lax.conv_general_dilated), argnums=(0, 1))(x, k)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  primitives = _primitives(lambda x, k: cpu_conv.conv_general_dilated(x, k, strides, padding,
                                                                       dimension_numbers=NHWC), x, k)
  assert "dot_general" in primitives and "conv_general_dilated" not in primitives


@pytest.mark.parametrize("kwargs, shape", [
    (dict(feature_group_count=2), (2, 4, 4, 4)),
    (dict(rhs_dilation=(2, 2)), (2, 6, 6, 4)),
    (dict(lhs_dilation=(2, 2)), (2, 4, 4, 4)),
])
def test_grouped_and_dilated_convolutions_are_left_to_xla(kwargs, shape):
  x = _random(shape, 2)
  k = _random((3, 3, shape[-1] // kwargs.get("feature_group_count", 1), 4), 3)
  conv = lambda x, k: cpu_conv.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC,
                                                    **kwargs)
  assert "conv_general_dilated" in _primitives(conv, x, k)
  np.testing.assert_array_equal(conv(x, k), jax.lax.conv_general_dilated(
      x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC, **kwargs))


def test_route_choice_by_size_layout_and_kernel():
  # An unstrided 1x1 is already a matrix product for XLA.
  assert not cpu_conv.uses_im2col((8, 2, 2, 64), (1, 1, 64, 64), (1, 1), ((0, 0), (0, 0)))
  # Past IM2COL_MAX_BYTES the patch matrix is not built.
  big = (64, 64, 64, 64)  # 64*64*64*9*64*4 bytes = 604 MB of patches
  assert not cpu_conv.uses_im2col(big, (3, 3, 64, 64), (1, 1), ((1, 1), (1, 1)))
  assert not cpu_conv.uses_im2col((64, 16, 16, 64), (3, 3, 64, 144), (1, 1), ((1, 1), (1, 1)))
  assert cpu_conv.uses_im2col((32, 8, 8, 128), (3, 3, 128, 288), (1, 1), ((1, 1), (1, 1)))
  # Other layouts (lax's default NCHW, 3D) go to XLA.
  x, k = _random((2, 4, 5, 5), 4), _random((6, 4, 3, 3), 5)
  conv = lambda x, k: cpu_conv.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)))
  assert "conv_general_dilated" in _primitives(conv, x, k)
  np.testing.assert_array_equal(conv(x, k), jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1))))
  x3, k3 = _random((1, 3, 4, 4, 2), 6), _random((3, 3, 3, 2, 2), 7)
  conv3 = lambda x, k: cpu_conv.conv_general_dilated(x, k, (1, 1, 1), ((1, 1),) * 3,
                                                     dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
  assert "conv_general_dilated" in _primitives(conv3, x3, k3)


def test_dimension_numbers_object_is_recognised():
  x, k = _random((2, 3, 3, 4), 8), _random((3, 3, 4, 5), 9)
  numbers = jax.lax.conv_dimension_numbers(x.shape, k.shape, NHWC)
  conv = lambda x, k: cpu_conv.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=numbers)
  assert "conv_general_dilated" not in _primitives(conv, x, k)
  np.testing.assert_allclose(conv(x, k), jax.lax.conv_general_dilated(
      x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=numbers), rtol=1e-5, atol=1e-5)


def test_conv_module_has_nn_conv_parameters_and_outputs():
  import flax.linen as nn

  x = _random((2, 4, 4, 3), 10)
  ours, theirs = cpu_conv.Conv(8, (3, 3), padding=((1, 1), (1, 1))), nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)))
  variables = theirs.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(0), x)) == jax.tree.map(jnp.shape, variables)
  np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x), rtol=1e-5, atol=1e-5)


def test_bfloat16_inputs_keep_their_dtype():
  x, k = _random((2, 4, 4, 8), 11).astype(jnp.bfloat16), _random((3, 3, 8, 4), 12).astype(jnp.bfloat16)
  y = cpu_conv.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(jax.lax.conv_general_dilated(
      x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC), np.float32), rtol=0.05, atol=0.1)
