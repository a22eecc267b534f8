"""PyTorch state_dict -> Flax variables, for torchvision and reference-repo models.

Each registered model names, through its `torch_key_map`, the torch key of every Flax
variable; this module does the rest in one place: layout transforms (OIHW -> HWIO,
[out, in] -> [in, out], ...), strict key and shape checks, and the optional adaptation
of a pretrained RGB stem to another number of input channels.

torch is never imported here: a state_dict may hold torch tensors or numpy arrays, and
tensors are converted with `.detach().cpu().numpy()` when present.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np
from flax import traverse_util

from blastjax.models import registry

# Flax leaf name (per collection) -> torch parameter suffix.
_PARAM_SUFFIX = {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": "weight"}
_STATS_SUFFIX = {"mean": "running_mean", "var": "running_var"}
# torch keys that carry no Flax variable.
IGNORED_TORCH_SUFFIXES = ("num_batches_tracked",)


def torch_suffix(collection: str, leaf: str) -> str:
  """The torch parameter name for a Flax leaf (`kernel` -> `weight`, `mean` -> `running_mean`)."""
  table = _STATS_SUFFIX if collection == "batch_stats" else _PARAM_SUFFIX
  return table.get(leaf, leaf)


def to_numpy(value: Any) -> np.ndarray:
  """A torch tensor or array-like as a float32/int numpy array (no torch import)."""
  if hasattr(value, "detach"):
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def torch_to_flax_layout(leaf: str, array: np.ndarray, target_ndim: int) -> np.ndarray:
  """Moves a torch tensor into the Flax layout of `leaf`.

  Conv kernels: torch [O, I, *spatial] -> Flax [*spatial, I, O]; Dense kernels:
  [out, in] -> [in, out]; everything else is taken as is.
  """
  if leaf != "kernel":
    return array
  if array.ndim == 2 and target_ndim == 2:
    return array.T
  if array.ndim >= 3:
    spatial = tuple(range(2, array.ndim))
    return np.transpose(array, spatial + (1, 0))
  return array


def adapt_in_channels(kernel: np.ndarray, in_channels: int) -> np.ndarray:
  """Adapts a Flax conv kernel [..., 3, O] made for RGB to `in_channels` inputs.

  One channel (grayscale) gets the sum of the RGB filters, so a gray image replicated to
  RGB and the gray image itself give the same activations. N channels (focal planes)
  get the RGB sum spread evenly, so the response to N equal planes is unchanged.
  """
  rgb_sum = kernel.sum(axis=-2, keepdims=True)
  return np.repeat(rgb_sum / in_channels, in_channels, axis=-2)


class ConversionError(ValueError):
  """A state_dict that does not fit the model: missing, unexpected or mis-shaped keys."""


def convert(state_dict: Mapping[str, Any], template: Mapping[str, Any],
            key_map: Callable[[str, tuple], str], *,
            adapt_channels: bool = False,
            transforms: Optional[Mapping[str, Callable[[np.ndarray], np.ndarray]]] = None,
            ) -> dict:
  """Fills the variable tree `template` (shapes only) from a torch `state_dict`.

  key_map(collection, path) gives the torch key of the Flax variable at `path`
  (a tuple of module names ending with the leaf name). `transforms` maps a torch key to
  a function applied after the layout change (for the few tensors a rule cannot cover,
  e.g. a fused attention projection). Raises `ConversionError` naming every missing,
  unexpected and mis-shaped key.
  """
  transforms = dict(transforms or {})
  state = {k: v for k, v in state_dict.items() if not k.endswith(IGNORED_TORCH_SUFFIXES)}
  used: set[str] = set()
  missing, mismatched = [], []
  out: dict = {}
  for collection, tree in template.items():
    flat = traverse_util.flatten_dict(tree)
    converted = {}
    for path, target in flat.items():
      key = key_map(collection, path)
      if key not in state:
        missing.append(f"{key} (for {collection}/{'/'.join(path)})")
        continue
      used.add(key)
      array = torch_to_flax_layout(path[-1], to_numpy(state[key]), len(target.shape))
      if key in transforms:
        array = transforms[key](array)
      if (adapt_channels and path[-1] == "kernel" and array.ndim >= 3
          and array.shape[-2] == 3 and tuple(target.shape[-2:-1]) != (3,)
          and array.shape[:-2] == tuple(target.shape[:-2])):
        array = adapt_in_channels(array, target.shape[-2])
      if tuple(array.shape) != tuple(target.shape):
        mismatched.append(f"{key}: torch {tuple(array.shape)} (Flax layout) vs model {tuple(target.shape)}")
        continue
      converted[path] = np.asarray(array, dtype=target.dtype)
    out[collection] = traverse_util.unflatten_dict(converted)
  unexpected = sorted(set(state) - used)
  if missing or unexpected or mismatched:
    lines = []
    if missing:
      lines.append(f"missing keys ({len(missing)}): " + "; ".join(missing[:20]))
    if unexpected:
      lines.append(f"unexpected keys ({len(unexpected)}): " + "; ".join(unexpected[:20]))
    if mismatched:
      lines.append(f"wrong shapes ({len(mismatched)}): " + "; ".join(mismatched[:20]))
    raise ConversionError("state_dict does not match the model:\n  " + "\n  ".join(lines)
                          + "\nCheck the model name and its keyword arguments (num_classes, "
                            "in_channels) against the checkpoint.")
  return out


def variable_shapes(module, *example_inputs, **apply_kwargs) -> dict:
  """Shapes of `module`'s variables without computing anything (jax.eval_shape)."""
  rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
  inputs = [jax.ShapeDtypeStruct(np.shape(x), getattr(x, "dtype", np.float32))
            for x in example_inputs]
  return jax.eval_shape(lambda *xs: module.init(rngs, *xs, **apply_kwargs), *inputs)


