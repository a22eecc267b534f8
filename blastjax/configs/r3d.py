"""ResNet3D-18 (Table 4: 33.15M, 73.96%).

The paper's setup (cleavage_stage_blastocyst_dataset.txt, Table 2) and protocol (half/half
split, no validation carved out of the training half, the last checkpoint tested):
32 uniformly sampled frames, 224x224, batch 16, 100 epochs, AdamW 1e-3:

    python -m blastjax.main --config configs/r3d.py --workdir runs/r3d

Smoke run (tiny, synthetic embryos, a few minutes on a laptop CPU):

    python -m blastjax.main --config configs/r3d.py:smoke --workdir /tmp/r3d_smoke

Model selection, which the paper does not describe (10% validation, best-AUC checkpoint):

    python -m blastjax.main --config configs/r3d.py:select --workdir runs/r3d_select
"""

from blastjax import config_presets


def get_config(arg=None):
  config = config_presets.multi_frame("r3d_18", normalization="kinetics")
  return config_presets.benchmark(config, arg)
