"""Attention rollout (Abnar & Zuidema 2020) for the Vision Transformers (blastjax.models.vit).

Each block's attention is recomputed from its captured fused `in_proj` output (q, k,
v; `capture_intermediates`, no model change): softmax(q k^T / sqrt(d)) per head. Then
A_l = normalise_rows(mean over heads + I) (the identity stands for the residual path)
and the rollout R = A_L ... A_1; the class token's row of R over the patches, on the
patch grid and resized to the input, says which patches the prediction's token drew
from. It does not depend on the score (attention is class-agnostic).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from blastjax.explain.gradcam import _walk
from blastjax.explain.scores import apply_model
from blastjax.models.vit import PATCH_SIZE, VisionTransformer


def _qkv(model, variables: dict, x) -> list:
  """Each block's fused in_proj output [B, L, 3D], in block order."""
  _, state = apply_model(model, variables, x, None, capture_intermediates=lambda m, name: m.name == "in_proj",
                         mutable=["intermediates"])
  found = [(path, out[0]) for path, out in _walk(state["intermediates"]) if path.endswith("/in_proj")]
  index = lambda path: int(path.split("encoder_layer_")[1].split("/")[0])
  return [out for _, out in sorted(found, key=lambda item: index(item[0]))]


def attention_maps(model, variables: dict, x) -> jnp.ndarray:
  """[layers, B, heads, L, L] attention probabilities of every block."""
  if not isinstance(model, VisionTransformer):
    raise ValueError(f"attention rollout needs a VisionTransformer (vit_b_16, vit_l_16), not "
                     f"{type(model).__name__}: use grad_cam or integrated_gradients")
  layers = []
  for qkv in _qkv(model, variables, x):
    batch, length, three_d = qkv.shape
    dim = three_d // 3
    qkv = qkv.astype(jnp.float32).reshape(batch, length, 3, model.num_heads, dim // model.num_heads)
    q, k = qkv[:, :, 0], qkv[:, :, 1]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q / math.sqrt(q.shape[-1]), k)
    layers.append(jax.nn.softmax(logits, axis=-1))
  return jnp.stack(layers)


def rollout_matrix(attentions) -> np.ndarray:
  """[B, L, L] rollout of [layers, B, heads, L, L] attentions (rows sum to 1)."""
  attentions = np.asarray(attentions, np.float64)
  length = attentions.shape[-1]
  result = None
  for layer in attentions:
    mixed = layer.mean(axis=1) + np.eye(length)
    mixed /= mixed.sum(axis=-1, keepdims=True)
    result = mixed if result is None else mixed @ result
  return result


def attention_rollout(model, variables: dict, x) -> np.ndarray:
  """[B, H, W] in [0, 1]: the class token's rollout over the patches, resized to the input."""
  batch, height, width = x.shape[:3]
  grid = (height // PATCH_SIZE, width // PATCH_SIZE)
  cls_row = rollout_matrix(attention_maps(model, variables, x))[:, 0, 1:]
  patches = cls_row.reshape((batch,) + grid).astype(np.float32)
  maps = np.asarray(jax.image.resize(jnp.asarray(patches), (batch, height, width), "nearest"))
  peak = maps.reshape(batch, -1).max(axis=1).reshape(batch, 1, 1)
  return maps / np.where(peak > 0, peak, 1.0)
