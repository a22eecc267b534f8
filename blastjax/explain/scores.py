"""What is explained: one number per example, from the model's output contract.

Every method here differentiates the *P(blast) logit* by default: the one logit of a
one-output head, or z_blast - z_other of a two-class softmax (the log-odds of the
softmax's class 1, the same number). Logits do not saturate as probabilities do, so
gradients stay informative for confident predictions. `score='probability'` explains
P(blast) itself (`spec.probabilities`). Calibration (a temperature) is not applied: it
divides the logit by a constant and changes no ranking of frames or pixels.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from blastjax.models.registry import split_output

SCORES = ("logit", "probability")


def blast_score(spec, out, mask, score: str = "logit"):
  """[B] float32: the P(blast) logit (or probability) of a model's eval-mode output."""
  if score == "probability":
    return spec.probabilities(out, mask)
  if score != "logit":
    raise ValueError(f"score={score!r}; expected one of {SCORES}")
  logits = spec.final_logits(split_output(out)[0], mask if spec.per_step else None).astype(jnp.float32)
  if logits.shape[-1] == 1:
    return logits[:, 0]
  if logits.shape[-1] == 2:
    return logits[:, 1] - logits[:, 0]
  raise ValueError(f"model {spec.name!r} returns {logits.shape[-1]} outputs; explaining P(blast) needs 1 "
                   "(sigmoid) or 2 (softmax) -- was it built with num_classes=0 (features)?")


def apply_model(model, variables: dict, x, mask, **kwargs):
  """The model in evaluation mode (image models take no mask)."""
  return model.apply(variables, x, train=False, mask=mask, **kwargs)


def score_fn(model, variables: dict, spec, score: str = "logit") -> Callable:
  """f(x, mask) -> [B] scores of the model with `variables`."""

  def f(x, mask: Optional[jax.Array] = None):
    return blast_score(spec, apply_model(model, variables, x, mask), mask, score)

  return f


def eval_variables(state: dict) -> dict:
  """{'params', 'batch_stats'?} of a train state or a variables dict (no empty collections)."""
  variables = {"params": state["params"]}
  if state.get("batch_stats"):
    variables["batch_stats"] = state["batch_stats"]
  return variables
