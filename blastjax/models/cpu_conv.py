"""2D convolutions that XLA's CPU backend runs fast: small ones as one matrix product.

XLA's CPU convolution is very slow on the small feature maps of the late stages of the
zoo's networks at smoke sizes: a 3x3 convolution 512 -> 1152 channels on 2x2 maps (the
last stage of R(2+1)D-18 at 32 px) takes 254 ms forward + backward for a batch of 8,
where the same sum written as patches @ kernel (im2col) takes 7 ms; a strided 3x3 on
4x4 maps 69 ms against 4 ms; on 16x16 maps the two are within noise of each other
(`python scripts/benchmark_conv3d.py --im2col` prints the table). `conv_general_dilated` is a
drop-in for `jax.lax.conv_general_dilated` that takes that route for an ungrouped,
undilated 2D NHWC/HWIO convolution on the CPU whose patch matrix is at most
`IM2COL_MAX_BYTES`, and calls XLA's convolution otherwise (on accelerators always:
their libraries convolve well, and the patch matrix would cost kh*kw times the memory).

The parameters do not change (nn.Conv's 'kernel' [kh, kw, in, out]): only the order in
which the products are summed, so results agree with XLA's to float rounding.
`Conv` is `nn.Conv` with this function; the model files use it in place of `nn.Conv`.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# The patch matrix is kh*kw times its input; past this size XLA's own convolution is
# as fast and needs no such copy (3x3 on 16x16 maps, 64 frames of 64 channels: 38 MB of
# patches, XLA's route; 8x8 maps of 32 frames at 128 channels: 9 MB, im2col's).
IM2COL_MAX_BYTES = 16 * 2**20

_NHWC = ("NHWC", "HWIO", "NHWC")


def _is_nhwc(dimension_numbers, ndim: int) -> bool:
  """Whether `dimension_numbers` (as lax takes them) mean NHWC input, HWIO kernel, NHWC out."""
  if ndim != 4:
    return False
  if dimension_numbers is None:  # lax's default is NCHW
    return False
  if isinstance(dimension_numbers, (tuple, list)) and all(isinstance(d, str) for d in dimension_numbers):
    return tuple(dimension_numbers) == _NHWC
  expected = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), _NHWC)
  return tuple(dimension_numbers) == tuple(expected)


def _explicit_padding(padding, in_hw: Sequence[int], kernel_hw: Sequence[int],
                      strides: Sequence[int]) -> Tuple[Tuple[int, int], ...]:
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(in_hw, kernel_hw, strides, padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def uses_im2col(x_shape: Sequence[int], kernel_shape: Sequence[int], strides: Sequence[int],
                padding, itemsize: int = 4) -> bool:
  """Whether `conv_general_dilated` takes the patches @ kernel route for these shapes on
  the CPU (an ungrouped NHWC/HWIO convolution; the caller checks groups and dilation)."""
  if jax.default_backend() != "cpu":
    return False
  n, h, w, c = x_shape
  kh, kw = kernel_shape[:2]
  (pt, pb), (pl, pr) = _explicit_padding(padding, (h, w), (kh, kw), strides)
  ho = (h + pt + pb - kh) // strides[0] + 1
  wo = (w + pl + pr - kw) // strides[1] + 1
  if kh == kw == 1 and tuple(strides) == (1, 1):
    return False  # already a matrix product for XLA
  return n * ho * wo * kh * kw * c * itemsize <= IM2COL_MAX_BYTES


def im2col_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                padding: Sequence[Tuple[int, int]], precision=None,
                preferred_element_type=None) -> jax.Array:
  """An NHWC x HWIO convolution as patches [N*Ho*Wo, kh*kw*C] @ kernel [kh*kw*C, O].

  The patches are the kh*kw strided windows of the padded input concatenated on the
  channel axis in (i, j) order, which is the row order of kernel.reshape(kh*kw*C, O)."""
  kh, kw, c, o = kernel.shape
  sh, sw = strides
  x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  n, h, w, _ = x.shape
  ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
  windows = [lax.slice(x, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c), (1, sh, sw, 1))
             for i in range(kh) for j in range(kw)]
  patches = windows[0] if len(windows) == 1 else jnp.concatenate(windows, axis=-1)
  y = jnp.matmul(patches.reshape(n * ho * wo, kh * kw * c), kernel.reshape(kh * kw * c, o),
                 precision=precision, preferred_element_type=preferred_element_type)
  return y.reshape(n, ho, wo, o)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: Union[str, Sequence[Tuple[int, int]]],
                         lhs_dilation: Optional[Sequence[int]] = None,
                         rhs_dilation: Optional[Sequence[int]] = None,
                         dimension_numbers=None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision=None,
                         preferred_element_type=None) -> jax.Array:
  """`jax.lax.conv_general_dilated`, computed as one matrix product where that is faster
  (see the module docstring); every argument means what it means for lax."""
  plain = (feature_group_count == 1 and batch_group_count == 1
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1)))
           and _is_nhwc(dimension_numbers, lhs.ndim))
  if plain and uses_im2col(lhs.shape, rhs.shape, window_strides, padding, jnp.dtype(lhs.dtype).itemsize):
    pads = _explicit_padding(padding, lhs.shape[1:3], rhs.shape[:2], window_strides)
    return im2col_conv(lhs, rhs, window_strides, pads, precision, preferred_element_type)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                  dimension_numbers, feature_group_count, batch_group_count,
                                  precision=precision, preferred_element_type=preferred_element_type)


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
