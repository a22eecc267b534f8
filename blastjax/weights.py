"""PyTorch state_dict -> Flax variables, for torchvision and reference-repo models.

Each registered model names, through its spec's `torch_key_map` (built from
`blastjax.models.torch_compat`), the torch key of every Flax variable, and through
`torch_transforms` any tensor a layout rule cannot cover; this module does the rest in
one place: layout transforms (OIHW -> HWIO, [out, in] -> [in, out], ...), strict key
and shape checks, and the optional adaptation of a pretrained RGB stem to another number
of input channels.

Converted variables are stored with `save_variables(dir, variables, meta)` (orbax, plus a
`meta.json` naming the model, its kwargs and the source checkpoint) and read back with
`load_variables(dir) -> (variables, meta)`, which the training system's `config.init_from`
calls; `scripts/convert_weights.py` is the command line for the whole path. With
`from_torch(..., drop_head=True)` the classifier is left out, and merging into a fresh
`model.init` (`merge_variables`, or `init_from`) keeps the fresh head.

Composite models (AMSNet, the recurrent models, TSM, `yowo_cfam`) embed other
registered models; their spec's `embeds` says where. `from_torch(name, state_dict,
source='resnet50')` converts a checkpoint of the embedded model as that model, then
puts each variable in every place that holds it (shape-checked, every leaf there
filled) and returns those leaves only; `left_out_patterns` names the rest, which
`scripts/convert_weights.py` records in `meta.json` as `init_skip` for `init_from`.

torch and orbax are never imported at module level: a state_dict may hold torch tensors
or numpy arrays, and tensors are converted with `.detach().cpu().numpy()` when present.
"""

from __future__ import annotations

import fnmatch
import json
import os
from typing import Any, Callable, Collection, Mapping, Optional

import jax
import numpy as np
from flax import traverse_util

from blastjax.models import registry

# torch keys that carry no Flax variable.
IGNORED_TORCH_SUFFIXES = ("num_batches_tracked",)


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
            skip_keys: Collection[str] = (),
            ) -> dict:
  """Fills the variable tree `template` (shapes only) from a torch `state_dict`.

  key_map(collection, path) gives the torch key of the Flax variable at `path`
  (a tuple of module names ending with the leaf name). `transforms` maps a torch key to
  a function applied after the layout change (for the few tensors a rule cannot cover,
  e.g. a fused attention projection). Torch keys in `skip_keys` are ignored: the Flax
  variables they map to are left out of the result (for fresh initialisation) and the
  keys are not reported as unexpected. Raises `ConversionError` naming every missing,
  unexpected and mis-shaped key.
  """
  transforms = dict(transforms or {})
  skip_keys = set(skip_keys)
  state = {k: v for k, v in state_dict.items()
           if not k.endswith(IGNORED_TORCH_SUFFIXES) and k not in skip_keys}
  used: set[str] = set()
  missing, mismatched = [], []
  out: dict = {}
  for collection, tree in template.items():
    flat = traverse_util.flatten_dict(tree)
    converted = {}
    for path, target in flat.items():
      key = key_map(collection, path)
      if key in skip_keys:
        continue
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


