"""MFNet-3D (Table 4: 7.69M, 73.96%).

The paper's setup (cleavage_stage_blastocyst_dataset.txt, Table 2) and protocol (half/half
split, no validation carved out of the training half, the last checkpoint tested):
32 uniformly sampled frames, 224x224, batch 16, 100 epochs, AdamW 1e-3:

    python -m blastjax.main --config configs/mfnet.py --workdir runs/mfnet

Smoke run (tiny, synthetic embryos, a few minutes on a laptop CPU):

    python -m blastjax.main --config configs/mfnet.py:smoke --workdir /tmp/mfnet_smoke

Model selection, which the paper does not describe (10% validation, best-AUC checkpoint):

    python -m blastjax.main --config configs/mfnet.py:select --workdir runs/mfnet_select
"""

from blastjax import config_presets


def get_config(arg=None):
  config = config_presets.multi_frame("mfnet3d")
  return config_presets.benchmark(config, arg)
