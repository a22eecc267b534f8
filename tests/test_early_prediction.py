"""Early prediction never sees the future, and sequences with gaps anywhere train and
predict correctly.

The prediction at a cut-off of h hours is made from the batches the evaluator loads with
`observe_hours=h`; if those batches do not change when every frame after h changes, no
model can see the future. For cached features, only `sliding_windows` extraction keeps
that promise, and config validation refuses the other mode.
"""

import copy
import io

import jax
import numpy as np
import optax
import pytest
from PIL import Image

from blastjax.testing import tiny as th
from blastjax import config_validation, models, parallel, train_step
from blastjax import feature_cache
from blastjax.data import pipeline, sampling
from tests.helpers.sources import MemorySource, encode_array

CUTOFF = 9.0  # frames at about 2, 4, 6, 8 h are observed, 10 .. 20 h are the future
MODES = {
    "last_frame": dict(num_frames=1),
    "uniform": dict(num_frames=4),
    "segments": dict(num_frames=6, segment_hours=3.0),
    "clip": dict(num_frames=3, clip_length=3),
    "sliding_windows": dict(num_frames=3, clip_length=3, window_stride=1),
}


def with_future_changed(source, cutoff, seed=1):
  """A copy of `source` whose frames after `cutoff` hold other images."""
  rng = np.random.default_rng(seed)
  changed = copy.deepcopy(source)
  for example in changed.examples:
    for t in np.flatnonzero(np.asarray(example["hours"]) > cutoff):
      for p in range(example["frames"].shape[1]):
        shape = np.asarray(Image.open(io.BytesIO(example["frames"][t, p]))).shape
        example["frames"][t, p] = encode_array((rng.random(shape) * 255).astype(np.uint8))
  return changed


def load(source, mode, observe_hours):
  loader = pipeline.make_loader(source, sampling=mode, image_size=16, batch_size=4,
                                observe_hours=observe_hours, **MODES[mode])
  return [dict(batch) for batch in loader]


@pytest.fixture(scope="module")
def sources():
  source = MemorySource(num_examples=4, num_frames=10, size=24)
  return source, with_future_changed(source, CUTOFF)


@pytest.mark.parametrize("mode", sampling.MODES)
def test_batches_at_a_cutoff_do_not_depend_on_later_frames(sources, mode):
  source, changed = sources
  for ours, theirs in zip(load(source, mode, CUTOFF), load(changed, mode, CUTOFF)):
    for key in ours:
      np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f"{mode}: {key}")
    assert ours["hours"].max() <= CUTOFF
  # The comparison can fail: with every frame observed, the changed future shows.
  full, full_changed = load(source, mode, None), load(changed, mode, None)
  assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(full, full_changed))


def test_feature_steps_at_a_cutoff_do_not_depend_on_later_frames(sources):
  """sliding_windows features: a window's features use its own frames only, and the
  loader masks the windows that end after the cut-off."""
  source, changed = sources
  th.tiny_config("tiny_video")  # registers the tiny models
  settings = feature_cache.ExtractionSettings(mode="sliding_windows", clip_length=2, image_size=16,
                                              in_channels=1, batch_size=4)
  variables = feature_cache.init_extractor_variables("tiny_video", {}, settings, seed=0)

  def rows(src):
    features, hours = zip(*feature_cache.extract_features(src, variables=variables, model_name="tiny_video",
                                                          settings=settings))
    items = [{"features": f, "hours": h, "label": 0, "embryo_id": str(i), "patient_id": "p"}
             for i, (f, h) in enumerate(zip(features, hours))]
    loader = pipeline.make_feature_loader(_Items(items), batch_size=4, observe_hours=CUTOFF)
    return [dict(b) for b in loader], features

  (ours, full), (theirs, full_changed) = rows(source), rows(changed)
  for a, b in zip(ours, theirs):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert any(not np.array_equal(a, b) for a, b in zip(full, full_changed))


