"""AMSNet (amsnet_early_blastocyst_prediction.txt): multi-focal-plane ResNet50 with
temporal channel shift, predicting at every time step.

Its paper's sampling: one random frame per 6-hour segment (T = 28 over 168 h, padded
steps masked out of the loss), every focal plane as its own axis, gray 224x224. The
prediction of an embryo is the last valid step's; early prediction evaluates the model
on the first X hours only. Optimiser as the other baselines (AdamW 1e-3, batch 16).

    python -m blastjax.main --config configs/amsnet.py --workdir runs/amsnet
    python -m blastjax.main --config configs/amsnet.py:smoke --workdir /tmp/amsnet_smoke
"""

from blastjax import config_presets


def get_config(arg=None):
  config = config_presets.multi_frame("amsnet", sampling="segments", segment_hours=6.0, num_frames=28,
                                      focal_planes="axis", rgb=False, normalization="kinetics")
  return config_presets.finish(config, arg, smoke_frames=8, segment_hours=10.0)
