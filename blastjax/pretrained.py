"""A run's initial variables: a fresh init of the model, with config.init_from's
converted weights (blastjax.weights) merged in."""

from __future__ import annotations

import logging

import jax
import numpy as np
from flax import traverse_util

from blastjax import weights

logger = logging.getLogger(__name__)


def init_variables(config, model, spec, sample_batch: dict) -> dict:
  """Fresh variables (host numpy) from the first row of a [devices, per_device, ...] batch,
  with config.init_from's converted weights merged in."""
  x, mask = spec.inputs({k: v[0, :1] for k, v in sample_batch.items()})
  key = jax.random.PRNGKey(config.seed)
  # Eager init: compiling the whole init graph of a large 3D network costs minutes on CPU.
  variables = model.init({"params": key, "dropout": key}, x, train=False, mask=mask)
  variables = jax.tree.map(np.asarray, dict(variables))
  return merge_init_from(config, variables) if config.init_from else variables


def merge_pretrained(variables: dict, loaded: dict) -> tuple[dict, int, list]:
  """Copies every loaded leaf whose path and shape match; returns (merged, count, skipped).

  Converted weights may lack (or have another shape of) the classifier head: those
  leaves keep their fresh initialisation and are listed in `skipped`.
  """
  flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, variables))
  source = traverse_util.flatten_dict(jax.tree.map(np.asarray, dict(loaded)))
  copied, skipped = 0, []
  for key, value in flat.items():
    other = source.get(key)
    if other is not None and other.shape == value.shape:
      flat[key] = other.astype(value.dtype)
      copied += 1
    else:
      skipped.append("/".join(map(str, key)))
  return traverse_util.unflatten_dict(flat), copied, skipped


def merge_init_from(config, variables: dict) -> dict:
  """`variables` with config.init_from's converted weights merged in."""
  loaded, _ = weights.load_variables(config.init_from)
  variables, copied, skipped = merge_pretrained(variables, loaded)
  if copied == 0:
    raise ValueError(f"config.init_from={config.init_from!r}: no variable matches model {config.model!r} "
                     "(converted for another model?)")
  logger.info("init_from: %d variables loaded, %d kept fresh (%s%s)", copied, len(skipped),
              ", ".join(skipped[:4]), " ..." if len(skipped) > 4 else "")
  return variables
