"""Hara et al.'s 3D ResNets (hara_3d_cnn_good_practice.txt): ResNet-18 (type-A shortcuts),
34 and 50 (type B) -- models hara_resnet3d_18/34/50, chosen by `depth=`.

Training from scratch (the default; Sec. III-B-1): SGD, momentum 0.9, weight decay 1e-3
(torch SGD's coupled L2), batch 128, learning rate 0.03 divided by 10 when the validation
loss has not improved for 10 epochs (schedule 'plateau', validated once per epoch),
250 epochs, cross-entropy; 16-frame clips at a uniformly drawn position (looped when
shorter), 112x112, the paper's best augmentation ('hara': multi-scale spatial random crop
and flip). Testing: the sequence split into non-overlapping 16-frame clips
(sliding_windows, window_stride 0 = the clip length), the clip probabilities averaged.
The paper is silent on a validation split for our data and on which checkpoint it
tests; as its reference code (kenshohara/3D-ResNets-PyTorch) we hold out 10% of the
training half for the plateau's validation loss and test the last checkpoint.

`:finetune` (Sec. III-B-1 and IV-B): learning rate 3e-4 with the same plateau, 100
epochs, only conv5_x and fc trained (`freeze='layer4'`: every module before layer4 is
frozen; `freeze=layer3` etc. moves the boundary, Fig. 2's ">convX"). It needs Kinetics
weights: `python scripts/convert_weights.py --model hara_resnet3d_18 --pth
resnet-18-kinetics.pth --num_classes 2 --drop_head --out DIR` and
`--config.init_from=DIR` (without it the frozen layers stay random; the smoke variants
train from scratch).

    python -m blastjax.main --config configs/hara_resnet3d.py:depth=34 --workdir runs/hara34
    python -m blastjax.main --config configs/hara_resnet3d.py:finetune,depth=18 --config.init_from=DIR --workdir runs/hara18_ft
    python -m blastjax.main --config configs/hara_resnet3d.py:smoke --workdir /tmp/hara_smoke
"""

from blastjax import config_presets

VARIANTS = {"finetune": "fine-tuning: lr 3e-4, 100 epochs, layers before `freeze` frozen"}
PARAMS = {"depth": config_presets.Param(18, (18, 34, 50), "3D ResNet depth"),
          "freeze": config_presets.Param("layer4", ("layer1", "layer2", "layer3", "layer4"),
                                         "fine-tuning: the first trained module")}


def get_config(arg=None):
  a = config_presets.parse_arg(arg, VARIANTS, PARAMS)
  config = config_presets.multi_frame(
      f"hara_resnet3d_{a['depth']}", optimizer="sgd", momentum=0.9, weight_decay=1e-3, learning_rate=0.03,
      batch_size=128, eval_batch_size=128, num_epochs=250, image_size=112, num_frames=16, clip_length=16,
      sampling="clip", eval_sampling="sliding_windows", window_stride=0, normalization="kinetics",
      schedule="plateau", plateau_factor=0.1, plateau_patience=10, validation_fraction=0.1,
      eval_every_steps=0, eval_checkpoint="last")
  config.augmentation.preset = "hara"
  if "freeze" in a.given and "finetune" not in a:
    raise config_presets.ConfigArgumentError(f"config argument freeze={a['freeze']}: only 'finetune' freezes "
                                             "layers; add it (e.g. finetune,freeze=layer3)")
  if "finetune" in a:
    config.update(learning_rate=3e-4, num_epochs=100, freeze=a["freeze"])
  return config_presets.finish(config, a)
