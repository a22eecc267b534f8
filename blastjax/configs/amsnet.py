"""AMSNet (amsnet_early_blastocyst_prediction.txt): multi-focal-plane ResNet-50 with an
online temporal channel shift (TSM) and multi-focus selection (MFS), predicting at every
time step.

The paper's numbers (Sec. 4.1): one random frame per 6-hour segment, T = 28 over 168 h
(padded steps masked out of the loss), up to 7 focal planes as their own axis, grey,
resized and randomly cropped to 224x224 (augmentation preset 'amsnet'), initialised from
a Kinetics ResNet-50, SGD. Evaluation as its Table 1: accuracy when only the first
Day 0.5, 1, ..., 7 are observed (early_hours 12, 24, ..., 168), the area under that
curve, and the ROC AUC at Days 3, 4, 5 (the early-prediction `auc` at 72, 96, 120 h).
metrics.json's `area_under_accuracy_curve_from_0h` is Table 1's "AUC" (trapezoid over
the cut-offs divided by 168 h: its rows 1 and 11 give 0.6987 and 0.7633 from their
accuracies); `area_under_accuracy_curve` divides by the 156 h spanned instead.

The paper is silent on the rest; as the TSM code AMSNet builds on
(mit-han-lab/temporal-shift-module, Kinetics -> UCF101 fine-tuning): momentum 0.9,
weight decay 5e-4, gradient clipping at norm 20, 25 epochs, learning rate 0.001 at
batch 64 scaled linearly to our batch 16 (2.5e-4), cosine decay (its `--lr_type cos`;
its step decay is not offered), 10% of the training half for validation once per epoch,
the best-accuracy checkpoint tested (TSM keeps the best prec@1). The prediction of an
embryo is its last valid step's.

Table 1's ablation rows as variants (with `planes=` for #F; default: the row's own):
  baseline  ResNet-50, no shift, 1 plane                      (row 1)
  tsm       + online TSM, planes 1 (default), 3, 5 or 7        (rows 2-5)
  channel   + MFS channel attention, planes 3, 5 or 7 (7)      (rows 6-8)
  full      + channel and spatial (non-local) attention = AMSNet, planes 3, 5, 7 (7) (rows 9-11)
Our rows differ from the paper's in two ways: rows 3-5 ("directly concatenated focal
images as the input of TSM") fuse the planes after the shared Res-1 by MFS's 1x1
reduction (attention off), not at the input; the baseline keeps that 1x1 reduction
(c -> c on its single plane). `planes=N` keeps the central N planes of the data
(model_kwargs.num_planes), so the data must hold at least N (the synthetic set has 3;
the smoke variant keeps at most 3).

Kinetics initialisation: `python scripts/convert_weights.py --model amsnet --source
resnet50 --pth tsm_kinetics_resnet50.pth --in_channels 1 --out DIR` and
`--config.init_from=DIR` (the smoke variants train from scratch).

    python -m blastjax.main --config configs/amsnet.py --workdir runs/amsnet
    python -m blastjax.main --config configs/amsnet.py:tsm,planes=5 --workdir runs/amsnet_tsm5
    python -m blastjax.main --config configs/amsnet.py:smoke --workdir /tmp/amsnet_smoke
"""

from blastjax import config_presets

# row -> (model kwargs, the #F choices of Table 1, the default #F).
ROWS = {"baseline": (dict(shift="none", channel_attention=False, spatial_attention=False), (1,), 1),
        "tsm": (dict(channel_attention=False, spatial_attention=False), (1, 3, 5, 7), 1),
        "channel": (dict(spatial_attention=False), (3, 5, 7), 7),
        "full": ({}, (3, 5, 7), 7)}
VARIANTS = {"baseline": "Table 1 row 1", "tsm": "rows 2-5", "channel": "rows 6-8", "full": "rows 9-11 (default)"}
PARAMS = {"planes": config_presets.Param(0, (0, 1, 3, 5, 7), "#F focal planes; 0 = the row's")}
SYNTHETIC_PLANES = 3  # the simulator's focal planes (-15, 0, 15)


def get_config(arg=None):
  a = config_presets.parse_arg(arg, VARIANTS, PARAMS)
  rows = [r for r in ROWS if r in a] or ["full"]
  if len(rows) > 1:
    raise config_presets.ConfigArgumentError(f"config argument {','.join(rows)}: choose one Table 1 row")
  row = rows[0]
  kwargs, choices, default = ROWS[row]
  planes = a["planes"] or default
  if planes not in choices:
    raise config_presets.ConfigArgumentError(
        f"config argument planes={planes} with {row!r}: Table 1 has this row with "
        f"{', '.join(map(str, choices))} planes")
  if "smoke" in a:
    planes = min(planes, SYNTHETIC_PLANES)
  config = config_presets.multi_frame(
      "amsnet", model_kwargs=dict(kwargs, num_planes=planes), sampling="segments", segment_hours=6.0,
      num_frames=28, focal_planes="axis", rgb=False, normalization="kinetics", optimizer="sgd",
      momentum=0.9, weight_decay=5e-4, learning_rate=2.5e-4, grad_clip_norm=20.0, num_epochs=25,
      schedule="cosine", validation_fraction=0.1, eval_every_steps=0, best_metric="accuracy",
      eval_checkpoint="best", early_hours=tuple(12.0 * day for day in range(1, 15)))
  config.augmentation.preset = "amsnet"
  return config_presets.finish(config, a, smoke_frames=8, segment_hours=10.0)
