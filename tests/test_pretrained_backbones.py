"""A checkpoint of one registered model loaded into the models that embed it
(`weights.from_torch(..., source=...)`), and the strict `config.init_from` merge."""

import fnmatch
import functools
import importlib.util
import logging
import os
import re

import jax
import ml_collections
import numpy as np
import pytest
import torch
import torchvision
from flax import traverse_util

from blastjax.testing import tiny as th
from blastjax import models, pretrained, weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AMSNET = {"backbone": "resnet18"}
LSTM = {"backbone": "resnet18", "hidden_size": 8}
AMSNET_FRESH = {"params/fc/*", "params/mfs/*", "batch_stats/mfs/*"}


@functools.lru_cache(maxsize=None)
def resnet18_state(num_classes=1000):
  torch.manual_seed(0)
  model = torchvision.models.resnet18(num_classes=num_classes).eval()
  return {k: v.numpy().copy() for k, v in model.state_dict().items()}


@functools.lru_cache(maxsize=None)
def standalone():
  """The torchvision resnet18 converted as itself (its parity with torchvision is tested
  in test_models_resnet.py), without its head."""
  return flat(weights.from_torch("resnet18", resnet18_state(), drop_head=True))


@functools.lru_cache(maxsize=None)
def amsnet_loaded():
  return weights.from_torch("amsnet", resnet18_state(), source="resnet18", **AMSNET)


def flat(tree):
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def assert_embedded(loaded: dict, places: dict):
  """Every leaf of `loaded` is the standalone leaf its place says, and every standalone
  leaf a place claims is there."""
  expected = {}
  for path, value in standalone().items():
    collection, module = path.split("/")[:2]
    for prefix, keep in places.items():
      if keep(module):
        expected[path.replace(collection, f"{collection}/{prefix}", 1)] = value
  loaded = flat(loaded)
  assert sorted(loaded) == sorted(expected)
  for path, value in expected.items():
    np.testing.assert_array_equal(loaded[path], value, err_msg=path)


def test_resnet_loads_into_amsnet_front_and_back():
  loaded = amsnet_loaded()
  assert_embedded(loaded, {"front": lambda m: m in ("conv1", "bn1") or m.startswith("layer1_"),
                           "back": lambda m: m.startswith(("layer2_", "layer3_", "layer4_"))})
  state = resnet18_state()  # and against torch's tensors themselves
  np.testing.assert_array_equal(loaded["params"]["front"]["conv1"]["kernel"],
                                np.transpose(state["conv1.weight"], (2, 3, 1, 0)))
  np.testing.assert_array_equal(loaded["batch_stats"]["back"]["layer3_0"]["downsample_1"]["var"],
                                state["layer3.0.downsample.1.running_var"])
  template = weights.model_template("amsnet", **AMSNET)
  assert set(weights.left_out_patterns(template, loaded)) == AMSNET_FRESH


def test_resnet_loads_into_the_recurrent_frame_encoder():
  loaded = weights.from_torch("resnet_lstm", resnet18_state(), source="resnet18", **LSTM)
  assert_embedded(loaded, {"encoder/frame_encoder/backbone": lambda m: m != "fc"})
  # A frame encoder that keeps three stages takes what it has; the source's layer4 is unused.
  short = weights.from_torch("resnet_convgru", resnet18_state(), source="resnet18",
                             **LSTM, backbone_stages=3)
  assert_embedded(short, {"encoder/frame_encoder/backbone":
                          lambda m: m != "fc" and not m.startswith("layer4_")})


def tsm_state(state: dict) -> dict:
  """`state` under the key names of the TSM reference (`TSN`, residual shift): what a
  Kinetics TSM-ResNet checkpoint looks like."""
  out = {}
  for key, value in state.items():
    key = re.sub(r"^(layer\d\.\d+)\.conv1\.", r"\1.conv1.net.", key)
    out["new_fc." + key[3:] if key.startswith("fc.") else "base_model." + key] = value
  return out


def test_a_tsm_checkpoint_loads_into_amsnet():
  loaded = weights.from_torch("amsnet", tsm_state(resnet18_state()), source="tsm_resnet18", **AMSNET)
  for path, value in flat(amsnet_loaded()).items():
    np.testing.assert_array_equal(flat(loaded)[path], value, err_msg=path)
  assert sorted(flat(loaded)) == sorted(flat(amsnet_loaded()))


def test_missing_leaf_is_named():
  state = dict(resnet18_state())
  del state["layer2.1.bn1.running_var"]
  with pytest.raises(weights.ConversionError, match=r"(?s)source='resnet18'.*layer2\.1\.bn1\.running_var"):
    weights.from_torch("amsnet", state, source="resnet18", **AMSNET)
  with pytest.raises(weights.ConversionError,
                     match=r"does not fill \(1\): params/back/layer4_1/conv2/kernel"):
    weights.from_torch("amsnet", resnet18_state(), source="resnet18",
                       skip_keys={"layer4.1.conv2.weight"}, **AMSNET)


