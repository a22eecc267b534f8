"""I3D (Table 4: 25.84M, 72.08%).

The paper's setup (cleavage_stage_blastocyst_dataset.txt, Table 2):
32 uniformly sampled frames, 224x224, batch 16, 100 epochs, AdamW 1e-3:

    python -m blastjax.main --config configs/i3d.py --workdir runs/i3d

Smoke run (tiny, synthetic embryos, a few minutes on a laptop CPU):

    python -m blastjax.main --config configs/i3d.py:smoke --workdir /tmp/i3d_smoke
"""

from blastjax import config_presets


def get_config(arg=None):
  config = config_presets.multi_frame("i3d", normalization="symmetric")
  return config_presets.finish(config, arg)
