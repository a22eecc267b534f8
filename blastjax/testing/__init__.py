"""Helpers for verifying ports against references: golden fixtures (`golden`) and
parameter counts."""

from __future__ import annotations

from typing import Mapping

import numpy as np


def param_count(variables: Mapping) -> int:
  """Number of parameters in variables['params'] (arrays or ShapeDtypeStructs)."""
  import jax
  return sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(variables["params"]))