def from_torch(name: str, state_dict: Mapping[str, Any], *, source: Optional[str] = None,
               example_input=None, adapt_channels: bool = False, drop_head: bool = False,
               skip_keys: Collection[str] = (), **model_kwargs) -> dict:
  """Converts the torch `state_dict` of model `name` to Flax variables.

  Returns `{'params': ..., 'batch_stats': ...}` (only the collections the model has),
  for `blastjax.models.create(name, **model_kwargs)`. With `adapt_channels=True` a
  pretrained RGB stem is adapted to `in_channels` (sum for 1, spread for N).
  `drop_head=True` ignores the checkpoint's classifier (e.g. ImageNet's 1000 classes
  for a 2-class model): the head's leaves are absent from the result and keep their
  fresh initialisation when merged (`merge_variables`, or the training system's
  `config.init_from`). `skip_keys` ignores further torch keys the same way.
  `example_input` (an array or ShapeDtypeStruct) overrides the model's default dummy
  input for shape inference.

  With `source` (another registered model, e.g. 'resnet50'), `state_dict` is a
  checkpoint of that model, loaded into every place where model `name` embeds it (its
  spec's `embeds`); see `from_embedded_torch`. The source's own classifier is always
  left out then (no `drop_head` needed).
  """
  if source is not None:
    return from_embedded_torch(name, source, state_dict, example_input=example_input,
                               adapt_channels=adapt_channels, skip_keys=skip_keys,
                               **model_kwargs)
  spec = registry.get_spec(name)
  if spec.torch_key_map is None:
    hint = (f"; it embeds {', '.join(embedded_models(name, **model_kwargs))}: pass one of them "
            "as source=" if spec.embeds else "")
    raise ValueError(f"model {name!r} has no PyTorch reference to convert from{hint}")
  if example_input is None:
    example_input = dummy_input(spec, model_kwargs)
  template = model_template(name, example_input, **model_kwargs)
  skip_keys = set(skip_keys)
  if drop_head:
    skip_keys |= head_keys(name, example_input, **model_kwargs)
  transforms = spec.torch_transforms(template) if spec.torch_transforms else None
  return convert(state_dict, template, spec.torch_key_map, adapt_channels=adapt_channels,
                 transforms=transforms, skip_keys=skip_keys)


def model_template(name: str, example_input=None, **model_kwargs) -> dict:
  """The variable shapes of model `name` (its default dummy input unless given one)."""
  if example_input is None:
    example_input = dummy_input(registry.get_spec(name), model_kwargs)
  return variable_shapes(registry.create(name, **model_kwargs), example_input, train=False)


def embedded_models(name: str, **model_kwargs) -> dict:
  """What model `name` (with `model_kwargs`) embeds, from its spec's `embeds`:
  {source model: {module path here: globs over the source's top-level module names}}."""
  spec = registry.get_spec(name)
  return dict(spec.embeds(registry.create(name, **model_kwargs))) if spec.embeds else {}


def _whole_backbone(source: str) -> Optional[tuple[str, tuple]]:
  """(backbone, path) when model `source` is one embedded model whole under `path` plus
  parameter-free wrapping (TSM: a ResNet with shifts under `base_model`), else None."""
  try:
    embeds = embedded_models(source)
  except (TypeError, ValueError):
    return None
  if len(embeds) != 1:
    return None
  (backbone, places), = embeds.items()
  if len(places) != 1 or tuple(next(iter(places.values()))) != ("*",):
    return None
  return backbone, tuple(next(iter(places)).split("/"))


def embedding(name: str, source: str, **model_kwargs) -> tuple[dict, tuple]:
  """(places, inner): where model `name` holds `source`'s variables ({module path: globs})
  and the path inside `source`'s variables that holds them (() = all of them)."""
  embeds = embedded_models(name, **model_kwargs)
  if source in embeds:
    return embeds[source], ()
  inner = _whole_backbone(source)
  if inner and inner[0] in embeds:
    return embeds[inner[0]], inner[1]
  if not embeds:
    raise ConversionError(f"model {name!r} embeds no other registered model; convert a checkpoint "
                          f"of {name!r} itself (without source=)")
  raise ConversionError(f"source={source!r}: model {name!r} with kwargs {model_kwargs} embeds "
                        f"{', '.join(sorted(embeds))}, not {source!r}; pass one of those as source= "
                        "(or change the model's backbone kwargs to match the checkpoint)")


