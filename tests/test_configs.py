"""Every config in configs/: loads, follows its paper (the benchmark's Table 2 and
protocol, Hara, AMSNet, the seizure paper, YOWO), validates with every variant, parses
its argument (`:smoke,planes=3`), states parameter counts that the models confirm, and
(slow) trains its :smoke variant for a step at tiny sizes. Config preparation: `~` in
paths, simulator options only for the synthetic dataset."""

import glob
import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blastjax.testing import tiny as th
from blastjax import config_presets, config_validation, evaluate, models, train, train_step

CONFIG_FILES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(th.REPO, "configs", "*.py"))
                      if not os.path.basename(p).startswith("_"))
# The benchmark paper's Tables 3 and 4 (its protocol: no validation, the last checkpoint).
BENCHMARK = {"resnet18", "resnet50", "resnet101", "resnet152", "resnext50", "resnext101", "wide_resnet50",
             "wide_resnet101", "densenet121", "densenet169", "inception_v3", "mobilenet_v3", "vit_b_16",
             "vit_l_16", "resnet_lstm", "resnet_gru", "i3d", "r3d", "mc", "r2p1d", "mfnet"}
# The other papers: AMSNet, the seizure I3D+LSTM (and the generic feature LSTM), Hara's
# 3D ResNets, the restaurant paper's YOWO-CFAM and ConvLSTM.
EXPECTED = BENCHMARK | {"amsnet", "feature_lstm", "seizure_i3d_lstm", "hara_resnet3d", "yowo_cfam",
                        "resnet_convlstm"}
# Every variant of each config file (besides none and smoke), validated with and without smoke.
VARIANTS = {
    **{name: ["select"] for name in BENCHMARK},
    "resnet_lstm": ["select", "count", "conv", "count,select"],
    "resnet_gru": ["select", "count", "conv", "count,select"],
    "resnet_convlstm": ["select", "bidirectional"],
    "amsnet": ["baseline", "tsm", "tsm,planes=3", "tsm,planes=5", "tsm,planes=7", "channel,planes=3",
               "channel,planes=5", "channel", "full,planes=3", "full,planes=5", "full,planes=7"],
    "hara_resnet3d": ["depth=34", "depth=50", "finetune", "finetune,depth=50,freeze=layer3"],
}
# Parameter counts the docstrings state: (config, argument) -> count.
COUNTS = {("resnet_lstm", None): 34_004_034, ("resnet_lstm", "count"): 22_191_106,
          ("resnet_lstm", "conv"): 69_517_378, ("resnet_gru", None): 31_380_546,
          ("resnet_gru", "count"): 19_554_114, ("resnet_gru", "conv"): 55_361_090,
          ("resnet_convlstm", None): 46_512_706, ("resnet_convlstm", "bidirectional"): 69_517_378,
          ("yowo_cfam", None): 65_323_523, ("seizure_i3d_lstm", None): 646_337}


def _config(name, arg=None):
  return importlib.import_module(f"configs.{name}").get_config(arg)


def _doc(name):
  return importlib.import_module(f"configs.{name}").__doc__


def _all_args():
  for name in CONFIG_FILES:
    for arg in [None, "smoke"] + VARIANTS.get(name, []):
      yield name, arg
    for arg in VARIANTS.get(name, []):
      yield name, f"smoke,{arg}"


def test_one_config_per_model():
  assert set(CONFIG_FILES) == EXPECTED  # and no helper module: those live in blastjax.config_presets
  for name in CONFIG_FILES:
    with open(os.path.join(th.REPO, "configs", f"{name}.py")) as f:
      assert "from configs" not in f.read(), name  # would fail outside the repository root


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_defaults_smoke_sizes_and_unknown_argument(name):
  smoke = _config(name, "smoke")
  assert smoke.num_steps <= 300 and smoke.image_size <= 112 and smoke.num_frames <= 8
  assert smoke.dataset == "synthetic" and _config(name).dataset == "synthetic"
  with pytest.raises(config_presets.ConfigArgumentError, match="config argument 'huge' unknown; choose none"):
    _config(name, "huge")


@pytest.mark.parametrize("name,arg", list(_all_args()), ids=lambda v: str(v))
def test_every_variant_validates(name, arg):
  config = _config(name, arg)
  problems = config_validation.validate(config, num_devices=4 if config.batch_size % 4 == 0 else None)
  assert problems == [], problems


@pytest.mark.parametrize("name", sorted(BENCHMARK))
def test_benchmark_paper_setup_and_protocol(name):
  """Table 2 and the protocol: half/half split, no validation, the last checkpoint."""
  config = _config(name)
  spec = models.get_spec(config.model)
  assert (config.optimizer, config.learning_rate, config.weight_decay) == ("adamw", 1e-3, 1e-5)
  if spec.input_kind == "image":
    assert (config.batch_size, config.image_size, config.num_epochs, config.sampling) == (32, 400, 500, "last_frame")
  else:
    assert (config.batch_size, config.image_size, config.num_epochs, config.num_frames) == (16, 224, 100, 32)
  assert (config.split, config.validation_fraction, config.eval_checkpoint) == ("paper", 0.0, "last")
  select = _config(name, "select")
  assert (select.validation_fraction, select.eval_checkpoint, select.best_metric) == (0.1, "best", "auc")
  assert ":select" in _doc(name)


