"""ResNet152 (Table 3: 58.14M, 69.06%).

The paper's setup (cleavage_stage_blastocyst_dataset.txt, Table 2) and protocol (half/half
split, no validation carved out of the training half, the last checkpoint tested):
single frame (the last), 400x400, batch 32, 500 epochs, AdamW 1e-3:

    python -m blastjax.main --config configs/resnet152.py --workdir runs/resnet152

Smoke run (tiny, synthetic embryos, a few minutes on a laptop CPU):

    python -m blastjax.main --config configs/resnet152.py:smoke --workdir /tmp/resnet152_smoke

Model selection, which the paper does not describe (10% validation, best-AUC checkpoint):

    python -m blastjax.main --config configs/resnet152.py:select --workdir runs/resnet152_select
"""

from blastjax import config_presets


def get_config(arg=None):
  config = config_presets.single_frame("resnet152")
  return config_presets.benchmark(config, arg)
