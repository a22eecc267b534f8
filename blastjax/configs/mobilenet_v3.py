"""MobileNetV3-Large (Table 3: 4.20M, 66.79%).

The paper's setup (cleavage_stage_blastocyst_dataset.txt, Table 2) and protocol (half/half
split, no validation carved out of the training half, the last checkpoint tested):
single frame (the last), 400x400, batch 32, 500 epochs, AdamW 1e-3:

    python -m blastjax.main --config configs/mobilenet_v3.py --workdir runs/mobilenet_v3

Smoke run (tiny, synthetic embryos, a few minutes on a laptop CPU):

    python -m blastjax.main --config configs/mobilenet_v3.py:smoke --workdir /tmp/mobilenet_v3_smoke

Model selection, which the paper does not describe (10% validation, best-AUC checkpoint):

    python -m blastjax.main --config configs/mobilenet_v3.py:select --workdir runs/mobilenet_v3_select
"""

from blastjax import config_presets


def get_config(arg=None):
  config = config_presets.single_frame("mobilenet_v3_large")
  return config_presets.benchmark(config, arg)
