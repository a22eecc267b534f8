"""Flax model zoo. `create(name, num_classes=2, **kw)` and `list_models()`.

Every module in this package registers its models on import (see `registry.py`);
the modules are discovered here so that adding a model file is enough to register it.
Importing this package needs only jax, flax and numpy.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from blastjax.models.registry import ModelSpec, create, get_spec, list_models, register, unregister

for _module in _pkgutil.iter_modules(__path__):
  if _module.name not in ("registry", "nnx") and not _module.name.startswith("_"):
    _importlib.import_module(f"{__name__}.{_module.name}")

_NNX_NAMES = ("LinenModel", "create_nnx")


def __getattr__(name):
  """`create_nnx` and `LinenModel` (blastjax.models.nnx), imported on first use: flax.nnx
  pulls in optax, which a project borrowing a linen model does not need."""
  if name in _NNX_NAMES:
    from blastjax.models import nnx
    return getattr(nnx, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LinenModel", "ModelSpec", "create", "create_nnx", "get_spec", "list_models", "register", "unregister"]
