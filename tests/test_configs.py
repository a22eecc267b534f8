"""Every config in configs/: loads, follows the paper's Table 2, validates, and (slow)
trains its :smoke variant for a step at tiny sizes. Config preparation: `~` in paths,
simulator options only for the synthetic dataset."""

import glob
import importlib
import os

import pytest

from blastjax.testing import tiny as th
from blastjax import config_presets, config_validation, models, train
from tests.helpers import LARGE_MODEL

CONFIG_FILES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(th.REPO, "configs", "*.py"))
                      if not os.path.basename(p).startswith("_"))
# The paper's Tables 3 and 4, plus AMSNet and the seizure-style feature LSTM.
EXPECTED = {"resnet18", "resnet50", "resnet101", "resnet152", "resnext50", "resnext101", "wide_resnet50",
            "wide_resnet101", "densenet121", "densenet169", "inception_v3", "mobilenet_v3", "vit_b_16",
            "vit_l_16", "resnet_lstm", "resnet_gru", "i3d", "r3d", "mc", "r2p1d", "mfnet", "amsnet",
            "feature_lstm"}
# Models that read cached features (extracted by I3D on first use).
FEATURE_MODELS = {"feature_lstm"}


def _config(name, arg=None):
  return importlib.import_module(f"configs.{name}").get_config(arg)


def test_one_config_per_model():
  assert set(CONFIG_FILES) == EXPECTED  # and no helper module: those live in blastjax.config_presets
  for name in CONFIG_FILES:
    with open(os.path.join(th.REPO, "configs", f"{name}.py")) as f:
      assert "from configs" not in f.read(), name  # would fail outside the repository root


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_paper_defaults_and_validation(name):
  config = _config(name)
  spec = models.get_spec(config.model)
  assert (config.learning_rate, config.weight_decay) == (1e-3, 1e-5 if name not in FEATURE_MODELS else 0.0)
  if spec.input_kind == "image":
    assert (config.batch_size, config.image_size, config.num_epochs, config.sampling) == (32, 400, 500, "last_frame")
  else:
    assert (config.batch_size, config.image_size, config.num_epochs) == (16, 224, 100)
    assert config.num_frames == (28 if name == "amsnet" else 32)
  assert config.split == "paper" and config.dataset == "synthetic"
  for variant in (None, "smoke"):
    problems = config_validation.validate(_config(name, variant), num_devices=4)
    assert problems == [], problems
  smoke = _config(name, "smoke")
  assert smoke.num_steps <= 300 and smoke.image_size <= 112 and smoke.num_frames <= 8
  with pytest.raises(ValueError, match="config argument 'huge' unknown"):
    _config(name, "huge")


def test_validation_lists_every_problem():
  config = th.tiny_config("tiny_image", learning_rate=-1.0, dtype="float16", parallel="mpi",
                          class_weights="heavy", schedule="linear")
  problems = config_validation.validate(config, num_devices=4)
  for fragment in ("learning_rate=-1.0", "dtype='float16'", "parallel='mpi'", "class_weights='heavy'",
                   "schedule='linear'"):
    assert sum(fragment in p for p in problems) == 1, (fragment, problems)
  import ml_collections
  config = ml_collections.ConfigDict({**th.tiny_config("tiny_image").to_dict(), "batch_size": "8"})
  assert config_validation.validate(config) == ["config.batch_size='8': expected int, got str"]


def test_inception_auxiliary_head_is_a_config_override():
  """Off by default (the paper's 21.79M); one override turns it on."""
  from absl import flags
  from ml_collections import config_flags

  assert _config("inception_v3").model_kwargs.aux_logits is False
  argv = ["prog", "--config", os.path.join(th.REPO, "configs", "inception_v3.py"),
          "--config.model_kwargs.aux_logits=True"]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
  values(argv)
  assert values.config.model_kwargs.aux_logits is True
  assert config_validation.validate(values.config, num_devices=4) == []


def test_prepare_expands_home_in_every_path_field(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path))
  (tmp_path / "weights").mkdir()
  (tmp_path / "export").mkdir()
  config = th.tiny_config("tiny_image", data_dir="~/tfds", manual_dir="~/export", feature_cache_dir="~/features",
                          init_from="~/weights", feature_weights="~/i3d")
  prepared = config_validation.prepare(config)
  for key in config_validation.PATH_FIELDS:
    assert prepared[key] == str(tmp_path / config[key][2:]), key
  assert config.data_dir == "~/tfds"  # a copy: the caller's config is unchanged
  assert config_validation.prepare(prepared).to_dict() == prepared.to_dict()
  assert config_validation.validate(config, num_devices=4) == []  # init_from, manual_dir found in HOME


def test_smoke_variant_reads_folder_data(tmp_path):
  """`:smoke` sizes the simulator; with --config.dataset=folder they are dropped, so the
  run reads the folder build (not one named folder_px72_min120.0_n96_p24)."""
  from tests.helpers.layouts import make_folder_tree

  from blastjax import main
  from blastjax.data import build

  data_dir = str(tmp_path / "tfds")
  export = make_folder_tree(str(tmp_path / "export"))
  assert build.main(["--config", "folder", "--manual_dir", export, "--data_dir", data_dir]) == 0
  config = _config("r2p1d", "smoke")
  config.update(dataset="folder", data_dir=data_dir)
  prepared = config_validation.prepare(config)
  assert dict(prepared.dataset_options) == {}
  main.preflight(prepared)  # today: "config.dataset='folder' is not built in .../folder_px72_..."
  builds = [n for n in os.listdir(os.path.join(data_dir, "embryo_timelapse")) if not n.startswith(".")]
  assert builds == ["folder"]
  config.dataset = "synthetic"
  assert dict(config_validation.prepare(config).dataset_options) == config_presets.SMOKE_DATASET


@pytest.fixture
def release_compiled():
  """Frees each model's compiled programs after its test: an xdist worker that kept them
  all (wide_resnet50 alone peaks at 8.5 GB on 4 devices) ran out of CI's 24 GB."""
  yield
  import gc

  import jax
  jax.clear_caches()
  gc.collect()


# Their :smoke runs peak at 5-11 GB (vit_l_16: 11.2 GB).
LARGE = {"vit_l_16", "wide_resnet101", "resnext101", "resnet152", "wide_resnet50"}


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(n, marks=LARGE_MODEL) if n in LARGE else n
                                  for n in CONFIG_FILES])
def test_smoke_variant_trains_a_step(name, tmp_path_factory, release_compiled):
  data_dir = th.build_small_dataset(str(tmp_path_factory.getbasetemp() / "configs_data"))
  config = _config(name, "smoke")
  spec = models.get_spec(config.model)
  config.unlock()
  config.update(dataset_options=dict(th.SMALL_DATASET), data_dir=data_dir, num_steps=1, batch_size=4,
                eval_batch_size=4, image_size=max(spec.min_image_size, 32), validation_fraction=0.0,
                early_hours=(), progress=False, num_frames=min(config.num_frames, 4),
                num_devices=1)  # multi-device steps have their own tests; one keeps memory low
  if config.clip_length:
    config.clip_length = config.num_frames
  assert config_validation.validate(config, 1) == []
  result = train.train_and_evaluate(config, str(tmp_path_factory.mktemp(name)))
  assert result["step"] == 1 and 0.0 <= result["accuracy"] <= 1.0
