"""Records the I3D golden fixtures from a checkout of piergiaj/pytorch-i3d.

    python scripts/golden/record_i3d.py /path/to/pytorch-i3d [--commit SHA]

The reference is imported from the given checkout (its code is never committed here).
For each input shape it builds `InceptionI3d(num_classes=2)`, fills its state_dict with
`blastjax.testing.golden.golden_state_dict` (seeded, in key order), runs it in eval mode
and writes tests/fixtures/golden/<name>.npz with the input clip (uint8, scaled to
[-1, 1] as `u8 / 127.5 - 1`), the per-time-step logits and the `extract_features` output.

The reference's head pools with a fixed AvgPool3d([2, 7, 7]) window, which only fits
224x224 clips; blastjax clips the window to the feature map, so for these small clips
the reference's `avg_pool` is replaced by an AvgPool3d with the clipped window (the same
operation the reference performs at 224x224).
"""

import os
import sys

import numpy as np
import torch

from blastjax.testing import golden

# (fixture name, input shape [B, C, T, H, W], seed). The second has odd sizes, so that
# SAME padding is asymmetric at several stages.
CASES = (("i3d", (1, 3, 24, 40, 40), 0), ("i3d_odd", (1, 3, 9, 37, 41), 1))
REFERENCE = "https://github.com/piergiaj/pytorch-i3d (pytorch_i3d.py, InceptionI3d)"


def clip_to_float(clip_u8: np.ndarray) -> np.ndarray:
  return clip_u8.astype(np.float32) / 127.5 - 1.0


def record(checkout: str, commit: str, out_dir: str) -> None:
  sys.path.insert(0, checkout)
  import pytorch_i3d  # noqa: E402  (from the checkout given on the command line)

  for name, shape, seed in CASES:
    model = pytorch_i3d.InceptionI3d(num_classes=2, in_channels=shape[1])
    keys_and_shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    state = golden.golden_state_dict(keys_and_shapes, seed)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    model.eval()
    clip = np.random.default_rng(seed + 100).integers(0, 256, shape, dtype=np.uint8)
    x = torch.from_numpy(clip_to_float(clip))
    with torch.no_grad():
      end = x
      for end_point in model.VALID_ENDPOINTS:
        if end_point in model.end_points:
          end = model._modules[end_point](end)
      window = [min(w, s) for w, s in zip((2, 7, 7), end.shape[2:])]
      model.avg_pool = torch.nn.AvgPool3d(kernel_size=window, stride=(1, 1, 1))
      logits = model(x)  # [B, classes, T'']
      features = model.extract_features(x)  # [B, 1024, T'', h, w]
    path = os.path.join(out_dir, f"{name}.npz")
    golden.save_fixture(
        path, keys_and_shapes=keys_and_shapes, seed=seed, inputs={"clip_u8": clip},
        outputs={"logits_per_step": logits.numpy(), "features": features.numpy()},
        meta={"reference": REFERENCE, "commit": commit, "num_classes": 2,
              "input_layout": "NCTHW uint8, float = u8 / 127.5 - 1",
              "avg_pool_window": window, "torch": torch.__version__})
    print(f"{path}: input {shape}, logits {tuple(logits.shape)}, features {tuple(features.shape)}, "
          f"{os.path.getsize(path)} bytes")


def main():
  record(*golden.recording_args(__doc__.split("\n")[0], "piergiaj/pytorch-i3d"))

if __name__ == "__main__":
  main()
