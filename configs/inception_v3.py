"""Inception-v3 (Table 3: 21.79M, 72.08%); trains with its auxiliary head (loss weight 0.4).

The paper's setup (cleavage_stage_blastocyst_dataset.txt, Table 2):
single frame (the last), 400x400, batch 32, 500 epochs, AdamW 1e-3:

    python -m blastjax.main --config configs/inception_v3.py --workdir runs/inception_v3

Smoke run (tiny, synthetic embryos, a few minutes on a laptop CPU):

    python -m blastjax.main --config configs/inception_v3.py:smoke --workdir /tmp/inception_v3_smoke
"""

from configs import common


def get_config(arg=None):
  config = common.single_frame("inception_v3")
  return common.finish(config, arg, smoke_image_size=75)