def from_torch(name: str, state_dict: Mapping[str, Any], *, example_input=None,
               adapt_channels: bool = False, **model_kwargs) -> dict:
  """Converts the torch `state_dict` of model `name` to Flax variables.

  Returns `{'params': ..., 'batch_stats': ...}` (only the collections the model has),
  for `blastjax.models.create(name, **model_kwargs)`. With `adapt_channels=True` a
  pretrained RGB stem is adapted to `in_channels` (sum for 1, spread for N).
  `example_input` (an array or ShapeDtypeStruct) overrides the model's default dummy
  input for shape inference.
  """
  spec = registry.get_spec(name)
  if spec.torch_key_map is None:
    raise ValueError(f"model {name!r} has no PyTorch reference to convert from")
  module = registry.create(name, **model_kwargs)
  if example_input is None:
    example_input = dummy_input(spec, model_kwargs)
  template = variable_shapes(module, example_input, train=False)
  transforms = getattr(spec.torch_key_map, "transforms", None)
  if callable(transforms):
    transforms = transforms(template)
  return convert(state_dict, template, spec.torch_key_map,
                 adapt_channels=adapt_channels, transforms=transforms)


def dummy_input(spec: "registry.ModelSpec", model_kwargs: Mapping[str, Any]):
  """A small ShapeDtypeStruct that `spec`'s model accepts, for shape inference."""
  channels = model_kwargs.get("in_channels", 3)
  size = max(spec.min_image_size, 32)
  if spec.input_kind == "image":
    shape = (1, size, size, channels)
  elif spec.input_kind == "video":
    shape = (1, model_kwargs.get("num_frames", 8), size, size, channels)
  elif spec.input_kind == "video_focal":
    shape = (1, model_kwargs.get("num_frames", 4), model_kwargs.get("num_focal_planes", 3),
             size, size, channels)
  else:
    shape = (1, model_kwargs.get("num_frames", 8), model_kwargs.get("feature_dim", 1024))
  return jax.ShapeDtypeStruct(shape, np.float32)
