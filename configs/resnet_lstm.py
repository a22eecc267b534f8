"""ResNet-LSTM (Table 4: 22.19M, 73.96%): per-frame ResNet features, LSTM over frames.

The paper's setup (cleavage_stage_blastocyst_dataset.txt, Table 2):
32 uniformly sampled frames, 224x224, batch 16, 100 epochs, AdamW 1e-3:

    python -m blastjax.main --config configs/resnet_lstm.py --workdir runs/resnet_lstm

Smoke run (tiny, synthetic embryos, a few minutes on a laptop CPU):

    python -m blastjax.main --config configs/resnet_lstm.py:smoke --workdir /tmp/resnet_lstm_smoke
"""

from blastjax import config_presets


def get_config(arg=None):
  config = config_presets.multi_frame("resnet_lstm")
  return config_presets.finish(config, arg)
