"""ResNet18 (Table 3: 11.68M parameters, 70.94% accuracy).

The paper's setup (cleavage_stage_blastocyst_dataset.txt, Table 2) and protocol (half/half
split, no validation carved out of the training half, the last checkpoint tested):
single frame (the last), 400x400, batch 32, 500 epochs, AdamW 1e-3:

    python -m blastjax.main --config configs/resnet18.py --workdir runs/resnet18

Smoke run (tiny, synthetic embryos, a few minutes on a laptop CPU):

    python -m blastjax.main --config configs/resnet18.py:smoke --workdir /tmp/resnet18_smoke

Model selection, which the paper does not describe (10% validation, best-AUC checkpoint):

    python -m blastjax.main --config configs/resnet18.py:select --workdir runs/resnet18_select
"""

from blastjax import config_presets


def get_config(arg=None):
  config = config_presets.single_frame("resnet18")
  return config_presets.benchmark(config, arg)
