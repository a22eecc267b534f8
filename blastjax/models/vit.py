"""Vision Transformers ViT-B/16 and ViT-L/16, identical to torchvision's `vit_*_16`.

Names mirror torchvision: `conv_proj`, `class_token`, `encoder/pos_embedding`,
`encoder/encoder_layer_<i>` (torch `encoder.layers.encoder_layer_<i>`) with `ln_1`,
`self_attention` (the fused `in_proj` of `nn.MultiheadAttention`, kept fused, and
`out_proj`), `ln_2`, `mlp_0`/`mlp_3` (torch `mlp.0`/`mlp.3`), then `encoder/ln` and
`heads_head`. LayerNorm eps 1e-6, exact (erf) GELU, dropout and attention dropout as
torchvision (both 0.0 by default). `num_classes=0` returns the class-token feature.

`image_size` (a multiple of 16, default 224) fixes the position-embedding grid, as in
torchvision. Converting a checkpoint made for another size resamples its position
embeddings like torchvision's `interpolate_embeddings` (bicubic, align_corners=True):
`blastjax.weights.from_torch('vit_b_16', state_dict, image_size=384)`. torchvision
rejects inputs of any other size; here an input whose sides are other multiples of 16
(non-square included) runs with the position embeddings resampled the same way on the
fly, so the model at `image_size` is exactly torchvision's and other sizes still work.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from blastjax.models import cpu_conv, torch_compat
from blastjax.models.checks import check_in_channels
from blastjax.models.registry import register

PATCH_SIZE = 16
# torchvision's ViT: norm_layer=partial(nn.LayerNorm, eps=1e-6).
layer_norm = torch_compat.torch_layer_norm(eps=1e-6)
_CUBIC_A = -0.75  # torch's bicubic kernel coefficient.


def _cubic_weights(t: float) -> tuple[float, float, float, float]:
  """torch's `get_cubic_upsample_coefficients` for fractional offset `t`."""
  a = _CUBIC_A

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return far(t + 1), near(t), near(1 - t), far(2 - t)


@functools.lru_cache(maxsize=64)
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] matrix doing torch's 1-D bicubic resize with align_corners=True.

  Border taps are clamped to the edge, as torch does, so resizing a grid is
  `M_h @ grid @ M_w.T`.
  """
  matrix = np.zeros((out_size, in_size), np.float64)
  scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
  for i in range(out_size):
    real = i * scale
    index = int(math.floor(real))
    for offset, w in zip((-1, 0, 1, 2), _cubic_weights(real - index)):
      matrix[i, min(max(index + offset, 0), in_size - 1)] += w
  return matrix


def _resize_grid(grid, out_hw: tuple[int, int], xp):
  """Bicubically resizes a [h, w, D] grid to out_hw with numpy or jax.numpy (`xp`)."""
  mat_h = bicubic_matrix(grid.shape[0], out_hw[0]).astype(np.float32)
  mat_w = bicubic_matrix(grid.shape[1], out_hw[1]).astype(np.float32)
  return xp.einsum("ih,jw,hwd->ijd", mat_h, mat_w, grid)


def resize_pos_embedding(pos_embedding, out_hw: tuple[int, int], xp=np):
  """[1, 1 + n*n, D] position embeddings -> [1, 1 + h*w, D]; the class token's is kept.

  The patch part is resampled like torchvision's `interpolate_embeddings`.
  """
  _, length, dim = pos_embedding.shape
  side = math.isqrt(length - 1)
  if side * side != length - 1:
    raise ValueError(f"position embeddings of shape {tuple(pos_embedding.shape)} do not hold a "
                     "square grid of patches plus a class token")
  if (side, side) == tuple(out_hw):
    return pos_embedding
  grid = _resize_grid(pos_embedding[0, 1:].reshape(side, side, dim), out_hw, xp)
  resized = grid.reshape(1, out_hw[0] * out_hw[1], dim).astype(pos_embedding.dtype)
  return xp.concatenate([pos_embedding[:, :1], resized], axis=1)


class MultiheadSelfAttention(nn.Module):
  """torch `nn.MultiheadAttention` (batch_first, self-attention) with its fused in_proj."""

  num_heads: int
  attention_dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    batch, length, dim = x.shape
    head_dim = dim // self.num_heads
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    qkv = dense(3 * dim, name="in_proj")(x)
    q, k, v = jnp.split(qkv.reshape(batch, length, 3, self.num_heads, head_dim), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q / math.sqrt(head_dim), k)
    attention = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    attention = nn.Dropout(self.attention_dropout, deterministic=not train)(attention)
    out = jnp.einsum("bhqk,bkhd->bqhd", attention, v).reshape(batch, length, dim)
    return dense(dim, name="out_proj")(out)


class EncoderBlock(nn.Module):
  """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  attention_dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(layer_norm, dtype=self.dtype, param_dtype=self.param_dtype)
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=nn.initializers.xavier_uniform(),
                              bias_init=nn.initializers.normal(1e-6))
    y = MultiheadSelfAttention(self.num_heads, self.attention_dropout, dtype=self.dtype,
                               param_dtype=self.param_dtype,
                               name="self_attention")(norm(name="ln_1")(x), train)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
    y = dense(self.mlp_dim, name="mlp_0")(norm(name="ln_2")(x))
    y = nn.Dropout(self.dropout, deterministic=not train)(nn.gelu(y, approximate=False))
    y = nn.Dropout(self.dropout, deterministic=not train)(dense(x.shape[-1], name="mlp_3")(y))
    return x + y