def test_shape_mismatch_is_an_error_and_adapt_channels_fits_the_stem():
  gray = jax.ShapeDtypeStruct((1, 2, 3, 32, 32, 1), np.float32)
  with pytest.raises(weights.ConversionError,
                     match=r"wrong shapes \(1\): params/front/conv1/kernel: resnet18 has \(7, 7, 3, 64\)"):
    weights.from_torch("amsnet", resnet18_state(), source="resnet18", example_input=gray, **AMSNET)
  adapted = weights.from_torch("amsnet", resnet18_state(), source="resnet18", example_input=gray,
                               adapt_channels=True, **AMSNET)
  np.testing.assert_allclose(adapted["params"]["front"]["conv1"]["kernel"][..., 0, :],
                             standalone()["params/conv1/kernel"].sum(axis=-2), rtol=1e-6)


def test_a_source_the_model_does_not_embed_is_an_error():
  with pytest.raises(weights.ConversionError, match="embeds resnet18, not 'resnet50'"):
    weights.from_torch("amsnet", resnet18_state(), source="resnet50", **AMSNET)
  with pytest.raises(weights.ConversionError, match="'resnet34' embeds no other registered model"):
    weights.from_torch("resnet34", resnet18_state(), source="resnet18")


def test_yowo_branch_takes_its_backbone():
  kwargs = {"backbone_2d_kwargs": {"stages": (0, 1)}, "inter_channels": 8, "out_channels": 8}
  loaded = weights.from_torch("yowo_cfam", resnet18_state(), source="resnet18", **kwargs)
  assert_embedded(loaded, {"backbone_2d": lambda m: m in ("conv1", "bn1") or m.startswith("layer1_")})