def test_hara_protocol():
  config = _config("hara_resnet3d")
  assert config.model == "hara_resnet3d_18"
  assert (config.optimizer, config.learning_rate, config.momentum, config.weight_decay) == ("sgd", 0.03, 0.9, 1e-3)
  assert (config.batch_size, config.num_frames, config.clip_length, config.image_size) == (128, 16, 16, 112)
  assert (config.schedule, config.plateau_factor, config.plateau_patience, config.eval_every_steps) == \
      ("plateau", 0.1, 10, 0)
  assert config.validation_fraction > 0 and config.num_epochs == 250 and config.augmentation.preset == "hara"
  assert (config.sampling, config.eval_sampling, config.window_stride) == ("clip", "sliding_windows", 0)
  tuned = _config("hara_resnet3d", "finetune,depth=50")
  assert (tuned.model, tuned.learning_rate, tuned.freeze, tuned.num_epochs) == ("hara_resnet3d_50", 3e-4, "layer4", 100)
  assert _config("hara_resnet3d", "finetune,freeze=layer3").freeze == "layer3"
  assert models.create("hara_resnet3d_18").shortcut_type == "A"
  assert models.create("hara_resnet3d_34").shortcut_type == "B"


def test_amsnet_protocol_and_ablation_rows():
  config = _config("amsnet")
  assert (config.num_frames, config.segment_hours, config.sampling) == (28, 6.0, "segments")
  assert (config.rgb, config.focal_planes, config.optimizer, config.augmentation.preset) == \
      (False, "axis", "sgd", "amsnet")
  assert config.early_hours == tuple(12.0 * d for d in range(1, 15))  # Day 0.5 .. Day 7
  assert {72.0, 96.0, 120.0} <= set(config.early_hours)  # the ROC AUC at Days 3, 4, 5
  rows = {arg: dict(_config("amsnet", arg).model_kwargs) for arg in ("baseline", "tsm,planes=5", "channel", "full")}
  assert rows["baseline"] == dict(shift="none", channel_attention=False, spatial_attention=False, num_planes=1)
  assert rows["tsm,planes=5"] == dict(channel_attention=False, spatial_attention=False, num_planes=5)
  assert rows["channel"] == dict(spatial_attention=False, num_planes=7)
  assert rows["full"] == dict(num_planes=7) == dict(_config("amsnet").model_kwargs)
  assert _config("amsnet", "smoke,planes=7").model_kwargs.num_planes == 3  # the synthetic set has 3 planes


def test_seizure_protocol_one_output():
  config = _config("seizure_i3d_lstm")
  assert (config.model, config.loss, config.class_weights) == ("feature_lstm", "weighted_mse", "balanced")
  assert (config.optimizer, config.learning_rate, config.num_epochs) == ("adam", 1e-3, 2000)
  assert config.kernel_l2 > 0 and config.weight_decay == 0.0
  assert (config.split, config.num_folds, config.best_metric) == ("patient", 5, "f1_macro")
  model, _ = train_step.create_model(config)
  assert model.num_classes == 1  # the paper's single sigmoid unit


@pytest.mark.parametrize("arg,message", [
    ("smoke,planes=4", "config argument planes=4: choose one of 0, 1, 3, 5, 7"),
    ("planes=three", "config argument planes='three': expected int"),
    ("channel,planes=1", "config argument planes=1 with 'channel': Table 1 has this row with 3, 5, 7 planes"),
    ("tsm,baseline", "config argument baseline,tsm: choose one Table 1 row"),
    ("row=tsm", "config argument 'row=tsm' unknown: no parameter 'row'"),
    ("smoke,huge", "config argument 'huge' unknown; choose none (the paper's setup) or 'smoke', 'baseline'"),
])
def test_bad_arguments_are_one_line(arg, message):
  with pytest.raises(config_presets.ConfigArgumentError) as error:
    _config("amsnet", arg)
  assert str(error.value).startswith(message) and "\n" not in str(error.value), str(error.value)


