"""A run's initial variables: a fresh init of the model, with config.init_from's
converted weights (blastjax.weights) merged in.

The merge is strict: every leaf of the model must come from the checkpoint, with its
shape, unless it matches one of the glob patterns of `config.init_skip` or of the
checkpoint's `meta.json` (`init_skip`: what the conversion left out on purpose, e.g.
the dropped head or everything outside an embedded backbone); those keep their fresh
initialisation. A checkpoint leaf the model lacks is an error too. Patterns are
`fnmatch` globs over '/'-joined paths that start with the collection
('params/fc/*', 'batch_stats/mfs/*'); `*` also matches '/'.
"""

from __future__ import annotations

import fnmatch
import logging
from typing import Sequence

import jax
import numpy as np
from flax import traverse_util

from blastjax import weights

logger = logging.getLogger(__name__)


class InitFromError(ValueError):
  """Converted weights that do not fill the model: unfilled, mis-shaped or unknown leaves."""


def init_variables(config, model, spec, sample_batch: dict) -> dict:
  """Fresh variables (host numpy) from the first row of a [devices, per_device, ...] batch,
  with config.init_from's converted weights merged in."""
  x, mask = spec.inputs({k: v[0, :1] for k, v in sample_batch.items()})
  key = jax.random.PRNGKey(config.seed)
  # Eager init: compiling the whole init graph of a large 3D network costs minutes on CPU.
  variables = model.init({"params": key, "dropout": key}, x, train=False, mask=mask)
  variables = jax.tree.map(np.asarray, dict(variables))
  return merge_init_from(config, variables) if config.init_from else variables


def matches(path: str, patterns: Sequence[str]) -> bool:
  return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def _flat(tree) -> dict:
  flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, dict(tree)))
  return {"/".join(map(str, k)): (k, v) for k, v in flat.items()}


def merge_pretrained(variables: dict, loaded: dict, skip: Sequence[str] = ()) -> tuple[dict, int, list]:
  """`variables` with every leaf taken from `loaded`; returns (merged, loaded count, kept fresh).

  Leaves whose '/'-joined path matches a pattern of `skip` keep their fresh value (and
  are listed in `kept fresh`), whatever `loaded` holds for them. Any other leaf that
  `loaded` lacks or holds in another shape, and any leaf of `loaded` the model lacks,
  is an `InitFromError` naming the leaves.
  """
  fresh, source = _flat(variables), _flat(loaded)
  merged, kept, unfilled, wrong = {}, [], [], []
  for path, (key, value) in fresh.items():
    other = source.get(path, (None, None))[1]
    if matches(path, skip):
      kept.append(path)
    elif other is None:
      unfilled.append(path)
    elif other.shape != value.shape:
      wrong.append(f"{path}: checkpoint {other.shape}, model {value.shape}")
    else:
      value = other.astype(value.dtype)
    merged[key] = value
  unknown = [p for p in source if p not in fresh and not matches(p, skip)]
  if unfilled or wrong or unknown:
    raise InitFromError(_merge_problems(sorted(unfilled), sorted(wrong), sorted(unknown)))
  return traverse_util.unflatten_dict(merged), len(fresh) - len(kept), kept


def _merge_problems(unfilled: list, wrong: list, unknown: list) -> str:
  lines = []
  for title, items in (("model leaves the checkpoint does not fill", unfilled),
                       ("leaves of another shape", wrong),
                       ("checkpoint leaves the model lacks", unknown)):
    if items:
      lines.append(f"{title} ({len(items)}): " + "; ".join(items[:12])
                   + (" ..." if len(items) > 12 else ""))
  return ("\n  ".join(lines) + "\nLeaves meant to start fresh (a new head, layers the checkpoint "
          "has not got) are named by glob patterns in config.init_skip, e.g. "
          "('params/fc/*',); anything else means the checkpoint was converted for another "
          "model or kwargs (scripts/convert_weights.py --model M [--source S]).")


def merge_init_from(config, variables: dict) -> dict:
  """`variables` with config.init_from's converted weights merged in (strictly, see above)."""
  loaded, meta = weights.load_variables(config.init_from)
  recorded = tuple(meta.get("init_skip", ()))
  requested = tuple(config.get("init_skip", ()) or ())
  try:
    variables, copied, kept = merge_pretrained(variables, loaded, recorded + requested)
  except InitFromError as error:
    converted = f" (converted for model {meta['model']!r})" if meta.get("model") else ""
    raise InitFromError(f"config.init_from={config.init_from!r}{converted} does not fit model "
                        f"{config.model!r}:\n  {error}") from None
  unused = [p for p in recorded + requested if not any(fnmatch.fnmatchcase(k, p) for k in kept)]
  logger.info("init_from %s: %d leaves loaded, %d kept fresh; skipped %s (meta.json), %s "
              "(config.init_skip)", config.init_from, copied, len(kept),
              list(recorded) or "nothing", list(requested) or "nothing")
  if unused:
    logger.warning("init_from: init_skip patterns %s match no leaf of model %r", unused, config.model)
  return variables