def from_embedded_torch(name: str, source: str, state_dict: Mapping[str, Any], *,
                        example_input=None, adapt_channels: bool = False,
                        skip_keys: Collection[str] = (), **model_kwargs) -> dict:
  """The variables of model `name` that a checkpoint of model `source` fills.

  `state_dict` is converted as `source` (its classifier left out, `skip_keys` ignored),
  then each of its variables goes to every place where `name`'s spec says it embeds
  `source` (AMSNet's front and back, a recurrent model's frame encoder, ...), shape
  checked (an RGB stem adapted to the model's input channels with `adapt_channels`).
  Source variables the embedded copy lacks (a stage it does not keep) are ignored;
  every leaf of the embedded copy must be filled, or it is a `ConversionError` naming
  the leaf. Returns only the loaded leaves; the rest of the model (its own head,
  attention, recurrence) is for fresh initialisation (`left_out_patterns`).
  """
  places, inner = embedding(name, source, **model_kwargs)
  try:
    loaded = from_torch(source, state_dict, drop_head=True, skip_keys=skip_keys)
  except (ConversionError, ValueError) as error:
    raise ConversionError(f"the checkpoint given as source={source!r} for model {name!r}: "
                          f"{error}") from None
  template = _flat(model_template(name, example_input, **model_kwargs))
  out, wrong = {}, {}
  for key, array in _flat(loaded).items():
    collection, path = key[0], key[1:]
    if path[:len(inner)] != inner:
      continue
    path = path[len(inner):]
    for prefix, globs in places.items():
      if not any(fnmatch.fnmatchcase(path[0], g) for g in globs):
        continue
      target_key = (collection,) + tuple(prefix.split("/")) + path
      if target_key not in template:
        continue  # a stage or layer the embedded copy does not keep
      fitted = _fit(array, template[target_key], adapt_channels)
      if fitted is None:
        wrong[target_key] = (f"{'/'.join(target_key)}: {source} has {tuple(array.shape)}, "
                             f"model {tuple(template[target_key].shape)}")
      else:
        out[target_key] = fitted
  _check_embedded(name, source, places, template, out, wrong)
  return traverse_util.unflatten_dict(out)


def _fit(array: np.ndarray, target, adapt_channels: bool) -> Optional[np.ndarray]:
  """`array` as `target`'s dtype, its RGB stem adapted if asked; None if the shape differs."""
  if (adapt_channels and array.ndim >= 3 and array.shape[-2] == 3
      and array.shape[:-2] == tuple(target.shape[:-2])
      and array.shape[-1] == target.shape[-1]):
    array = adapt_in_channels(array, target.shape[-2])
  if tuple(array.shape) != tuple(target.shape):
    return None
  return np.asarray(array, dtype=target.dtype)


def _check_embedded(name, source, places, template, out, wrong) -> None:
  """Every leaf under an embedding path must have been filled with its own shape."""
  prefixes = [tuple(p.split("/")) for p in places]
  expected = [k for k in template if any(k[1:1 + len(p)] == p for p in prefixes)]
  missing = sorted("/".join(k) for k in expected if k not in out and k not in wrong)
  if not expected:
    raise ConversionError(f"model {name!r} has no variables under {', '.join(places)} "
                          f"(where it should embed {source!r}); check its kwargs")
  if missing or wrong:
    lines = []
    if missing:
      lines.append(f"leaves of the embedded {source} that the checkpoint does not fill "
                   f"({len(missing)}): " + "; ".join(missing[:20]))
    if wrong:
      lines.append(f"wrong shapes ({len(wrong)}): " + "; ".join(list(wrong.values())[:20]))
    raise ConversionError(f"source={source!r} -> {name!r}:\n  " + "\n  ".join(lines)
                          + f"\nCheck that the checkpoint is a {source} and the model's backbone "
                            "kwargs and input channels (adapt_channels=True for an RGB stem on "
                            "other channels) match it.")


def left_out_patterns(template: Mapping[str, Any], loaded: Mapping[str, Any]) -> list:
  """Glob patterns (`config.init_skip` syntax) naming the leaves of `template` absent
  from `loaded`: 'collection/module/*' for a top-level module left out whole, the leaf's
  own path otherwise. `scripts/convert_weights.py` records them in meta.json."""
  flat, have = _flat(template), set(_flat(loaded))
  groups: dict = {}
  for key in flat:
    groups.setdefault(key[:2], []).append(key)
  patterns = []
  for group, keys in groups.items():
    absent = [k for k in keys if k not in have]
    if absent and len(absent) == len(keys) and all(len(k) > 2 for k in keys):
      patterns.append("/".join(group) + "/*")
    else:
      patterns += ["/".join(k) for k in absent]
  return patterns


def _flat(tree: Mapping[str, Any]) -> dict:
  """{(collection, *path): leaf} of a variable tree."""
  return {(collection,) + path: leaf for collection, sub in tree.items()
          for path, leaf in traverse_util.flatten_dict(dict(sub)).items()}


