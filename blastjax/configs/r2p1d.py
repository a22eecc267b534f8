"""ResNet-R(2+1)D-18 (Table 4: 31.30M, 77.74%, the best baseline).

The paper's setup (cleavage_stage_blastocyst_dataset.txt, Table 2) and protocol (half/half
split, no validation carved out of the training half, the last checkpoint tested):
32 uniformly sampled frames, 224x224, batch 16, 100 epochs, AdamW 1e-3:

    python -m blastjax.main --config configs/r2p1d.py --workdir runs/r2p1d

Smoke run (tiny, synthetic embryos, a few minutes on a laptop CPU):

    python -m blastjax.main --config configs/r2p1d.py:smoke --workdir /tmp/r2p1d_smoke

Model selection, which the paper does not describe (10% validation, best-AUC checkpoint):

    python -m blastjax.main --config configs/r2p1d.py:select --workdir runs/r2p1d_select
"""

from blastjax import config_presets


def get_config(arg=None):
  config = config_presets.multi_frame("r2plus1d_18", normalization="kinetics")
  return config_presets.benchmark(config, arg)
