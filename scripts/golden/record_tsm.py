"""Records the TSM golden fixtures from a checkout of mit-han-lab/temporal-shift-module.

    python scripts/golden/record_tsm.py /path/to/temporal-shift-module [--commit SHA]

The reference is imported from the given checkout (its code is never committed here).
Recorded against commit 1f6a834b02120441d99fa706b7a13ccc5293c6fa.

Writes to tests/fixtures/golden/:
- tsm_shift.npz: `ops.temporal_shift.TemporalShift.shift` (fold_div 8) on a small
  float tensor [N*T, C, H, W], and the one-way online shift of
  `online_demo.mobilenet_v2_tsm.InvertedResidualWithShift` run frame by frame with an
  identity residual branch (so its output is x + shift(x)), the reference's shift
  buffer starting at zeros as in `online_demo/main.py`.
- tsm_resnet18.npz: `ops.models.TSN(2, 4, 'RGB', base_model='resnet18', is_shift=True,
  shift_place='blockres', dropout=0.5, pretrain=None)`, weights drawn by
  `blastjax.testing.golden.golden_state_dict`, eval mode, logits on one small clip.
"""

import os
import sys

import numpy as np
import torch

from blastjax.testing import golden

REFERENCE = "https://github.com/mit-han-lab/temporal-shift-module"
NUM_SEGMENTS = 4


def record_shift(commit: str, out_dir: str) -> None:
  from ops.temporal_shift import TemporalShift  # noqa: E402  (from the checkout)
  from online_demo.mobilenet_v2_tsm import InvertedResidualWithShift  # noqa: E402

  rng = np.random.default_rng(0)
  x = rng.standard_normal((2 * NUM_SEGMENTS, 16, 3, 5)).astype(np.float32)  # [N*T, C, H, W]
  with torch.no_grad():
    shifted = TemporalShift.shift(torch.from_numpy(x), NUM_SEGMENTS, fold_div=8).numpy()
    block = InvertedResidualWithShift(16, 16, 1, expand_ratio=6)
    block.conv = torch.nn.Identity()
    frames = torch.from_numpy(x).view(2, NUM_SEGMENTS, 16, 3, 5)
    buffer = torch.zeros(2, 16 // 8, 3, 5)
    online = []
    for t in range(NUM_SEGMENTS):
      out, buffer = block(frames[:, t], buffer)
      online.append(out)
    online = torch.stack(online, 1).reshape(x.shape).numpy()
  path = os.path.join(out_dir, "tsm_shift.npz")
  golden.save_fixture(
      path, keys_and_shapes=[], seed=0, inputs={"x": x},
      outputs={"shift": shifted, "online_residual": online},
      meta={"reference": REFERENCE + " (ops/temporal_shift.py TemporalShift.shift; "
            "online_demo/mobilenet_v2_tsm.py InvertedResidualWithShift)",
            "commit": commit, "num_segments": NUM_SEGMENTS, "fold_div": 8,
            "input_layout": "[N*T, C, H, W] float32", "torch": torch.__version__})
  print(f"{path}: {os.path.getsize(path)} bytes")


def record_model(commit: str, out_dir: str) -> None:
  from ops.models import TSN  # noqa: E402  (from the checkout)

  seed = 1
  model = TSN(2, NUM_SEGMENTS, "RGB", base_model="resnet18", is_shift=True,
              shift_place="blockres", shift_div=8, dropout=0.5, pretrain=None,
              partial_bn=False, print_spec=False)
  keys_and_shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
  state = golden.golden_state_dict(keys_and_shapes, seed)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
  model.eval()
  clip = np.random.default_rng(seed + 100).standard_normal(
      (1, NUM_SEGMENTS, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    logits = model(torch.from_numpy(clip).reshape(1, NUM_SEGMENTS * 3, 32, 32)).numpy()
  path = os.path.join(out_dir, "tsm_resnet18.npz")
  golden.save_fixture(
      path, keys_and_shapes=keys_and_shapes, seed=seed, inputs={"clip": clip},
      outputs={"logits": logits},
      meta={"reference": REFERENCE + " (ops/models.py TSN, resnet18, blockres shift)",
            "commit": commit, "num_segments": NUM_SEGMENTS, "num_classes": 2,
            "input_layout": "[B, T, C, H, W] float32", "torch": torch.__version__})
  print(f"{path}: logits {logits.tolist()}, {os.path.getsize(path)} bytes")


def main():
  checkout, commit, out_dir = golden.recording_args(__doc__.split("\n")[0], "mit-han-lab/temporal-shift-module")
  sys.path.insert(0, checkout)
  record_shift(commit, out_dir)
  record_model(commit, out_dir)

if __name__ == "__main__":
  main()
