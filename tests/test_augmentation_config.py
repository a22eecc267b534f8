"""`config.augmentation`: named presets (the papers' augmentations) with overridable
fields, resolved from the config and the command line, validated, and reaching the
training and evaluation loaders (rendered crops, Hara's temporal scales)."""

import dataclasses
import io
import re

import numpy as np
import pytest
from PIL import Image

from blastjax import config_presets, config_validation, train_data
from blastjax.data import augment, ops, pipeline, sampling

HARA = {round(s, 6) for s in augment.HARA_SCALES}


def _config(preset=None, **fields):
  config = config_presets.multi_frame("r3d_18", num_devices=1)
  if preset:
    config.augmentation.preset = preset
  for name, value in fields.items():
    config.augmentation[name] = value
  return config


def _parse(tmp_path, *overrides):
  """The config of a config file plus `--config...` overrides, parsed as blastjax.main does."""
  from absl import flags
  from ml_collections import config_flags

  path = tmp_path / "config.py"
  path.write_text("from blastjax import config_presets\n\n\ndef get_config():\n"
                  "  return config_presets.multi_frame('r3d_18', num_devices=1)\n")
  argv = ["prog", "--config", str(path), *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
  values(argv)
  return values.config


def test_each_preset_resolves_to_its_paper_fields():
  benchmark = augment.resolve(_config().augmentation)
  assert benchmark == dataclasses.replace(augment.AugmentConfig(), center_scale=0.875)  # today's draws
  hara = augment.resolve(_config("hara").augmentation)
  assert (hara.crop, hara.scales, hara.center_scale, hara.hflip_prob) == ("multiscale", augment.HARA_SCALES, 1.0, 0.5)
  assert (hara.rotation_degrees, hara.brightness, hara.contrast, hara.vflip_prob, hara.temporal_scales) == \
      (0.0, 0.0, 0.0, 0.0, (1.0,))
  spatiotemporal = augment.resolve(_config("hara_spatiotemporal").augmentation)
  assert spatiotemporal == dataclasses.replace(hara, temporal_scales=(3.0, 2.0, 1.0, 0.5, 1 / 3))
  amsnet = augment.resolve(_config("amsnet").augmentation)
  assert (amsnet.crop, amsnet.random_scale, amsnet.center_scale) == ("random", 0.875, 0.875)
  assert (amsnet.rotation_degrees, amsnet.hflip_prob, amsnet.brightness, amsnet.contrast) == (0, 0, 0, 0)
  none = augment.resolve(_config("none").augmentation)
  assert none.identity and none.center_scale == 1.0
  assert sorted(augment.PRESETS) == sorted(["benchmark", "hara", "hara_spatiotemporal", "amsnet", "none"])


def test_fields_override_the_preset_and_none_follows_it():
  config = _config("hara", hflip_prob=0, scales=[1, 0.5])
  resolved = augment.resolve(config.augmentation)
  assert resolved == dataclasses.replace(augment.hara(), hflip_prob=0.0, scales=(1.0, 0.5))
  config.augmentation.preset = "benchmark"  # the overrides stay, everything else follows the preset
  resolved = augment.resolve(config.augmentation)
  assert resolved == dataclasses.replace(augment.benchmark(), hflip_prob=0.0, scales=(1.0, 0.5))
  # config.json round trip (plain None, lists): the same config
  again = config_validation.prepare(config)
  assert augment.resolve(again.augmentation) == resolved


def test_cli_override_parses_and_reaches_both_loaders(tmp_path, monkeypatch):
  config = _parse(tmp_path, "--config.augmentation.preset=hara", "--config.augmentation.hflip_prob=0",
                  "--config.augmentation.temporal_scales=(1.0, 2.0)", "--config.sampling=clip",
                  "--config.eval_sampling=sliding_windows")
  assert config.augmentation.hflip_prob == 0.0 and config.augmentation.rotation_degrees is None
  assert config_validation.validate(config, num_devices=4) == []
  calls = []
  monkeypatch.setattr(train_data.pipeline, "make_loader", lambda source, **kwargs: calls.append(kwargs))
  data = train_data.Data(None, np.arange(4), np.arange(2), np.arange(0), np.zeros(4), np.zeros(4), np.zeros(4))
  train_data.make_loader(config, data, data.train, train=True)
  train_data.make_loader(config, data, data.test, train=False)
  expected = dataclasses.replace(augment.hara(), hflip_prob=0.0, temporal_scales=(1.0, 2.0))
  assert [c["augment_config"] for c in calls] == [expected, expected]
  assert [c["augment"] for c in calls] == [True, False]  # evaluation: the centre crop of `expected`
  config = _parse(tmp_path, "--config.augment=False")
  assert train_data.loader_options(config, train=True)["augment_config"] == augment.none()


@pytest.mark.parametrize("overrides, message", [
    (["--config.augmentation.preset=hare"], "config.augmentation.preset='hare': unknown; choose from benchmark"),
    (["--config.augmentation.hflip_prob=1.5"], r"config.augmentation.hflip_prob=1.5: must be in \[0, 1\]"),
    (["--config.augmentation.scales=(1.0, 2.0)"], r"config.augmentation.scales=\(1.0, 2.0\): need values in"),
    (["--config.augmentation.crop=zoom"], "config.augmentation.crop='zoom': unknown; choose from center"),
    (["--config.augmentation.preset=hara_spatiotemporal"],
     "config.augmentation.temporal_scales=.* with sampling='uniform': temporal scales resample clips"),
])
def test_validation_names_the_field(tmp_path, overrides, message):
  problems = config_validation.validate(_parse(tmp_path, *overrides), num_devices=4)
  assert len(problems) == 1 and re.search(message, problems[0]), problems


def test_unknown_field_is_one_line():
  config = _config()
  config.augmentation.rotate = 3.0
  assert config_validation.validate(config, num_devices=4) == [
      f"config.augmentation.rotate: unknown field 'rotate'; known: {', '.join(sorted(augment.FIELDS))}"]


# ------------------------------------------------------------------- the loaders' output


def _png(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


class GradientSource:
  """Square 200 px frames whose value is the column (0..199): a crop's width shows in
  the range of a rendered row, a rotation in rows that differ."""

  def __init__(self, num_examples=40, num_frames=60):
    frame = _png(np.tile(np.arange(200, dtype=np.uint8), (200, 1)))
    frames = np.full((num_frames, 1), frame, object)
    self.examples = [{"embryo_id": f"E{i}", "patient_id": f"P{i}", "label": i % 2, "frames": frames,
                      "hours": np.arange(num_frames, dtype=np.float32) + 10.0, "focal_planes": np.zeros(1, np.int32),
                      "events": {}, "source": "memory"} for i in range(num_examples)]

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, index):
    return self.examples[index]


def _batches(config, train, num_examples=40):
  source = GradientSource(num_examples)
  data = train_data.Data(source, np.arange(num_examples), np.arange(num_examples), np.arange(0),
                         np.zeros(num_examples), np.zeros(num_examples), np.zeros(num_examples))
  loader = train_data.make_loader(config, data, data.train if train else data.test, train=train)
  iterator = iter(loader)
  batches = [next(iterator) for _ in range(num_examples // config.batch_size)]
  iterator.close()
  return batches


def _tiny(preset, **overrides):
  config = _config(preset)
  config.update(dict(num_frames=2, image_size=32, normalization="none", rgb=False, batch_size=8,
                     eval_batch_size=8), **overrides)
  return config


def test_hara_preset_renders_hara_scales_without_rotation():
  config = _tiny("hara")
  images = np.concatenate([b["image"][0] for b in _batches(config, train=True)])[:, 0, ..., 0]  # [N, H, W]
  np.testing.assert_allclose(images, np.broadcast_to(images[:, :1], images.shape), atol=1e-6)  # no rotation
  scales = np.abs(images[:, 0, -1] - images[:, 0, 0]) * 255 / (200 * 31 / 32)
  nearest = np.array([min(augment.HARA_SCALES, key=lambda s: abs(s - x)) for x in scales])
  assert np.all(np.abs(scales - nearest) < 0.03), scales
  assert {round(s, 6) for s in nearest} == HARA
  # the drawn Params of the ops the run builds: Hara's scales, no angle, no jitter
  options = train_data.loader_options(config, train=True)
  del options["worker_count"]
  draw = ops.image_ops(augment=True, observe_hours=None, random_sampling=None, **options)[1]
  params = [draw({}, np.random.default_rng(i))["_params"] for i in range(200)]
  assert {round(p.scale, 6) for p in params} == HARA
  assert {p.angle for p in params} == {0.0} and {(p.brightness, p.contrast) for p in params} == {(1.0, 1.0)}
  # evaluation: the centred crop at full scale (the whole 200 px row)
  evaluation = _batches(config, train=False)[0]["image"][0, :, 0, ..., 0]
  np.testing.assert_allclose(np.abs(evaluation[:, 0, -1] - evaluation[:, 0, 0]) * 255 / (200 * 31 / 32), 1.0,
                             atol=0.03)


def test_benchmark_rotates_and_evaluates_at_its_training_scale():
  config = _tiny(None)
  images = np.concatenate([b["image"][0] for b in _batches(config, train=True)])[:, 0, ..., 0]
  assert np.abs(images - images[:, :1, :]).max() > 0.1  # rotated
  evaluation = _batches(config, train=False)[0]["image"][0, :, 0, ..., 0]
  np.testing.assert_allclose(np.abs(evaluation[:, 0, -1] - evaluation[:, 0, 0]) * 255 / (200 * 31 / 32), 0.875,
                             atol=0.03)


# ------------------------------------------------------------------- temporal scales


def _pattern(scale, length):
  span = sampling.temporal_span(length, scale)
  return tuple((np.arange(length) * span) // length)


@pytest.mark.parametrize("scale, offsets", [
    (1.0, [0, 1, 2, 3, 4, 5, 6, 7]), (2.0, [0, 2, 4, 6, 8, 10, 12, 14]), (3.0, [0, 3, 6, 9, 12, 15, 18, 21]),
    (0.5, [0, 0, 1, 1, 2, 2, 3, 3]), (1 / 3, [0, 0, 0, 1, 1, 1, 2, 2])])
def test_clip_frame_spacing_follows_the_temporal_scale(scale, offsets):
  indices, mask = sampling.clip(100, 8, np.random.default_rng(0), temporal_scale=scale)
  np.testing.assert_array_equal(indices - indices[0], offsets)
  assert not mask.any()
  center, _ = sampling.clip(100, 8, None, temporal_scale=scale)
  assert center[0] == (100 - sampling.temporal_span(8, scale)) // 2
  looped, _ = sampling.clip(2, 8, None, temporal_scale=scale)  # short sequences loop the span
  np.testing.assert_array_equal(looped, np.array(offsets) % 2)


def test_plain_clip_draws_are_unchanged():
  for seed in range(5):
    old_start = int(np.random.default_rng(seed).integers(0, 100 - 8 + 1))
    indices, _ = sampling.clip(100, 8, np.random.default_rng(seed))
    np.testing.assert_array_equal(indices, old_start + np.arange(8))


def test_hara_spatiotemporal_clips_in_the_loader():
  config = _tiny("hara_spatiotemporal", sampling="clip", num_frames=8, eval_sampling="sliding_windows")
  assert config_validation.validate(config, num_devices=1) == []
  hours = np.concatenate([b["hours"][0] for b in _batches(config, train=True)])
  patterns = {s: _pattern(s, 8) for s in augment.HARA_TEMPORAL_SCALES}
  seen = {next(s for s, p in patterns.items() if tuple((row - row[0]).astype(int)) == p) for row in hours}
  assert seen == set(augment.HARA_TEMPORAL_SCALES)
  evaluation = _batches(config, train=False)[0]["hours"][0]
  np.testing.assert_array_equal(np.diff(evaluation, axis=1), 1.0)  # evaluation: scale 1


def test_temporal_scales_only_with_clips():
  with pytest.raises(ValueError, match=r"augment_config.temporal_scales=.*sampling='uniform'"):
    pipeline.make_loader(GradientSource(2), augment=True, augment_config=augment.hara_spatiotemporal())
  pipeline.make_loader(GradientSource(2), augment=False, augment_config=augment.hara_spatiotemporal())


def test_temporal_scales_independent_of_workers_and_resume():
  from tests.helpers.sources import assert_same_batches as _assert_same, resume_matches as _resume_matches

  source = GradientSource(12, num_frames=30)
  kwargs = dict(sampling="clip", num_frames=6, image_size=8, batch_size=4, augment=True, shuffle=True,
                num_epochs=2, seed=3, augment_config=augment.hara_spatiotemporal())
  with_workers = _resume_matches(source, 2, **kwargs)
  without = [dict(b) for b in pipeline.make_loader(source, worker_count=0, **kwargs)]
  _assert_same(without, [dict(b) for b in with_workers])
  spans = {tuple(row - row[0]) for b in without for row in b["hours"]}
  assert len(spans) > 1  # several temporal scales drawn
