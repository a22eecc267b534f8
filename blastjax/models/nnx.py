"""Every registered model as a Flax NNX module: `create_nnx(name, example_input, rngs)`.

The linen module of `create(name, ...)` is wrapped by `flax.nnx.bridge.ToNNX`, so the
network, its parameter names and its numbers are the linen model's; NNX owns the state:
`nnx.Param` (linen `params`) and `nnx.BatchStat` (linen `batch_stats`), under the
wrapper's `linen` attribute (`nnx.state(model)['linen']['conv1']['kernel']`).

Train and eval mode follow NNX: `model.train()` / `model.eval()` set the wrapper's
`deterministic` and `use_running_average`, which map to the linen model's one `train`
flag. In train mode a call updates the BatchStat variables in place, as linen's
`apply(..., mutable=['batch_stats'])` returns them, and draws a fresh dropout key from
the wrapper's `dropout` stream, so two calls drop different units; in eval mode the
running statistics are read and dropout is off. A model starts in train mode, like
`nnx.Dropout` and `nnx.BatchNorm`. `train=` on a call overrides the mode for that call.

`variables=` (a linen `{'params': ..., 'batch_stats': ...}` tree, e.g. a blastjax
checkpoint's or `blastjax.weights.from_torch`'s) builds the NNX model with those weights,
checked against the model's own variable shapes; `model.linen_variables()` goes back.
See docs/nnx.md.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import flax.linen as nn
import jax
from flax import nnx
from flax.core import unfreeze
from flax.nnx.bridge import variables as bridge_variables
from flax.traverse_util import flatten_dict

from blastjax.models.registry import create, get_spec


def _key(rngs: nnx.Rngs, stream: str):
  """A key of `stream`, or of the `default` stream; None when `rngs` has neither."""
  try:
    return getattr(rngs, stream)()
  except AttributeError:
    return None


def _streams(rngs: Union[nnx.Rngs, int]) -> nnx.Rngs:
  """`params` and `dropout` streams, as linen's init and a train-mode apply take.

  A caller's `nnx.Rngs(0)` has only a `default` stream, and one with only `params` has
  no dropout stream: the dropout key is then derived from the params key.
  """
  if isinstance(rngs, int):
    rngs = nnx.Rngs(rngs)
  if not isinstance(rngs, nnx.Rngs):
    raise TypeError(f"create_nnx: rngs={rngs!r}; expected flax.nnx.Rngs (e.g. nnx.Rngs(0)) "
                    "or an int seed")
  params = _key(rngs, "params")
  if params is None:
    raise ValueError("create_nnx: rngs has neither a 'params' nor a 'default' stream; "
                     "pass nnx.Rngs(seed) or nnx.Rngs(params=..., dropout=...)")
  dropout = _key(rngs, "dropout")
  if dropout is None:
    dropout = jax.random.fold_in(params, 1)
  return nnx.Rngs(params=params, dropout=dropout)


class LinenModel(nnx.Module):
  """A registered blastjax model as an NNX module (see the module docstring).

  Call it as the linen model is applied: `model(x)` or `model(x, mask)` -> logits.
  """

  def __init__(self, module: nn.Module, rngs: nnx.Rngs, name: str = ""):
    self.name = name or type(module).__name__
    self.linen = nnx.bridge.ToNNX(module, rngs=rngs)
    self.deterministic = False
    self.use_running_average = False

  def training(self) -> bool:
    """The linen `train` flag of the current mode."""
    if self.deterministic != self.use_running_average:
      raise ValueError(
          f"{self.name}: deterministic={self.deterministic} but use_running_average="
          f"{self.use_running_average}; the linen model has one `train` flag for dropout and "
          "BatchNorm together: call model.train() or model.eval(), or pass train= to the call")
    return not self.deterministic

  def __call__(self, x, mask=None, *, train: Optional[bool] = None):
    train = self.training() if train is None else bool(train)
    if train:
      # ToNNX writes the returned batch_stats back into the BatchStat variables.
      return self.linen(x, train=True, mask=mask, mutable=["batch_stats"])
    return self.linen(x, train=False, mask=mask)

  def linen_variables(self) -> dict:
    """The state as linen variables {'params': ..., 'batch_stats': ...} (plain arrays)."""
    attrs = {k: v for k, v in vars(self.linen).items()
             if not k.startswith(("to_nnx__", "_pytree__"))}
    return bridge_variables.nnx_attrs_to_linen_vars(attrs)


def _check_variables(name: str, variables, expected) -> None:
  """Raises naming every missing, unexpected or mis-shaped variable of `variables`."""
  given = {"/".join(k): v for k, v in flatten_dict(unfreeze(dict(variables))).items()}
  wanted = {"/".join(k): v for k, v in flatten_dict(unfreeze(dict(expected))).items()}
  missing = sorted(set(wanted) - set(given))
  extra = sorted(set(given) - set(wanted))
  shapes = sorted(f"{k}: {tuple(given[k].shape)} (model: {tuple(wanted[k].shape)})"
                  for k in set(given) & set(wanted)
                  if tuple(given[k].shape) != tuple(wanted[k].shape))
  problems = [f"{label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
              for label, items in (("missing", missing), ("unexpected", extra),
                                   ("wrong shape", shapes)) if items]
  if problems:
    raise ValueError(f"create_nnx({name!r}, variables=...): the variables do not fit the model "
                     f"built with these kwargs and this example input; {'; '.join(problems)}. "
                     "Pass the linen variables of the same model, num_classes and kwargs.")


def _load(wrapper: LinenModel, variables) -> None:
  """Sets the ToNNX state from linen variables, as ToNNX itself stores apply's updates."""
  for attr, value in bridge_variables.linen_vars_to_nnx_attrs(unfreeze(dict(variables))).items():
    setattr(wrapper.linen, attr, nnx.data(value))


def create_nnx(name: str, example_input, rngs: Union[nnx.Rngs, int], num_classes: int = 2, *,
               mask=None, variables: Optional[Any] = None, **kwargs: Any) -> LinenModel:
  """The registered model `name` as an NNX module (`LinenModel`), initialised.

  example_input: one batch of the model's input (`[B, H, W, C]` images, `[B, T, H, W, C]`
    videos ...; see `get_spec(name).input_kind`), with `mask` [B, T] for sequence models
    (optional). Only its shape and dtype matter; a tiny batch is enough.
  rngs: `nnx.Rngs` (its `params` or `default` stream initialises, `dropout` drives dropout)
    or an int seed.
  variables: linen variables of the same model to start from (no random init then).
  kwargs: the linen model's own (`dtype`, `param_dtype`, `dropout`, ...), as for `create`.
  """
  get_spec(name)  # the known-names error for an unknown model
  module = create(name, num_classes=num_classes, **kwargs)
  rngs = _streams(rngs)
  model = LinenModel(module, rngs, name=name)
  if variables is None:
    nnx.bridge.lazy_init(model.linen, example_input, train=False, mask=mask)
    return model
  expected = jax.eval_shape(lambda: module.init(jax.random.key(0), example_input, train=False,
                                                mask=mask))
  _check_variables(name, variables, expected)
  _load(model, variables)
  return model


__all__ = ["LinenModel", "create_nnx"]