def test_argument_parsing():
  params = {"depth": config_presets.Param(18, (18, 34)), "rate": config_presets.Param(0.5),
            "flag": config_presets.Param(False), "name": config_presets.Param("a")}
  a = config_presets.parse_arg(" smoke, depth=34,rate=1,flag=TRUE ,name=b c,", {"x": "an x"}, params)
  assert a.variants == {"smoke"} and a.params == {"depth": 34, "rate": 1.0, "flag": True, "name": "b c"}
  assert a.given == {"depth", "rate", "flag", "name"} and "smoke" in a and "x" not in a
  assert config_presets.parse_arg(None, {}, params).params == {"depth": 18, "rate": 0.5, "flag": False, "name": "a"}
  assert config_presets.parse_arg("", {}, {}).variants == frozenset()
  for bad, message in [("depth=20", "depth=20: choose one of 18, 34"), ("flag=1", "flag=1: expected bool"),
                       ("rate=fast", "rate='fast': expected float"), ("depth=true", "depth=True: expected int"),
                       ("y", "'y' unknown; choose none (the paper's setup) or 'smoke', 'x' (an x); parameters:")]:
    with pytest.raises(config_presets.ConfigArgumentError) as error:
      config_presets.parse_arg(bad, {"x": "an x"}, params)
    assert str(error.value).startswith("config argument " + message), (bad, str(error.value))
  with pytest.raises(config_presets.ConfigArgumentError, match="config argument freeze=layer3: only 'finetune'"):
    _config("hara_resnet3d", "freeze=layer3")
  with pytest.raises(config_presets.ConfigArgumentError, match="choose one network"):
    _config("resnet_lstm", "count,conv")
  with pytest.raises(config_presets.ConfigArgumentError, match="depth=20: choose one of 18, 34, 50"):
    _config("hara_resnet3d", "smoke,depth=20")


@pytest.mark.parametrize("name,arg", sorted(COUNTS, key=str), ids=str)
def test_docstring_parameter_counts(name, arg):
  """The counts a config's docstring states are the model's (jax.eval_shape, no compute)."""
  count = COUNTS[(name, arg)]
  assert f"{count:,}" in _doc(name)
  assert train_step.count_parameters(_config(name, arg)) == count


@pytest.mark.parametrize("name,arg", [(n, a) for n, a in _all_args() if a and "smoke" in a and "select" not in a],
                         ids=str)
def test_every_smoke_variant_builds(name, arg):
  """Every smoke variant's model is built and initialised abstractly (one training step
  per config file is test_smoke_variant_trains_a_step's)."""
  assert train_step.count_parameters(_config(name, arg)) > 0


def test_amsnet_table1_area_is_reproduced():
  """area_under_accuracy_curve_from_0h of Table 1's accuracies (Day 0.5 .. 7) is its "AUC"."""
  rows = {0.6987: [62.15, 64.24, 68.40, 70.83, 71.88, 71.60, 69.69, 74.74, 77.18, 81.04, 80.99, 82.33, 84.21, 100.0],
          0.7633: [67.88, 72.57, 75.00, 76.91, 76.39, 78.40, 78.57, 82.23, 84.15, 88.55, 91.83, 89.27, 90.88, 100.0]}
  n = 10_000
  labels = np.arange(n) % 2
  for area, accuracies in rows.items():
    by_hours = {}
    for hours, accuracy in zip(_config("amsnet").early_hours, accuracies):
      right = int(round(accuracy / 100 * n))
      by_hours[hours] = np.where(np.arange(n) < right, labels, 1 - labels).astype(float)
    curve = evaluate.early_prediction(labels, by_hours)
    assert curve["area_under_accuracy_curve_from_0h"] == pytest.approx(area, abs=1e-4)
    assert curve["area_under_accuracy_curve"] == pytest.approx(area * 168 / 156, abs=1e-4)


def test_amsnet_ablation_switches():
  """shift='none': each step sees only its frame; num_planes keeps the central planes."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(1, 3, 3, 32, 32, 1)), jnp.float32)
  common = dict(backbone="resnet18", channel_attention=False, spatial_attention=False)
  central = models.create("amsnet", num_planes=1, **common)
  # Positive random variables from the shapes: model.init of a ResNet takes ~30 s on CPU.
  shapes = jax.eval_shape(central.init, jax.random.PRNGKey(0), x)
  variables = jax.tree.map(lambda s: jnp.asarray(rng.uniform(0.01, 0.1, s.shape), jnp.float32), shapes)
  alone = models.create("amsnet", **common).apply(variables, x[:, :, 1:2])
  np.testing.assert_allclose(central.apply(variables, x), alone, atol=1e-5)
  both = jnp.concatenate([x, x.at[:, 0].set(0.0)])  # the second sequence's first frame changed
  for shift, same in (("none", True), ("online", False)):
    model = models.create("amsnet", shift=shift, num_planes=1, **common)
    out = model.apply(variables, both)  # no shift, no parameters: the same variables
    diff = float(jnp.abs(out[0, 2] - out[1, 2]).max())
    assert (diff < 1e-6) == same, (shift, diff)
  with pytest.raises(ValueError, match="num_planes=5: the input has only 3 focal planes"):
    models.create("amsnet", num_planes=5, **common).init(jax.random.PRNGKey(0), x)


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


# The large nets' configs are validated and built by the tests above, and their models
# train in their own files; a whole smoke run of them beside the other xdist worker's test
# crashed a worker on CI's 24 GB twice on 2026-12-02 (vit_l_16 peaks at 12.5 GB alone).
@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in CONFIG_FILES if n not in LARGE])
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