class _Items:
  def __init__(self, items):
    self.items = items
    self.max_steps = max(len(i["hours"]) for i in items)

  def __len__(self):
    return len(self.items)

  def __getitem__(self, index):
    return self.items[index]


def test_early_hours_with_uniform_features_is_refused():
  config = th.tiny_config("feature_lstm")
  config.sampling = "uniform"
  config.early_hours = (30.0,)
  problems = config_validation.validate(config, num_devices=1)
  assert any("early_hours" in p and "sliding_windows" in p for p in problems), problems
  config.sampling = "sliding_windows"
  assert not any("early_hours" in p for p in config_validation.validate(config, num_devices=1))


class LateStartWithGap(MemorySource):
  """Imaging starts at 14 h and stops between 18 h and 31 h: of twelve 3 h segments the
  first four are padding (a late start), three valid, three padded (the gap), two valid."""

  def __init__(self):
    super().__init__(num_examples=2, num_frames=10, size=24)
    for example in self.examples:
      example["hours"] = np.array([14, 15, 16, 17, 18, 31, 32, 33, 34, 35], np.float32)
      example["label"] = int(example["embryo_id"][1:]) % 2


def test_per_step_model_with_leading_and_middle_gaps_trains_and_predicts_causally():
  """AMSNet on 3 h segments with a late start and an imaging gap: the train step's loss
  and update ignore padded content; the prediction at 33 h ignores later frames and
  depends on the last frame before it."""
  source = LateStartWithGap()
  options = dict(sampling="segments", num_frames=12, segment_hours=3.0, image_size=32,
                 focal_planes="axis", batch_size=2, num_devices=1)
  batch = dict(next(iter(pipeline.make_loader(source, **options))))
  mask = batch["mask"][0]
  assert mask[:, :4].all() and not mask[:, 4:7].any() and mask[:, 7:10].all() and not mask[:, 10:].any()

  model = models.create("amsnet", backbone="resnet18", dropout_rate=0.0)
  sc = train_step.StepConfig("video_focal", per_step=True)
  variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, mask=mask[:1]))(batch["image"][0, :1])
  tx = optax.adam(1e-3)
  runner = parallel.Runner(train_step.make_train_step(model, tx, sc), train_step.make_eval_step(model, sc),
                             "pmap", devices=jax.devices()[:1])

  def step(b):
    state = runner.put_state(train_step.init_state(model, tx, dict(variables), seed=0))
    new_state, metrics = runner.train_step(state, b)
    return runner.host_state(new_state), parallel.metrics_to_host(metrics)

  noisy = {k: v.copy() for k, v in batch.items()}
  noisy["image"][0][mask] = 9.0 * np.random.default_rng(3).standard_normal(noisy["image"][0][mask].shape)
  (state_a, metrics_a), (state_b, metrics_b) = step(batch), step(noisy)
  assert metrics_a["loss"] == pytest.approx(metrics_b["loss"], abs=1e-6)
  for a, b in zip(jax.tree.leaves(state_a["params"]), jax.tree.leaves(state_b["params"])):
    np.testing.assert_allclose(a, b, atol=1e-6)

  state = runner.put_state(train_step.init_state(model, tx, dict(variables), seed=0))

  def probs_at(src, cutoff):
    return runner.eval_step(state, dict(next(iter(pipeline.make_loader(src, observe_hours=cutoff,
                                                                       **options)))))

  at_33 = probs_at(source, 33.0)
  assert np.isfinite(at_33).all()
  future = copy.deepcopy(source)
  for example in future.examples:
    example["frames"][8:] = example["frames"][0]   # 34 h and 35 h changed
  np.testing.assert_allclose(probs_at(future, 33.0), at_33, atol=1e-6)
  last_seen = copy.deepcopy(source)
  for example in last_seen.examples:
    example["frames"][7] = example["frames"][0]    # 33 h changed
  assert np.abs(probs_at(last_seen, 33.0) - at_33).max() > 1e-6
