"""ResNet-GRU (Table 4: 19.56M, 75.47%).

The paper's setup (cleavage_stage_blastocyst_dataset.txt, Table 2):
32 uniformly sampled frames, 224x224, batch 16, 100 epochs, AdamW 1e-3:

    python -m blastjax.main --config configs/resnet_gru.py --workdir runs/resnet_gru

Smoke run (tiny, synthetic embryos, a few minutes on a laptop CPU):

    python -m blastjax.main --config configs/resnet_gru.py:smoke --workdir /tmp/resnet_gru_smoke
"""

from blastjax import config_presets


def get_config(arg=None):
  config = config_presets.multi_frame("resnet_gru")
  return config_presets.finish(config, arg)
