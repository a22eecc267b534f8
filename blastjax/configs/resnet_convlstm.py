"""ResNet-ConvLSTM classification (restaurant_action_recognition_convlstm_yowo.txt):
per-frame ResNet-50 feature maps through a ConvLSTM with the convolutional peepholes of
its Eq. (1) (Shi et al.), the last state pooled and classified (model resnet_convlstm,
hidden 256, 3x3).

The paper's recurrent network is unidirectional -- its training carried the LSTM state
across sub-sequences of long clips, which "precluded the use of bidirectional LSTMs" --
so `bidirectional=False` here (46,512,706 parameters); `:bidirectional` (69,517,378) is
the cleavage-stage benchmark's reading, the network of configs/resnet_lstm.py:conv.
The paper puts the ConvLSTM on a YOLOv3 detector with a box loss and reports it failed to
converge; nothing of that training carries over to embryo classification, so the rest is
the cleavage-stage benchmark's multi-frame setup and protocol (Table 2: 32 uniform
frames, 224x224, batch 16, 100 epochs, AdamW 1e-3; half/half split, no validation, the
last checkpoint tested; `:select` for 10% validation and the best-AUC checkpoint).
About 17.5 GiB per 16x32x224 step with frames_per_chunk 8 (docs/models_video_c.md).

ImageNet backbone: `python scripts/convert_weights.py --model resnet_convlstm --source
resnet50 --pth resnet50.pth --model_kwargs '{"bidirectional": false}' --out DIR` and
`--config.init_from=DIR` (the smoke variants train from scratch).

    python -m blastjax.main --config configs/resnet_convlstm.py --workdir runs/resnet_convlstm
    python -m blastjax.main --config configs/resnet_convlstm.py:smoke --workdir /tmp/resnet_convlstm_smoke
"""

from blastjax import config_presets

VARIANTS = {"bidirectional": "forward and backward ConvLSTM (the benchmark's reading)"}


def get_config(arg=None):
  a = config_presets.parse_arg(arg, {**config_presets.SELECT, **VARIANTS})
  config = config_presets.multi_frame("resnet_convlstm",
                                      model_kwargs=dict(bidirectional="bidirectional" in a))
  return config_presets.benchmark(config, a)