def _cli():
  spec = importlib.util.spec_from_file_location("convert_weights",
                                                os.path.join(REPO, "scripts", "convert_weights.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def amsnet_checkpoint(tmp_path_factory):
  """scripts/convert_weights.py --model amsnet --source resnet18: (directory, pth)."""
  root = tmp_path_factory.mktemp("amsnet_r18")
  pth = root / "resnet18.pth"
  torch.save({k: torch.from_numpy(v) for k, v in resnet18_state().items()}, pth)
  argv = ["--model", "amsnet", "--source", "resnet18", "--pth", str(pth), "--out", str(root / "out"),
          "--model_kwargs", '{"backbone": "resnet18"}']
  assert _cli().main(argv) == 0
  return str(root / "out"), pth


def test_cli_converts_a_source_and_records_what_it_left_out(amsnet_checkpoint):
  out, pth = amsnet_checkpoint
  loaded, meta = weights.load_variables(out)
  assert meta["model"] == "amsnet" and meta["source_model"] == "resnet18"
  assert meta["source"] == str(pth) and meta["kwargs"] == {"num_classes": 2, "backbone": "resnet18"}
  assert set(meta["init_skip"]) == AMSNET_FRESH
  assert sorted(flat(loaded)) == sorted(flat(amsnet_loaded()))
  for path, value in flat(amsnet_loaded()).items():
    np.testing.assert_array_equal(flat(loaded)[path], value, err_msg=path)


def test_cli_needs_one_pth_per_source(tmp_path, capsys):
  argv = ["--model", "yowo_cfam", "--source", "resnet18", "--source", "r3d_18",
          "--pth", str(tmp_path / "a.pth"), "--out", str(tmp_path / "out")]
  assert _cli().main(argv) == 2
  assert "one --pth per --source" in capsys.readouterr().err


def _config(init_from, init_skip=(), model="amsnet"):
  return ml_collections.ConfigDict({"model": model, "init_from": init_from, "init_skip": init_skip})


def _fresh(name, kwargs, value=7.0):
  template = weights.model_template(name, **kwargs)
  return jax.tree.map(lambda s: np.full(s.shape, value, s.dtype), template)


def test_init_from_loads_with_the_recorded_and_requested_patterns(amsnet_checkpoint, caplog, tmp_path):
  out, _ = amsnet_checkpoint
  fresh = _fresh("amsnet", AMSNET)
  caplog.set_level(logging.INFO, logger="blastjax")
  merged = pretrained.merge_init_from(_config(out), fresh)
  expected = flat(amsnet_loaded())
  kept = {p: v for p, v in flat(merged).items() if p not in expected}
  assert kept and all(p.startswith(("params/fc/", "params/mfs/", "batch_stats/mfs/")) for p in kept)
  assert all(np.all(v == 7.0) for v in kept.values())
  for path, value in expected.items():
    np.testing.assert_array_equal(flat(merged)[path], value, err_msg=path)
  assert f"{len(expected)} leaves loaded, {len(kept)} kept fresh" in caplog.text
  # The same checkpoint without the recorded patterns needs them in config.init_skip.
  loaded, meta = weights.load_variables(out)
  bare = str(tmp_path / "bare")
  weights.save_variables(bare, loaded, {k: v for k, v in meta.items() if k != "init_skip"})
  caplog.clear()
  pretrained.merge_init_from(_config(bare, tuple(sorted(AMSNET_FRESH))), fresh)
  assert "batch_stats/mfs/*" in caplog.text and "(config.init_skip)" in caplog.text


def test_init_from_without_the_needed_pattern_names_the_unfilled_leaves(amsnet_checkpoint, tmp_path):
  out, _ = amsnet_checkpoint
  loaded, meta = weights.load_variables(out)
  bare = str(tmp_path / "bare")
  weights.save_variables(bare, loaded, {k: v for k, v in meta.items() if k != "init_skip"})
  fresh = _fresh("amsnet", AMSNET)
  with pytest.raises(pretrained.InitFromError, match=r"(?s)does not fill \(\d+\): params/fc/bias; "
                                                     r"params/fc/kernel.*config\.init_skip"):
    pretrained.merge_init_from(_config(bare, ("params/mfs/*", "batch_stats/mfs/*")), fresh)
  with pytest.raises(pretrained.InitFromError, match="batch_stats/mfs/"):
    pretrained.merge_init_from(_config(bare, ("params/*",)), fresh)
  # Another backbone: the checkpoint's leaves have other shapes -- never a silent partial load.
  with pytest.raises(pretrained.InitFromError,
                     match=r"(?s)another shape \(\d+\): .*params/back/layer2_0/conv1/kernel: "
                           r"checkpoint \(3, 3, 64, 128\), model \(1, 1, 256, 128\)"):
    pretrained.merge_init_from(_config(out), _fresh("amsnet", {"backbone": "resnet50"}))


def test_training_starts_from_a_converted_backbone(tmp_path, caplog):
  """pretrained.init_variables (what train_step.build calls) with a saved conversion."""
  kwargs = {**LSTM, "backbone_stages": 1}  # stem and layer1: a quick eager init
  loaded = weights.from_torch("resnet_lstm", resnet18_state(), source="resnet18", **kwargs)
  template = weights.model_template("resnet_lstm", **kwargs)
  meta = {"model": "resnet_lstm", "init_skip": weights.left_out_patterns(template, loaded)}
  weights.save_variables(str(tmp_path / "ckpt"), loaded, meta)
  config = th.tiny_config("resnet_lstm", model_kwargs=kwargs, init_from=str(tmp_path / "ckpt"), rgb=True)
  model, spec = models.create("resnet_lstm", **kwargs), models.get_spec("resnet_lstm")
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(1, 1, 2, 32, 32, 3)).astype(np.float32),
           "mask": np.zeros((1, 1, 2), bool)}
  caplog.set_level(logging.INFO, logger="blastjax")
  variables = pretrained.init_variables(config, model, spec, batch)
  config.init_from = ""
  scratch = pretrained.init_variables(config, model, spec, batch)
  for path, value in flat(variables).items():
    np.testing.assert_array_equal(value, flat(loaded).get(path, flat(scratch)[path]), err_msg=path)
  assert f"{len(flat(loaded))} leaves loaded" in caplog.text
  assert "params/recurrence/*" in caplog.text


EMBEDDING_MODELS = [n for n in models.list_models() if models.get_spec(n).embeds]


@pytest.mark.parametrize("name", EMBEDDING_MODELS)
def test_declared_embeddings_match_the_variables(name):
  """Each leaf under a declared place is a leaf of the source model, with its shape
  (default kwargs; shapes only, so the ResNet-50 models cost no conversion)."""
  assert {"amsnet", "resnet_lstm", "resnet_gru", "tsm_resnet50", "yowo_cfam"} <= set(EMBEDDING_MODELS)
  template = weights._flat(weights.model_template(name))
  for source, places in weights.embedded_models(name).items():
    own = weights._flat(weights.model_template(source))
    for prefix, globs in places.items():
      depth = len(prefix.split("/"))
      under = {k: v for k, v in template.items() if "/".join(k[1:1 + depth]) == prefix}
      assert under, f"{name}: nothing under {prefix}"
      for key, leaf in under.items():
        inner = (key[0],) + key[1 + depth:]
        assert any(fnmatch.fnmatchcase(inner[1], g) for g in globs), key
        assert own[inner].shape == leaf.shape, key


def test_init_skip_is_checked_with_the_config():
  from blastjax import config_validation

  config = th.tiny_config("tiny_image", init_skip=("params/fc/*",))
  assert config_validation.validate(config) == []
  config.init_skip = ("params/fc/*", "")
  assert any(p.startswith("config.init_skip=") for p in config_validation.validate(config))
