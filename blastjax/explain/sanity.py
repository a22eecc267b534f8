"""Sanity checks of saliency maps that can fail, with numbers rather than pictures.

- `saliency_in_mask`: the share of a map's mass inside the embryo, against the share a
  map blind to the image gets (the mask's area share: a constant map scores exactly it,
  a random one about it). On synthetic data the simulator knows where the embryo is
  (`synthetic_embryo_masks`).
- `randomisation_check` (Adebayo et al. 2018, model-parameter randomisation): the
  saliency of the trained model against that of the same architecture randomly
  initialised. A method that reflects what the model learned gives maps that differ
  (Spearman rank correlation below the threshold); one that only echoes the input
  (edges, brightness) gives nearly the same map for both and fails.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from blastjax.data import synthetic


def saliency_in_mask(saliency, mask) -> dict:
  """{'share', 'baseline', 'ratio'}: the share of |saliency| inside `mask` (same shape,
  or broadcastable), the mask's area share, and their ratio (1 = no better than blind)."""
  saliency = np.abs(np.asarray(saliency, np.float64))
  mask = np.broadcast_to(np.asarray(mask, bool), saliency.shape)
  total = saliency.sum()
  if not np.isfinite(total) or total <= 0:
    raise ValueError("the saliency map is zero (or not finite) everywhere: nothing to measure")
  share = float(saliency[mask].sum() / total)
  baseline = float(mask.mean())
  return {"share": share, "baseline": baseline, "ratio": share / baseline if baseline else float("nan")}


def _ranks(values: np.ndarray) -> np.ndarray:
  """Ranks with ties averaged (scipy.stats.rankdata's 'average')."""
  order = np.argsort(values, kind="mergesort")
  sorted_values = values[order]
  starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
  ends = np.r_[starts[1:], values.size]
  mean_rank = (starts + ends - 1) / 2.0
  ranks = np.empty(values.size)
  ranks[order] = np.repeat(mean_rank, ends - starts)
  return ranks


def rank_correlation(a, b) -> float:
  """Spearman's rank correlation of two maps (flattened); NaN when one is constant."""
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  if a.size != b.size:
    raise ValueError(f"maps of {a.size} and {b.size} values: compare maps of the same shape")
  ra, rb = _ranks(a) - (a.size - 1) / 2.0, _ranks(b) - (b.size - 1) / 2.0
  denominator = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
  return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def randomised_variables(model, x, mask=None, seed: int = 1) -> dict:
  """Fresh variables of `model` (its own initialisers): the randomised model."""
  init = model.init(jax.random.PRNGKey(seed), x, train=False, mask=mask)
  return {k: v for k, v in init.items() if k in ("params", "batch_stats")}


def randomisation_check(saliency: Callable, trained: dict, randomised: dict, threshold: float = 0.5) -> dict:
  """{'rank_correlation', 'threshold', 'passes'}: `saliency(variables) -> map` for the
  trained and randomised variables; passes when |rho| < threshold (a NaN rho -- a
  constant map -- fails)."""
  rho = rank_correlation(saliency(trained), saliency(randomised))
  return {"rank_correlation": rho, "threshold": threshold, "passes": bool(abs(rho) < threshold)}


# The cells' region inside the zona (blastjax.data.synthetic.render_sharp: 0.36 of the
# frame side against the zona's 0.42): `radius_scale` for a mask of the cells only.
CELLS_RADIUS_SCALE = 0.36 / synthetic.ZONA_RADIUS


def synthetic_embryo_masks(embryo_id: str, hours, sim_config: synthetic.SimulatorConfig, image_size: int,
                           center_scale: float = 1.0, radius_scale: float = 1.0) -> np.ndarray:
  """[T, image_size, image_size] bool: where the simulated embryo `embryo_id` is in each
  frame at `hours`, in the model's input (the evaluation view: the centred square crop
  at `center_scale` of the frame, resized to image_size). The disc is the zona's outline
  (`synthetic.embryo_disc`), times `radius_scale` (CELLS_RADIUS_SCALE: the cells)."""
  plans = {p.embryo_id: p for p in synthetic.plan_embryos(sim_config)}
  if embryo_id not in plans:
    raise ValueError(f"embryo {embryo_id!r} is not in the simulated dataset of {sim_config}; pass the "
                     "SimulatorConfig the dataset was built with")
  size = sim_config.image_size
  side = center_scale * size
  offset = (size - side) / 2.0
  centres = offset + (np.arange(image_size) + 0.5) * side / image_size  # source coordinates
  masks = []
  for h in np.asarray(hours, np.float64).reshape(-1):
    row, col, radius = synthetic.embryo_disc(plans[embryo_id], float(h), size)
    dist = np.hypot(centres[:, None] - (row + 0.5), centres[None, :] - (col + 0.5))
    masks.append(dist <= radius * radius_scale)
  return np.stack(masks)
