"""Seizure-style feature LSTM (seizure_i3d_lstm.txt): per-frame features from a frozen
backbone, two LSTM layers (128, 64 units), two dense layers (64, 32), dropout 0.5,
Adam 1e-3 and class weights for the imbalance.

It reads cached per-frame features (input kind 'features'), produced by the feature
cache of blastjax.data.feature_cache; see docs/training.md.

    python -m blastjax.main --config configs/feature_lstm.py --workdir runs/feature_lstm
    python -m blastjax.main --config configs/feature_lstm.py:smoke --workdir /tmp/feature_lstm_smoke
"""

from configs import common


def get_config(arg=None):
  config = common.multi_frame("feature_lstm", weight_decay=0.0, class_weights="balanced",
                              best_metric="f1_macro")
  return common.finish(config, arg)