def head_keys(name: str, example_input, **model_kwargs) -> set:
  """The torch keys of model `name`'s classifier: the variables whose shape follows num_classes.

  Found by comparing the variable shapes of the model built with 2 and with 3 classes,
  so it needs no per-model list.
  """
  spec = registry.get_spec(name)
  shapes = {}
  for num_classes in (2, 3):
    kwargs = {**model_kwargs, "num_classes": num_classes}
    tree = variable_shapes(registry.create(name, **kwargs), example_input, train=False)
    shapes[num_classes] = {(collection, path): leaf.shape for collection, sub in tree.items()
                           for path, leaf in traverse_util.flatten_dict(sub).items()}
  return {spec.torch_key_map(collection, path)
          for (collection, path), shape in shapes[2].items()
          if shapes[3].get((collection, path)) != shape}


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> dict:
  """The state_dict inside a torch checkpoint: `{'state_dict': sd}` and `{'model': sd}`
  wrappers are opened and DataParallel's `module.` prefix is removed."""
  for wrapper in ("state_dict", "model"):
    if isinstance(checkpoint.get(wrapper), Mapping):
      checkpoint = checkpoint[wrapper]
      break
  if not all(isinstance(k, str) for k in checkpoint):
    raise ConversionError("the checkpoint is not a state_dict (its keys are not all strings); "
                          "expected a dict of tensors or {'state_dict': ...} / {'model': ...}")
  if checkpoint and all(k.startswith("module.") for k in checkpoint):
    checkpoint = {k[len("module."):]: v for k, v in checkpoint.items()}
  return dict(checkpoint)


def merge_variables(fresh: Mapping[str, Any], loaded: Mapping[str, Any]) -> dict:
  """`fresh` (from `model.init`) with every leaf of `loaded` put in its place.

  Leaves absent from `loaded` (a dropped head) keep their fresh values. A loaded leaf
  the model does not have, or of another shape, is an error naming it.
  """
  flat = traverse_util.flatten_dict({k: dict(v) for k, v in fresh.items()})
  source = traverse_util.flatten_dict({k: dict(v) for k, v in loaded.items()})
  unknown = [("/".join(k), v.shape) for k, v in source.items()
             if k not in flat or tuple(flat[k].shape) != tuple(v.shape)]
  if unknown:
    raise ConversionError(f"loaded variables that the model lacks or has in another shape: "
                          f"{unknown[:20]}; were they converted for another model or kwargs?")
  flat.update({k: np.asarray(v, flat[k].dtype) for k, v in source.items()})
  return traverse_util.unflatten_dict(flat)


_META_FILE = "meta.json"
_VARIABLES_DIR = "variables"


def save_variables(path: str, variables: Mapping[str, Any], meta: Mapping[str, Any],
                   overwrite: bool = False) -> None:
  """Saves `variables` under directory `path` with orbax, and `meta` as `path/meta.json`.

  `meta` should name the model, its kwargs and the source checkpoint (JSON values only).
  """
  import orbax.checkpoint as ocp

  path = os.path.abspath(path)
  target = os.path.join(path, _VARIABLES_DIR)
  if os.path.exists(target) and not overwrite:
    raise FileExistsError(f"{target} exists; choose another output directory or pass overwrite=True")
  os.makedirs(path, exist_ok=True)
  tree = jax.tree_util.tree_map(np.asarray, {k: dict(v) for k, v in variables.items()})
  ocp.PyTreeCheckpointer().save(target, tree, force=overwrite)
  with open(os.path.join(path, _META_FILE), "w") as f:
    json.dump(dict(meta), f, indent=2, sort_keys=True)


def load_variables(path: str) -> tuple[dict, dict]:
  """Reads what `save_variables` wrote: `(variables, meta)`, variables as numpy arrays."""
  import orbax.checkpoint as ocp

  path = os.path.abspath(path)
  target = os.path.join(path, _VARIABLES_DIR)
  meta_file = os.path.join(path, _META_FILE)
  if not os.path.isdir(target) or not os.path.isfile(meta_file):
    raise FileNotFoundError(f"{path} is not a directory written by blastjax.weights.save_variables "
                            f"(expected {_VARIABLES_DIR}/ and {_META_FILE} in it); create one with "
                            "scripts/convert_weights.py")
  variables = ocp.PyTreeCheckpointer().restore(target)
  with open(meta_file) as f:
    meta = json.load(f)
  return jax.tree_util.tree_map(np.asarray, variables), meta


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