class Encoder(nn.Module):
  """Position embeddings, dropout, the blocks, final LayerNorm."""

  seq_length: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  attention_dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, grid_hw: tuple[int, int], train: bool = False):
    pos_embedding = self.param("pos_embedding", nn.initializers.normal(0.02),
                               (1, self.seq_length, x.shape[-1]), self.param_dtype)
    x = x + resize_pos_embedding(pos_embedding, grid_hw, xp=jnp).astype(self.dtype)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    for i in range(self.num_layers):
      x = EncoderBlock(self.num_heads, self.mlp_dim, self.dropout, self.attention_dropout,
                       dtype=self.dtype, param_dtype=self.param_dtype,
                       name=f"encoder_layer_{i}")(x, train)
    return layer_norm(dtype=self.dtype, param_dtype=self.param_dtype, name="ln")(x)


class VisionTransformer(nn.Module):
  """torchvision's `VisionTransformer` on NHWC input with any number of channels."""

  num_layers: int
  num_heads: int
  hidden_dim: int
  mlp_dim: int
  image_size: int = 224
  num_classes: int = 2
  dropout: float = 0.0
  attention_dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  in_channels: Optional[int] = None  # Checked against the input when given.

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    del mask  # Single-image model.
    check_in_channels("ViT", self.in_channels, x)
    height, width = x.shape[1:3]
    if height % PATCH_SIZE or width % PATCH_SIZE:
      raise ValueError(f"ViT input {height}x{width} is not a multiple of the patch size "
                       f"{PATCH_SIZE}; resize or crop the images (image_size={self.image_size}).")
    x = jnp.asarray(x, self.dtype)
    fan_in = PATCH_SIZE * PATCH_SIZE * x.shape[-1]
    x = cpu_conv.Conv(self.hidden_dim, (PATCH_SIZE, PATCH_SIZE), strides=(PATCH_SIZE, PATCH_SIZE),
                padding="VALID", dtype=self.dtype, param_dtype=self.param_dtype,
                kernel_init=nn.initializers.truncated_normal(math.sqrt(1 / fan_in)),
                name="conv_proj")(x)
    batch, grid_h, grid_w, _ = x.shape
    x = x.reshape(batch, grid_h * grid_w, self.hidden_dim)
    class_token = self.param("class_token", nn.initializers.zeros, (1, 1, self.hidden_dim),
                             self.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(class_token.astype(self.dtype),
                                          (batch, 1, self.hidden_dim)), x], axis=1)
    seq_length = (self.image_size // PATCH_SIZE) ** 2 + 1
    x = Encoder(seq_length, self.num_layers, self.num_heads, self.mlp_dim, self.dropout,
                self.attention_dropout, dtype=self.dtype, param_dtype=self.param_dtype,
                name="encoder")(
                    x, (grid_h, grid_w), train)
    x = x[:, 0]
    if self.num_classes == 0:
      return x
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=nn.initializers.zeros, name="heads_head")(x)


def vit_key_map(collection: str, path: tuple) -> str:
  """Flax path -> torchvision key (see the module docstring for the name table)."""
  del collection  # ViT has only params.
  *modules, leaf = path
  names = []
  for name in modules:
    if name.startswith("encoder_layer_"):
      names += ["layers", name]
    elif name in ("mlp_0", "mlp_3", "heads_head"):
      names.append(name.replace("_", "."))
    else:
      names.append(name)
  if names[-1:] == ["in_proj"]:  # torch keeps the fused projection as raw parameters.
    return ".".join(names[:-1] + [f"in_proj_{torch_compat.torch_suffix('params', leaf)}"])
  return ".".join(names + [torch_compat.torch_suffix("params", leaf)])


def pos_embedding_transform(template) -> dict:
  """Resamples a checkpoint's position embeddings to the grid of the model being built."""
  target = template["params"]["encoder"]["pos_embedding"].shape
  side = math.isqrt(target[1] - 1)

  def resize(array):
    if array.ndim != 3 or array.shape[0] != 1 or array.shape[2] != target[2]:
      return array  # Left for the converter's shape check to report.
    return resize_pos_embedding(np.asarray(array, np.float32), (side, side))

  return {"encoder.pos_embedding": resize}



def _vit(num_classes: int, image_size: int, **kwargs) -> VisionTransformer:
  if image_size % PATCH_SIZE:
    raise ValueError(f"ViT image_size={image_size} is not a multiple of the patch size "
                     f"{PATCH_SIZE}; choose e.g. {image_size // PATCH_SIZE * PATCH_SIZE or 16}.")
  return VisionTransformer(num_classes=num_classes, image_size=image_size, **kwargs)


@register(input_kind="image", torch_key_map=vit_key_map, torch_transforms=pos_embedding_transform,
          reference="torchvision.models.vit_b_16", min_image_size=16)
def vit_b_16(num_classes: int = 2, image_size: int = 224, **kwargs) -> VisionTransformer:
  """ViT-B/16 (torchvision); `image_size`, `dropout`, `attention_dropout`, `dtype`, `param_dtype`."""
  return _vit(num_classes, image_size, num_layers=12, num_heads=12, hidden_dim=768,
              mlp_dim=3072, **kwargs)


@register(input_kind="image", torch_key_map=vit_key_map, torch_transforms=pos_embedding_transform,
          reference="torchvision.models.vit_l_16", min_image_size=16)
def vit_l_16(num_classes: int = 2, image_size: int = 224, **kwargs) -> VisionTransformer:
  """ViT-L/16 (torchvision); `image_size`, `dropout`, `attention_dropout`, `dtype`, `param_dtype`."""
  return _vit(num_classes, image_size, num_layers=24, num_heads=16, hidden_dim=1024,
              mlp_dim=4096, **kwargs)
