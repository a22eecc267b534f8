"""Which frames (hours) and which pixels drove a model's P(blast): docs/explain.md.

    from blastjax import explain
    cam = explain.grad_cam(model, variables, spec, x, mask)          # conv nets, time kept
    ig = explain.integrated_gradients(model, variables, spec, x, mask)  # every model
    maps = explain.attention_rollout(vit, variables, x)              # ViTs

`x, mask = spec.inputs(batch)` of a loader's batch; `variables` = {'params',
'batch_stats'}. The command line: `python -m blastjax.predict ... --explain`.
"""

from blastjax.explain.gradcam import GradCam, default_layer, grad_cam, list_layers
from blastjax.explain.integrated import IntegratedGradients, frame_shares, integrated_gradients, make_baseline
from blastjax.explain.rollout import attention_maps, attention_rollout, rollout_matrix
from blastjax.explain.sanity import (randomisation_check, randomised_variables, rank_correlation,
                                     saliency_in_mask, synthetic_embryo_masks)
from blastjax.explain.scores import blast_score, eval_variables, score_fn

__all__ = ["GradCam", "IntegratedGradients", "attention_maps", "attention_rollout", "blast_score",
           "default_layer", "eval_variables", "frame_shares", "grad_cam", "integrated_gradients",
           "list_layers", "make_baseline", "randomisation_check", "randomised_variables",
           "rank_correlation", "rollout_matrix", "saliency_in_mask", "score_fn", "synthetic_embryo_masks"]
