"""ResNet152 (Table 3: 58.14M, 69.06%).

The paper's setup (cleavage_stage_blastocyst_dataset.txt, Table 2):
single frame (the last), 400x400, batch 32, 500 epochs, AdamW 1e-3:

    python -m blastjax.main --config configs/resnet152.py --workdir runs/resnet152

Smoke run (tiny, synthetic embryos, a few minutes on a laptop CPU):

    python -m blastjax.main --config configs/resnet152.py:smoke --workdir /tmp/resnet152_smoke
"""

from blastjax import config_presets


def get_config(arg=None):
  config = config_presets.single_frame("resnet152")
  return config_presets.finish(config, arg)
