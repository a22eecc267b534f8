"""ViT-B/16 (Table 3: 85.40M, 70.57%): torchvision's 224x224 model (a 14x14 grid of position
embeddings); on the 400x400 input the model resamples them to the 25x25 patch grid on the
fly, bicubic like torchvision's interpolate_embeddings (blastjax.models.vit).

The paper's setup (cleavage_stage_blastocyst_dataset.txt, Table 2) and protocol (half/half
split, no validation carved out of the training half, the last checkpoint tested):
single frame (the last), 400x400, batch 32, 500 epochs, AdamW 1e-3:

    python -m blastjax.main --config configs/vit_b_16.py --workdir runs/vit_b_16

Smoke run (tiny, synthetic embryos, a few minutes on a laptop CPU):

    python -m blastjax.main --config configs/vit_b_16.py:smoke --workdir /tmp/vit_b_16_smoke

Model selection, which the paper does not describe (10% validation, best-AUC checkpoint):

    python -m blastjax.main --config configs/vit_b_16.py:select --workdir runs/vit_b_16_select
"""

from blastjax import config_presets


def get_config(arg=None):
  config = config_presets.single_frame("vit_b_16")
  return config_presets.benchmark(config, arg, smoke_image_size=32)
