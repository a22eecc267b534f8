"""Inception-v3 (Table 3: 21.79M, 72.08%), without the auxiliary head: the paper's 21.79M
counts the network without torchvision's AuxLogits (24.35M with it), and the paper says
nothing of an auxiliary loss. To train with the auxiliary classifier as Szegedy et al.
do (its loss weighted by config.aux_loss_weight, default 0.4; it needs image_size >= 299),
add --config.model_kwargs.aux_logits=True. Evaluation uses the main logits either way.

The paper's setup (cleavage_stage_blastocyst_dataset.txt, Table 2) and protocol (half/half
split, no validation carved out of the training half, the last checkpoint tested):
single frame (the last), 400x400, batch 32, 500 epochs, AdamW 1e-3:

    python -m blastjax.main --config configs/inception_v3.py --workdir runs/inception_v3

Smoke run (tiny, synthetic embryos, a few minutes on a laptop CPU):

    python -m blastjax.main --config configs/inception_v3.py:smoke --workdir /tmp/inception_v3_smoke

Model selection, which the paper does not describe (10% validation, best-AUC checkpoint):

    python -m blastjax.main --config configs/inception_v3.py:select --workdir runs/inception_v3_select
"""

from blastjax import config_presets


def get_config(arg=None):
  config = config_presets.single_frame("inception_v3", model_kwargs=dict(aux_logits=False))
  return config_presets.benchmark(config, arg, smoke_image_size=75)
