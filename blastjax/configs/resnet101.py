"""ResNet101 (Table 3: 42.50M, 67.92%).

The paper's setup (cleavage_stage_blastocyst_dataset.txt, Table 2) and protocol (half/half
split, no validation carved out of the training half, the last checkpoint tested):
single frame (the last), 400x400, batch 32, 500 epochs, AdamW 1e-3:

    python -m blastjax.main --config configs/resnet101.py --workdir runs/resnet101

Smoke run (tiny, synthetic embryos, a few minutes on a laptop CPU):

    python -m blastjax.main --config configs/resnet101.py:smoke --workdir /tmp/resnet101_smoke

Model selection, which the paper does not describe (10% validation, best-AUC checkpoint):

    python -m blastjax.main --config configs/resnet101.py:select --workdir runs/resnet101_select
"""

from blastjax import config_presets


def get_config(arg=None):
  config = config_presets.single_frame("resnet101")
  return config_presets.benchmark(config, arg)
