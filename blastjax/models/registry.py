"""The one model registry: every model is built through `create(name, ...)`.

A model module registers each constructor in one way, as torchvision's
`models/_api.py` does: a module-level function named like the model, decorated with
`@register(...)` (the name is the function's):

  @register(input_kind="video", torch_key_map=torch_compat.dotted_key_map,
            reference="torchvision.models.video.r3d_18", min_image_size=16)
  def r3d_18(num_classes: int = 2, **kwargs) -> VideoResNet:
    return video_resnet_from_config("r3d_18", num_classes, **kwargs)

Nothing else in the library builds a model from a string.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

# What a model consumes; the data pipeline and the train step read this.
#   image        [B, H, W, C]
#   video        [B, T, H, W, C] plus optional mask [B, T] (True = padding frame)
#   video_focal  [B, T, P, H, W, C]  (focal planes as their own axis) plus mask
#   features     [B, T, D] pre-extracted per-frame features plus mask
INPUT_KINDS = ("image", "video", "video_focal", "features")

# torch_key_map(collection, flax_path) -> torch state_dict key (see blastjax.weights).
TorchKeyMap = Callable[[str, tuple], str]
# torch_transforms(template) -> {torch key: fn(array) -> array}; template is the model's
# variable tree (shapes only), so a transform can fit a tensor to the model being built.
TorchTransforms = Callable[[Any], dict]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """How to build one registered model and what it expects."""

  name: str
  builder: Callable[..., nn.Module]
  input_kind: str = "image"
  # True when the model returns one prediction per time step: logits [B, T, classes].
  per_step: bool = False
  # Maps a Flax variable path to the torch state_dict key of its reference model.
  torch_key_map: Optional[TorchKeyMap] = None
  # Per-key fixes applied after the layout change, for the few tensors a rule cannot
  # cover (ViT's position embeddings, resampled to the model's grid).
  torch_transforms: Optional[TorchTransforms] = None
  # The registered models this one holds inside, for loading their checkpoints
  # (blastjax.weights.from_torch(..., source=...)): embeds(module) -> {source model:
  # {module path here ('/'-joined): globs over the source's top-level module names}}, e.g.
  # {'resnet50': {'front': ('conv1', 'bn1', 'layer1_*'), 'back': ('layer[234]_*',)}}.
  embeds: Optional[Callable[[nn.Module], dict]] = None
  # Builds the PyTorch reference (torchvision name, or a description) -- for docs.
  reference: str = ""
  # Extra keyword defaults applied before the caller's.
  defaults: dict = dataclasses.field(default_factory=dict)
  # Smallest spatial size the model accepts (stride / pooling limits).
  min_image_size: int = 32
  description: str = ""

  # The model input/output contract, shared by the train step, the evaluator and predict.
  def inputs(self, batch: dict):
    return model_inputs(batch, self.input_kind)

  def final_logits(self, logits, mask):
    return final_logits(logits, mask, self.per_step)

  def probabilities(self, out, mask):
    return blast_probability(out, mask, self.per_step)


def model_inputs(batch: dict, input_kind: str):
  """(x, mask) a model of `input_kind` takes from a batch; image models get mask=None."""
  x = batch["features"] if input_kind == "features" else batch["image"]
  return x, (None if input_kind == "image" else batch["mask"])


def split_output(out):
  """(logits, aux_logits or None): models may return both in train mode (Inception-v3)."""
  if isinstance(out, (tuple, list)):
    return out[0], out[1]
  return out, None


def final_logits(logits, mask, per_step: bool):
  """[B, C] logits: the last valid step's for per-step models ([B, T, C])."""
  if not per_step:
    return logits
  steps = logits.shape[1]
  valid = ~mask if mask is not None else jnp.ones(logits.shape[:2], bool)
  last = steps - 1 - jnp.argmax(valid[:, ::-1], axis=1)
  return jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]


def blast_probability(out, mask, per_step: bool):
  """P(blast) [B] of a model's eval-mode output, in float32: class 1 of the softmax, or
  the sigmoid of the one logit of a one-output head (config.loss 'bce' / 'weighted_mse')."""
  logits = final_logits(split_output(out)[0], mask if per_step else None, per_step).astype(jnp.float32)
  if logits.shape[-1] == 1:
    return jax.nn.sigmoid(logits[:, 0])
  return jax.nn.softmax(logits, axis=-1)[:, 1]


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: Optional[str] = None, *, input_kind: str = "image", per_step: bool = False,
             torch_key_map: Optional[TorchKeyMap] = None,
             torch_transforms: Optional[TorchTransforms] = None, reference: str = "",
             min_image_size: int = 32, description: str = "",
             embeds: Optional[Callable[[nn.Module], dict]] = None, **defaults: Any):
  """Decorator registering `builder(num_classes=..., **kwargs) -> nn.Module`.

  The model's name is `name`, or the builder's function name when `name` is None (the
  library's own models: one function per model, named like it).
  """
  if input_kind not in INPUT_KINDS:
    raise ValueError(f"input_kind={input_kind!r} for model {name!r}; expected one of {INPUT_KINDS}")

  def wrap(builder):
    model_name = name or builder.__name__
    if model_name in _REGISTRY:
      raise ValueError(f"model {model_name!r} is registered twice "
                       f"({_REGISTRY[model_name].builder} and {builder})")
    _REGISTRY[model_name] = ModelSpec(
        name=model_name, builder=builder, input_kind=input_kind, per_step=per_step,
        torch_key_map=torch_key_map, torch_transforms=torch_transforms, reference=reference,
        embeds=embeds, defaults=dict(defaults), min_image_size=min_image_size,
        description=description or (builder.__doc__ or "").strip().split("\n")[0])
    return builder

  return wrap


def get_spec(name: str) -> ModelSpec:
  """The spec of a registered model; a clear error listing the known names otherwise."""
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(
        f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}. "
        "See blastjax.models.list_models().") from None


def create(name: str, num_classes: int = 2, **kwargs: Any) -> nn.Module:
  """Builds the registered model `name` as a linen Module.

  `num_classes=0` returns pooled features instead of logits where the model supports it.
  """
  spec = get_spec(name)
  return spec.builder(num_classes=num_classes, **{**spec.defaults, **kwargs})


def list_models(input_kind: Optional[str] = None) -> list[str]:
  """Every registered name, sorted; optionally only those of one input kind."""
  return sorted(n for n, s in _REGISTRY.items() if input_kind in (None, s.input_kind))


def unregister(name: str) -> None:
  """Removes a registered model (test-only models registered for one test session)."""
  get_spec(name)  # the known-names error for a name never registered
  del _REGISTRY[name]
