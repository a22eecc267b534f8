"""MobileNetV3-Large (Table 3: 4.20M, 66.79%).

The paper's setup (cleavage_stage_blastocyst_dataset.txt, Table 2):
single frame (the last), 400x400, batch 32, 500 epochs, AdamW 1e-3:

    python -m blastjax.main --config configs/mobilenet_v3.py --workdir runs/mobilenet_v3

Smoke run (tiny, synthetic embryos, a few minutes on a laptop CPU):

    python -m blastjax.main --config configs/mobilenet_v3.py:smoke --workdir /tmp/mobilenet_v3_smoke
"""

from blastjax import config_presets


def get_config(arg=None):
  config = config_presets.single_frame("mobilenet_v3_large")
  return config_presets.finish(config, arg)
