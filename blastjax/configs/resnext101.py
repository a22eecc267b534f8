"""ResNeXt101 32x8d (Table 3: 86.74M, 66.42%).

The paper's setup (cleavage_stage_blastocyst_dataset.txt, Table 2) and protocol (half/half
split, no validation carved out of the training half, the last checkpoint tested):
single frame (the last), 400x400, batch 32, 500 epochs, AdamW 1e-3:

    python -m blastjax.main --config configs/resnext101.py --workdir runs/resnext101

Smoke run (tiny, synthetic embryos, a few minutes on a laptop CPU):

    python -m blastjax.main --config configs/resnext101.py:smoke --workdir /tmp/resnext101_smoke

Model selection, which the paper does not describe (10% validation, best-AUC checkpoint):

    python -m blastjax.main --config configs/resnext101.py:select --workdir runs/resnext101_select
"""

from blastjax import config_presets


def get_config(arg=None):
  config = config_presets.single_frame("resnext101_32x8d")
  return config_presets.benchmark(config, arg)
