"""Seizure-style feature LSTM (seizure_i3d_lstm.txt): per-frame features from a frozen
backbone, two LSTM layers (128, 64 units), two dense layers (64, 32), dropout 0.5,
Adam 1e-3 and class weights for the imbalance. This is the 2-class (softmax,
cross-entropy) variant; the paper's own protocol -- one sigmoid output, class-weighted
MSE, L2, patient 5-fold cross-validation -- is configs/seizure_i3d_lstm.py.

It reads cached features (input kind 'features'): on first use the trainer runs
`feature_extractor` (I3D) once over every embryo, in sliding windows of `clip_length`
frames (one time step per window, so early prediction sees only finished windows),
and caches the result in <workdir>/features (blastjax.data.feature_cache). Give the
extractor converted Kinetics weights with --config.feature_weights (see
docs/training.md); without them the features come from a seeded random init, which is
only good for the smoke run.

    python -m blastjax.main --config configs/feature_lstm.py --workdir runs/feature_lstm
    python -m blastjax.main --config configs/feature_lstm.py:smoke --workdir /tmp/feature_lstm_smoke
"""

from blastjax import config_presets


def get_config(arg=None):
  config = config_presets.multi_frame("feature_lstm", weight_decay=0.0, class_weights="balanced",
                                      best_metric="f1_macro", sampling="sliding_windows", clip_length=16)
  return config_presets.finish(config, arg)
