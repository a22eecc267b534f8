"""Records the MFNet-3D golden fixtures from a checkout of cypw/PyTorch-MFNet.

    python scripts/golden/record_mfnet.py /path/to/PyTorch-MFNet [--commit SHA]

The reference's `network/mfnet_3d.py` is imported from the given checkout (its code is
never committed here). For each case it builds `MFNET_3D(num_classes=2)`, fills its
state_dict with `blastjax.testing.golden.golden_state_dict` (seeded, in key order), runs
it in eval mode on a seeded uint8 clip (scaled to [-1, 1] as `u8 / 127.5 - 1`) and
writes tests/fixtures/golden/<name>.npz with the clip and the logits.

The reference's head pools with a fixed AvgPool3d((8, 7, 7)) window and its `forward`
asserts 16-frame clips: both only fit 16 x 224 x 224 inputs. blastjax pools globally, so
here the reference's `globalpool` is replaced by AdaptiveAvgPool3d(1) (the same operation
at 16 x 224 x 224), and the odd-sized case runs the reference's layers one after the
other, as its `forward` does, without the frame-count assertion.
"""

import os
import sys

import numpy as np
import torch

from blastjax.testing import golden

# (fixture name, input [B, C, T, H, W], seed). The second has odd sizes and 7 frames.
CASES = (("mfnet3d", (1, 3, 16, 32, 32), 0), ("mfnet3d_odd", (1, 3, 7, 29, 35), 1))
REFERENCE = "https://github.com/cypw/PyTorch-MFNet (network/mfnet_3d.py, MFNET_3D)"


def clip_to_float(clip_u8: np.ndarray) -> np.ndarray:
  return clip_u8.astype(np.float32) / 127.5 - 1.0


def forward(model, x):
  """The reference's `forward`, layer by layer, without its 16-frame assertion."""
  h = model.maxpool(model.conv1(x))
  for stage in (model.conv2, model.conv3, model.conv4, model.conv5):
    h = stage(h)
  h = model.globalpool(model.tail(h))
  return model.classifier(h.view(h.shape[0], -1))


def num_params(model) -> int:
  return sum(p.numel() for p in model.parameters())


def record(checkout: str, commit: str, out_dir: str) -> None:
  sys.path.insert(0, os.path.join(checkout, "network"))
  import mfnet_3d  # noqa: E402  (from the checkout given on the command line)

  params_by_classes = {n: num_params(mfnet_3d.MFNET_3D(num_classes=n)) for n in (2, 400, 1000)}
  for name, shape, seed in CASES:
    model = mfnet_3d.MFNET_3D(num_classes=2)
    keys_and_shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    state = golden.golden_state_dict(keys_and_shapes, seed)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    model.globalpool = torch.nn.AdaptiveAvgPool3d(1)
    model.eval()
    clip = np.random.default_rng(seed + 100).integers(0, 256, shape, dtype=np.uint8)
    with torch.no_grad():
      logits = forward(model, torch.from_numpy(clip_to_float(clip)))
    path = os.path.join(out_dir, f"{name}.npz")
    golden.save_fixture(
        path, keys_and_shapes=keys_and_shapes, seed=seed, inputs={"clip_u8": clip},
        outputs={"logits": logits.numpy()},
        meta={"reference": REFERENCE, "commit": commit, "model": "mfnet3d", "num_classes": 2,
              "num_params": params_by_classes,
              "global_pool": "AdaptiveAvgPool3d(1) in place of AvgPool3d((8, 7, 7))",
              "input_layout": "NCTHW uint8, float = u8 / 127.5 - 1", "torch": torch.__version__})
    print(f"{path}: input {shape}, logits {logits.numpy().ravel()}, params {params_by_classes}, "
          f"{os.path.getsize(path)} bytes")


def main():
  record(*golden.recording_args(__doc__.split("\n")[0], "cypw/PyTorch-MFNet"))

if __name__ == "__main__":
  main()
