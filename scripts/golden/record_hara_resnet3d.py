"""Records the Hara 3D-ResNet golden fixtures from a checkout of kenshohara/3D-ResNets-PyTorch.

    python scripts/golden/record_hara_resnet3d.py /path/to/3D-ResNets-PyTorch [--commit SHA]

The reference's `models/resnet.py` is imported from the given checkout (its code is never
committed here). For each case it builds `generate_model(depth, n_classes=2, **kwargs)`,
fills its state_dict with `blastjax.testing.golden.golden_state_dict` (seeded, in key
order), runs it in eval mode on a seeded uint8 clip (scaled to [-1, 1] as
`u8 / 127.5 - 1`) and writes tests/fixtures/golden/<name>.npz with the clip and the
logits. The fixture's meta names the blastjax model and its keyword arguments.
"""

import importlib.util
import os

import numpy as np
import torch

from blastjax.testing import golden

# (fixture name, blastjax model, depth, reference kwargs, input [B, C, T, H, W], seed).
CASES = (
    ("hara_resnet3d_18", "hara_resnet3d_18", 18, dict(shortcut_type="A"), (1, 3, 8, 32, 32), 0),
    ("hara_resnet3d_34", "hara_resnet3d_34", 34, dict(shortcut_type="B"), (1, 3, 8, 32, 32), 1),
    ("hara_resnet3d_50", "hara_resnet3d_50", 50, dict(shortcut_type="B"), (1, 3, 8, 32, 32), 2),
    # Every other keyword: a short strided stem, no max-pool, half width, type-A shortcuts
    # on bottlenecks (zero padding 32 -> 128 channels in layer1), odd sizes.
    ("hara_resnet3d_50_options", "hara_resnet3d_50", 50,
     dict(shortcut_type="A", conv1_t_size=3, conv1_t_stride=2, no_max_pool=True,
          widen_factor=0.5), (1, 3, 9, 29, 35), 3),
)
REFERENCE = "https://github.com/kenshohara/3D-ResNets-PyTorch (models/resnet.py, generate_model)"


def clip_to_float(clip_u8: np.ndarray) -> np.ndarray:
  return clip_u8.astype(np.float32) / 127.5 - 1.0


def load_reference(checkout: str):
  path = os.path.join(checkout, "models", "resnet.py")
  spec = importlib.util.spec_from_file_location("hara_resnet_reference", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def record(checkout: str, commit: str, out_dir: str) -> None:
  reference = load_reference(checkout)
  for name, model_name, depth, kwargs, shape, seed in CASES:
    model = reference.generate_model(depth, n_classes=2, n_input_channels=shape[1], **kwargs)
    keys_and_shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    state = golden.golden_state_dict(keys_and_shapes, seed)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    model.eval()
    clip = np.random.default_rng(seed + 100).integers(0, 256, shape, dtype=np.uint8)
    with torch.no_grad():
      logits = model(torch.from_numpy(clip_to_float(clip)))
    num_params = sum(p.numel() for p in model.parameters())
    path = os.path.join(out_dir, f"{name}.npz")
    golden.save_fixture(
        path, keys_and_shapes=keys_and_shapes, seed=seed, inputs={"clip_u8": clip},
        outputs={"logits": logits.numpy()},
        meta={"reference": REFERENCE, "commit": commit, "model": model_name, "depth": depth,
              "kwargs": kwargs, "num_classes": 2, "num_params": num_params,
              "input_layout": "NCTHW uint8, float = u8 / 127.5 - 1", "torch": torch.__version__})
    print(f"{path}: input {shape}, logits {logits.numpy().ravel()}, {num_params} params, "
          f"{os.path.getsize(path)} bytes")


def main():
  record(*golden.recording_args(__doc__.split("\n")[0], "kenshohara/3D-ResNets-PyTorch"))

if __name__ == "__main__":
  main()
