"""ResNet50 (Table 3: 23.56M, 69.43%).

The paper's setup (cleavage_stage_blastocyst_dataset.txt, Table 2) and protocol (half/half
split, no validation carved out of the training half, the last checkpoint tested):
single frame (the last), 400x400, batch 32, 500 epochs, AdamW 1e-3:

    python -m blastjax.main --config configs/resnet50.py --workdir runs/resnet50

Smoke run (tiny, synthetic embryos, a few minutes on a laptop CPU):

    python -m blastjax.main --config configs/resnet50.py:smoke --workdir /tmp/resnet50_smoke

Model selection, which the paper does not describe (10% validation, best-AUC checkpoint):

    python -m blastjax.main --config configs/resnet50.py:select --workdir runs/resnet50_select
"""

from blastjax import config_presets


def get_config(arg=None):
  config = config_presets.single_frame("resnet50")
  return config_presets.benchmark(config, arg)
