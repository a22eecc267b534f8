"""YOWO-CFAM classification (restaurant_action_recognition_convlstm_yowo.txt, YOWO of
Köpüklü et al.): a 2D network on the clip's key frame (its last) and a 3D network on the
whole 16-frame clip, fused by CFAM (channel fusion and Gram-matrix attention), with
YOWO's box head replaced by a classifier (model yowo_cfam: ResNet-18 + R3D-18, CFAM 1024,
65,323,523 parameters).

The paper's setup: 16-frame clips, the last frame the key frame, "cropping and
shifting" augmentation, fine-tuning from pretrained weights; its best 3D backbone was a
ResNet-50 and its 2D one Darknet-19, which blastjax does not have (`--config.model_kwargs.
backbone_2d=resnet50` and any registered 3D model with `return_feature_map` can stand in).
Silent on the rest, so as YOWO's reference code (wei-tim/YOWO, cfg/ucf24.yaml): Adam
(coupled L2 weight decay 5e-4, torch's), learning rate 1e-4, 5 epochs ("the plateau was
reached within 5 epochs" here too), cosine decay in place of its halving at epochs 2-5,
224x224; batch 16 instead of its 128 (accumulated over 12-clip batches). Its 20% of clips
for validation is validation_fraction 0.2, validated once per epoch, the best-accuracy
checkpoint tested; training clips at random positions (sampling 'clip'), the test
sequence split into non-overlapping 16-frame clips, their probabilities averaged.

Pretrained branches: `python scripts/convert_weights.py --model yowo_cfam --source resnet18
--pth r18.pth --source r3d_18 --pth r3d_18.pth --out DIR` and `--config.init_from=DIR`
(the smoke variant trains from scratch).

    python -m blastjax.main --config configs/yowo_cfam.py --workdir runs/yowo_cfam
    python -m blastjax.main --config configs/yowo_cfam.py:smoke --workdir /tmp/yowo_cfam_smoke
"""

from blastjax import config_presets


def get_config(arg=None):
  config = config_presets.multi_frame(
      "yowo_cfam", optimizer="adam", learning_rate=1e-4, weight_decay=5e-4, num_epochs=5, schedule="cosine",
      num_frames=16, clip_length=16, sampling="clip", eval_sampling="sliding_windows", window_stride=0,
      validation_fraction=0.2, eval_every_steps=0, best_metric="accuracy", eval_checkpoint="best",
      normalization="kinetics")
  return config_presets.finish(config, arg)
