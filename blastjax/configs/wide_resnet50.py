"""Wide-ResNet50-2 (Table 3: 66.83M, 67.17%).

The paper's setup (cleavage_stage_blastocyst_dataset.txt, Table 2) and protocol (half/half
split, no validation carved out of the training half, the last checkpoint tested):
single frame (the last), 400x400, batch 32, 500 epochs, AdamW 1e-3:

    python -m blastjax.main --config configs/wide_resnet50.py --workdir runs/wide_resnet50

Smoke run (tiny, synthetic embryos, a few minutes on a laptop CPU):

    python -m blastjax.main --config configs/wide_resnet50.py:smoke --workdir /tmp/wide_resnet50_smoke

Model selection, which the paper does not describe (10% validation, best-AUC checkpoint):

    python -m blastjax.main --config configs/wide_resnet50.py:select --workdir runs/wide_resnet50_select
"""

from blastjax import config_presets


def get_config(arg=None):
  config = config_presets.single_frame("wide_resnet50_2")
  return config_presets.benchmark(config, arg)
