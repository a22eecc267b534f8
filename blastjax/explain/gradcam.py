"""Grad-CAM (Selvaraju et al. 2017) at a named layer of any registered conv net, time kept.

No model changes: `flax.linen.intercept_methods` wraps the named submodule's `__call__`
and adds a zero perturbation `delta` to its output; d score / d delta at delta = 0 is
the gradient with respect to that activation, and the activation itself comes back
from the same forward pass. Channel weights are the gradient averaged over every
position of the map (time and space: the 3D Grad-CAM of video nets), the map is
relu(sum_c w_c A_c) at each position, kept per time position, then resized linearly to
the input's frames and pixels.

Default layer (`default_layer`): the last feature map in the module tree -- the last
submodule, in call order (a block after the layers inside it), whose output is a map
[N, h, w, C] or [N, T, h, w, C] with N a multiple of the batch and more than one
spatial position. For the library's families that is: ResNet `layer4_<last>` (the last
block of the last stage), video ResNets (r3d_18, mc3_18, r2plus1d_18) `layer4`, TSM
and the ResNet + recurrent models their per-frame ResNet's last block, and the last
stage of the others. `list_layers` prints the candidates for choosing another.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from blastjax.explain.scores import apply_model, blast_score


@dataclasses.dataclass
class GradCam:
  """maps: [B, T, H, W] (video inputs) or [B, H, W] (images) in [0, 1], each example
  divided by its maximum; raw: [B, T', h, w] at the layer's resolution, unnormalised;
  activation and gradient: the layer's output and d score / d output."""

  maps: np.ndarray
  raw: np.ndarray
  layer: str
  score: np.ndarray
  activation: np.ndarray
  gradient: np.ndarray


def _walk(tree, prefix=()):
  """(path, outputs) of a captured 'intermediates' tree (keys sorted, not in call order)."""
  for name, value in tree.items():
    if name == "__call__":
      yield "/".join(prefix), value
    elif isinstance(value, dict):
      yield from _walk(value, prefix + (name,))


def list_layers(model, variables: dict, x, mask=None) -> list:
  """[(layer path, output shape)] of every submodule's `__call__` with one array output,
  in the order the calls return (a block after the layers inside it); shapes only."""
  layers = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    path = "/".join(context.module.path)
    if context.method_name == "__call__" and path and hasattr(out, "shape"):
      layers.append((path, tuple(out.shape)))
    return out

  def forward():
    with nn.intercept_methods(record):
      return apply_model(model, variables, x, mask)

  jax.eval_shape(forward)
  return layers


def _is_map(shape: tuple, batch: int) -> bool:
  if len(shape) not in (4, 5) or shape[0] % batch:
    return False
  return int(np.prod(shape[-3:-1])) > 1


def default_layer(model, variables: dict, x, mask=None) -> str:
  """The last feature map of the module tree (see the module docstring)."""
  maps = [path for path, shape in list_layers(model, variables, x, mask) if _is_map(shape, x.shape[0])]
  if not maps:
    raise ValueError(f"{type(model).__name__} has no convolutional feature map with more than one spatial "
                     f"position for input {tuple(x.shape)} (a features model, or an input too small): "
                     "use integrated_gradients, or a larger image_size")
  return maps[-1]


def _perturbed(model, variables: dict, x, mask, layer: str, delta):
  """(model output, the layer's activation) with `delta` added to the layer's output."""
  seen = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name != "__call__" or "/".join(context.module.path) != layer:
      return out
    seen.append(out)
    if len(seen) > 1:
      raise ValueError(f"layer {layer!r} is called more than once in one forward pass (a shared "
                       "module); name a layer that runs once (see blastjax.explain.list_layers)")
    return out + delta.astype(out.dtype)

  with nn.intercept_methods(interceptor):
    out = apply_model(model, variables, x, mask)
  if not seen:
    raise ValueError(f"layer {layer!r} is not a submodule of {type(model).__name__} run on this input; "
                     "see blastjax.explain.list_layers for the names")
  return out, seen[0]


def activation_and_gradient(model, variables: dict, spec, x, mask, layer: str, score: str = "logit"):
  """(scores [B], activation, d score / d activation) at `layer`."""
  shape = dict(list_layers(model, variables, x, mask)).get(layer)
  if shape is None:
    raise ValueError(f"layer {layer!r} not found; layers with one output: "
                     f"{[p for p, _ in list_layers(model, variables, x, mask)][-12:]} (last 12)")

  @jax.jit
  def run(delta):
    def total(d):
      out, act = _perturbed(model, variables, x, mask, layer, d)
      scores = blast_score(spec, out, mask, score)
      return scores.sum(), (scores, act)

    (_, (scores, act)), grad = jax.value_and_grad(total, has_aux=True)(delta)
    return scores, act, grad

  return run(jnp.zeros(shape, jnp.float32))


def _time_positions(cam, batch: int, frames: int):
  """cam [N, (T',) h, w] -> [B, T', h, w]; per-frame 2D maps (N = B*T, or B*T*P for
  focal planes, averaged over planes) are regrouped by example, and maps of several
  rows per example (focal planes in the batch) averaged."""
  if cam.ndim == 4:
    if cam.shape[0] == batch:
      return cam
    return cam.reshape((batch, -1) + cam.shape[1:]).mean(axis=1)
  per = cam.shape[0] // batch
  cam = cam.reshape((batch, per) + cam.shape[1:])
  if frames and per % frames == 0 and per != frames:
    cam = cam.reshape((batch, frames, per // frames) + cam.shape[2:]).mean(axis=2)
  return cam


def grad_cam(model, variables: dict, spec, x, mask=None, layer: Optional[str] = None,
             score: str = "logit") -> GradCam:
  """Grad-CAM maps of a batch `x` (the model's input, as `spec.inputs(batch)` gives it)."""
  layer = layer or default_layer(model, variables, x, mask)
  scores, act, grad = activation_and_gradient(model, variables, spec, x, mask, layer, score)
  act, grad = np.asarray(act, np.float32), np.asarray(grad, np.float32)
  batch = x.shape[0]
  per_example = grad.reshape((batch, -1, grad.shape[-1]))
  weights = per_example.mean(axis=1)  # [B, C]: over every time and space position
  weights = np.repeat(weights, act.shape[0] // batch, axis=0)
  weights = weights.reshape((act.shape[0],) + (1,) * (act.ndim - 2) + (act.shape[-1],))
  cam = np.maximum((act * weights).sum(-1), 0.0)  # [N, (T',) h, w]
  video = spec.input_kind in ("video", "video_focal")
  frames = x.shape[1] if video else 1
  raw = _time_positions(cam, batch, frames)
  height, width = (x.shape[2:4] if spec.input_kind == "video" else
                   x.shape[3:5] if spec.input_kind == "video_focal" else x.shape[1:3])
  maps = np.asarray(jax.image.resize(jnp.asarray(raw), (batch, frames, height, width), "linear"))
  maps = np.maximum(maps, 0.0)
  peak = maps.reshape(batch, -1).max(axis=1).reshape((batch, 1, 1, 1))
  maps = maps / np.where(peak > 0, peak, 1.0)
  return GradCam(maps=maps if video else maps[:, 0], raw=raw, layer=layer, score=np.asarray(scores),
                 activation=act, gradient=grad)
