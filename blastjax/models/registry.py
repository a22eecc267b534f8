"""The one model registry: every model is built through `create(name, ...)`.

A model module registers its constructors with `@register(...)`; nothing else in the
library builds a model from a string.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn

# What a model consumes; the data pipeline and the train step read this.
#   image        [B, H, W, C]
#   video        [B, T, H, W, C] plus optional mask [B, T] (True = padding frame)
#   video_focal  [B, T, P, H, W, C]  (focal planes as their own axis) plus mask
#   features     [B, T, D] pre-extracted per-frame features plus mask
INPUT_KINDS = ("image", "video", "video_focal", "features")

# torch_key_map(collection, flax_path) -> torch state_dict key (see blastjax.weights).
TorchKeyMap = Callable[[str, tuple], str]


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
  # Builds the PyTorch reference (torchvision name, or a description) -- for docs.
  reference: str = ""
  # Extra keyword defaults applied before the caller's.
  defaults: dict = dataclasses.field(default_factory=dict)
  # Smallest spatial size the model accepts (stride / pooling limits).
  min_image_size: int = 32
  description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, *, input_kind: str = "image", per_step: bool = False,
             torch_key_map: Optional[TorchKeyMap] = None, reference: str = "",
             min_image_size: int = 32, description: str = "", **defaults: Any):
  """Decorator registering `builder(num_classes=..., **kwargs) -> nn.Module`."""
  if input_kind not in INPUT_KINDS:
    raise ValueError(f"input_kind={input_kind!r} for model {name!r}; expected one of {INPUT_KINDS}")

  def wrap(builder):
    if name in _REGISTRY:
      raise ValueError(f"model {name!r} is registered twice ({_REGISTRY[name].builder} and {builder})")
    _REGISTRY[name] = ModelSpec(name=name, builder=builder, input_kind=input_kind,
                                per_step=per_step, torch_key_map=torch_key_map,
                                reference=reference, defaults=dict(defaults),
                                min_image_size=min_image_size,
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
