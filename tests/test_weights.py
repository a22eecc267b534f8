"""The torch -> Flax converter: errors, stem adaptation, dropped heads, save/load, the CLI."""

import functools
import importlib.util
import os

import jax
import numpy as np
import pytest
import torch
import torchvision

from blastjax import models, weights
from blastjax.models import torch_compat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = (1, 40, 44)  # batch, H, W


@functools.lru_cache(maxsize=None)
def resnet18_state(num_classes=2):
  torch.manual_seed(0)
  model = torchvision.models.resnet18(num_classes=num_classes).eval()
  return {k: v.numpy().copy() for k, v in model.state_dict().items()}


@functools.lru_cache(maxsize=None)
def resnet18_template(in_channels=3):
  model = models.create("resnet18")
  return weights.variable_shapes(model, np.zeros(SMALL + (in_channels,), np.float32), train=False)


def convert(state):
  return weights.convert(state, resnet18_template(), torch_compat.dotted_key_map)


@functools.lru_cache(maxsize=None)
def jitted_apply():
  return jax.jit(models.create("resnet18").apply)


def test_missing_key_is_named():
  state = dict(resnet18_state())
  del state["layer2.1.bn1.running_var"]
  with pytest.raises(weights.ConversionError, match=r"missing keys \(1\): layer2\.1\.bn1\.running_var"):
    convert(state)


def test_unexpected_key_is_named():
  state = dict(resnet18_state(), **{"layer5.0.conv1.weight": np.zeros((3, 3))})
  with pytest.raises(weights.ConversionError, match=r"unexpected keys \(1\): layer5\.0\.conv1\.weight"):
    convert(state)


def test_wrong_shape_is_named():
  state = dict(resnet18_state())
  state["layer3.0.conv2.weight"] = np.zeros((256, 128, 3, 3), np.float32)
  with pytest.raises(weights.ConversionError, match=r"wrong shapes \(1\): layer3\.0\.conv2\.weight"):
    convert(state)


def test_imagenet_head_needs_drop_head_and_then_merges_with_fresh_init():
  state = resnet18_state(num_classes=1000)
  with pytest.raises(weights.ConversionError, match=r"fc\.weight"):
    weights.from_torch("resnet18", state)
  assert weights.head_keys("resnet18", jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)) == \
      {"fc.weight", "fc.bias"}
  loaded = weights.from_torch("resnet18", state, drop_head=True)
  assert "fc" not in loaded["params"] and "layer4_1" in loaded["params"]
  fresh = jax.tree_util.tree_map(lambda s: np.full(s.shape, 7.0, s.dtype), resnet18_template())
  merged = weights.merge_variables(fresh, loaded)
  np.testing.assert_array_equal(merged["params"]["fc"]["kernel"], fresh["params"]["fc"]["kernel"])
  np.testing.assert_array_equal(merged["params"]["conv1"]["kernel"], loaded["params"]["conv1"]["kernel"])
  np.testing.assert_array_equal(merged["batch_stats"]["bn1"]["mean"], state["bn1.running_mean"])
  wrong = {"params": {"fc": {"bias": np.zeros(5, np.float32)}}}
  with pytest.raises(weights.ConversionError, match="fc/bias"):
    weights.merge_variables(fresh, wrong)


@pytest.mark.parametrize("in_channels", [1, 5])
def test_adapted_stem_sees_equal_planes_as_the_rgb_model_sees_gray(in_channels):
  state = resnet18_state()
  original = convert(state)
  adapted = weights.from_torch("resnet18", state, adapt_channels=True, in_channels=in_channels)
  assert adapted["params"]["conv1"]["kernel"].shape == (7, 7, in_channels, 64)
  gray = np.random.default_rng(0).uniform(0, 1, SMALL + (1,)).astype(np.float32)
  expected = jitted_apply()(original, np.repeat(gray, 3, axis=-1))
  ours = models.create("resnet18", in_channels=in_channels).apply(adapted, np.repeat(gray, in_channels, -1))
  np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), atol=1e-4)


def test_without_adapt_channels_a_gray_model_rejects_rgb_weights():
  with pytest.raises(weights.ConversionError, match=r"conv1\.weight"):
    weights.from_torch("resnet18", resnet18_state(), in_channels=1)


def test_unwrap_state_dict():
  inner = {"conv1.weight": 1, "fc.bias": 2}
  assert weights.unwrap_state_dict({"state_dict": inner}) == inner
  assert weights.unwrap_state_dict({"model": {"module." + k: v for k, v in inner.items()}}) == inner
  assert weights.unwrap_state_dict(inner) == inner


def test_save_and_load_variables(tmp_path):
  variables = {"params": {"fc": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}},
               "batch_stats": {"bn": {"mean": np.ones(3, np.float32)}}}
  weights.save_variables(str(tmp_path / "out"), variables, {"model": "x", "kwargs": {"a": 1}})
  loaded, meta = weights.load_variables(str(tmp_path / "out"))
  assert meta == {"model": "x", "kwargs": {"a": 1}}
  np.testing.assert_array_equal(loaded["params"]["fc"]["kernel"], variables["params"]["fc"]["kernel"])
  with pytest.raises(FileExistsError):
    weights.save_variables(str(tmp_path / "out"), variables, {})
  with pytest.raises(FileNotFoundError, match="convert_weights.py"):
    weights.load_variables(str(tmp_path / "nothing"))


def _cli():
  spec = importlib.util.spec_from_file_location("convert_weights",
                                                os.path.join(REPO, "scripts", "convert_weights.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_cli_round_trip(tmp_path, capsys):
  state = resnet18_state(num_classes=1000)
  pth = tmp_path / "resnet18.pth"
  torch.save({"model": {"module." + k: torch.from_numpy(v) for k, v in state.items()}}, pth)
  cli = _cli()
  argv = ["--model", "resnet18", "--pth", str(pth), "--out", str(tmp_path / "gray"),
          "--in_channels", "1"]
  assert cli.main(argv) == 1
  assert "--drop_head" in capsys.readouterr().err
  assert cli.main(argv + ["--drop_head"]) == 0
  loaded, meta = weights.load_variables(str(tmp_path / "gray"))
  assert meta["model"] == "resnet18" and meta["kwargs"] == {"num_classes": 2, "in_channels": 1}
  assert meta["source"] == str(pth) and meta["drop_head"]
  assert meta["init_skip"] == ["params/fc/*"]  # what init_from keeps fresh without being told
  expected = weights.from_torch("resnet18", state, adapt_channels=True, drop_head=True, in_channels=1)
  flat_loaded = jax.tree_util.tree_leaves_with_path(loaded)
  flat_expected = jax.tree_util.tree_leaves_with_path(expected)
  assert [p for p, _ in flat_loaded] == [p for p, _ in flat_expected]
  for (_, a), (_, b) in zip(flat_loaded, flat_expected):
    np.testing.assert_array_equal(a, b)
