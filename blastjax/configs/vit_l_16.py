"""ViT-L/16 (Table 3: 302.78M, 69.81%).

The paper's setup (cleavage_stage_blastocyst_dataset.txt, Table 2) and protocol (half/half
split, no validation carved out of the training half, the last checkpoint tested):
single frame (the last), 400x400, batch 32, 500 epochs, AdamW 1e-3:

    python -m blastjax.main --config configs/vit_l_16.py --workdir runs/vit_l_16

Smoke run (tiny, synthetic embryos, a few minutes on a laptop CPU):

    python -m blastjax.main --config configs/vit_l_16.py:smoke --workdir /tmp/vit_l_16_smoke

Model selection, which the paper does not describe (10% validation, best-AUC checkpoint):

    python -m blastjax.main --config configs/vit_l_16.py:select --workdir runs/vit_l_16_select
"""

from blastjax import config_presets


def get_config(arg=None):
  config = config_presets.single_frame("vit_l_16")
  return config_presets.benchmark(config, arg, smoke_image_size=32)
