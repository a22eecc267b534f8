"""The train step: one device == 4 devices with pmap == 4 with shard_map; masked
per-step loss; freezing; non-finite handling; optimizer pieces."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from blastjax.testing import tiny as th
from blastjax import models, optim, pretrained, train_step
from blastjax import parallel as parallel_lib
from blastjax.models import registry

# float32 on CPU; the 4-device runs sum partial gradients in another order. Dropout is
# off in the comparison (its masks are drawn per device) and so is BatchNorm (its
# statistics are per device, as torch DDP without SyncBN): the two intended differences.
TOLERANCE = 2e-5


def _batch(num_devices, per_device, frames=None, size=12, seed=0, invalid_rows=1):
  rng = np.random.default_rng(seed)
  total = num_devices * per_device
  shape = (total, size, size, 1) if frames is None else (total, frames, size, size, 1)
  mask = np.zeros((total, frames or 1), bool)
  if frames:
    mask[::2, frames - 1:] = True
  valid = np.ones(total, bool)
  if invalid_rows:
    valid[-invalid_rows:] = False
  batch = {"image": rng.normal(size=shape).astype(np.float32), "mask": mask,
           "label": (np.arange(total) % 2).astype(np.int32), "valid": valid,
           "example_index": np.arange(total, dtype=np.int32)}
  return {k: v.reshape((num_devices, per_device) + v.shape[1:]) for k, v in batch.items()}


def _setup(name="tiny_image", frames=None, freeze="", skip_nonfinite=False, **model_kwargs):
  config = th.tiny_config(name, freeze=freeze, skip_nonfinite=skip_nonfinite)
  model = models.create(name, **model_kwargs)
  spec = models.get_spec(name)
  sample = _batch(1, 2, frames)
  x, mask = spec.inputs({k: v[0] for k, v in sample.items()})
  variables = jax.tree.map(np.asarray, dict(model.init({"params": jax.random.PRNGKey(0)}, x, mask=mask)))
  tx = optim.make_optimizer(config, variables["params"], total_steps=10, steps_per_epoch=2)
  sc = train_step.StepConfig(spec.input_kind, spec.per_step, skip_nonfinite=skip_nonfinite)
  state = train_step.init_state(model, tx, variables, seed=0)
  return model, tx, sc, state


def _run(parallel, devices, batches, name="tiny_image", frames=None, **kwargs):
  model, tx, sc, state = _setup(name, frames, **kwargs)
  runner = parallel_lib.Runner(train_step.make_train_step(model, tx, sc), train_step.make_eval_step(model, sc),
                             parallel, devices=devices)
  state = runner.put_state(state)
  metrics = []
  for batch in batches:
    state, m = runner.train_step(state, batch)
    metrics.append(parallel_lib.metrics_to_host(m))
  return runner.host_state(state), metrics


def _max_diff(a, b):
  return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_one_device_pmap_and_shard_map_agree(name="tiny_per_step", frames=3):
  devices = jax.devices()
  assert len(devices) == 4
  global_batches = [_batch(4, 2, frames, seed=s) for s in range(2)]
  as_one = [{k: v.reshape((1, 8) + v.shape[2:]) for k, v in b.items()} for b in global_batches]
  one, m1 = _run("pmap", devices[:1], as_one, name, frames, batch_norm=False, dropout=0.0)
  pmapped, m2 = _run("pmap", devices, global_batches, name, frames, batch_norm=False, dropout=0.0)
  sharded, m3 = _run("shard_map", devices, global_batches, name, frames, batch_norm=False, dropout=0.0)
  assert int(one["step"]) == int(pmapped["step"]) == int(sharded["step"]) == 2
  assert _max_diff(one["params"], pmapped["params"]) < TOLERANCE
  assert _max_diff(one["params"], sharded["params"]) < TOLERANCE
  assert _max_diff(one["opt_state"], pmapped["opt_state"]) < TOLERANCE
  assert _max_diff(one["opt_state"], sharded["opt_state"]) < TOLERANCE
  np.testing.assert_allclose([m["loss"] for m in m1], [m["loss"] for m in m3], rtol=1e-5)
  # The parameters moved: the comparison is not between two untouched states.
  start = _setup(name, frames, batch_norm=False, dropout=0.0)[3]
  assert _max_diff(start["params"], one["params"]) > 1e-4


def test_per_device_batch_norm_statistics_are_averaged():
  devices = jax.devices()
  state, _ = _run("pmap", devices, [_batch(4, 2)])
  stacked, _ = _run("shard_map", devices, [_batch(4, 2)])
  assert _max_diff(state["batch_stats"], stacked["batch_stats"]) < TOLERANCE
  assert float(np.abs(state["batch_stats"]["bn1"]["mean"]).max()) > 0


def test_invalid_rows_and_padded_steps_do_not_change_the_update():
  devices = jax.devices()[:2]
  batch = _batch(2, 2, frames=3, invalid_rows=1)
  changed = {k: v.copy() for k, v in batch.items()}
  changed["image"][-1, -1] += 100.0       # the invalid row
  changed["image"][0, 0, -1] -= 50.0      # a padded step of row 0 (mask[0, 2] is True)
  a, _ = _run("pmap", devices, [batch], "tiny_per_step", 3, batch_norm=False)
  b, _ = _run("pmap", devices, [changed], "tiny_per_step", 3, batch_norm=False)
  assert _max_diff(a["params"], b["params"]) < 1e-6


def test_final_logits_takes_the_last_valid_step():
  logits = jnp.arange(2 * 4 * 2, dtype=jnp.float32).reshape(2, 4, 2)
  mask = jnp.asarray([[False, False, True, True], [False, False, False, False]])
  out = registry.final_logits(logits, mask, per_step=True)
  np.testing.assert_array_equal(out, np.stack([logits[0, 1], logits[1, 3]]))


def test_freeze_keeps_lower_layers_fixed():
  devices = jax.devices()[:1]
  start = _setup(freeze="layer1")[3]
  state, _ = _run("pmap", devices, [_batch(1, 4)], freeze="layer1")
  assert _max_diff(start["params"]["conv1"], state["params"]["conv1"]) == 0.0
  assert _max_diff(start["params"]["layer1"], state["params"]["layer1"]) > 0.0
  with pytest.raises(ValueError, match="matches no module"):
    _setup(freeze="layer9")


def test_non_finite_step_is_flagged_and_can_be_skipped():
  devices = jax.devices()[:1]
  bad = _batch(1, 4)
  bad["image"][0, 0] = np.nan
  start = _setup(skip_nonfinite=True)[3]
  state, metrics = _run("pmap", devices, [bad], skip_nonfinite=True)
  assert not metrics[0]["finite"]
  assert int(state["step"]) == 1
  assert _max_diff(start["params"], state["params"]) == 0.0
  _, metrics = _run("pmap", devices, [bad])
  assert not metrics[0]["finite"]


def test_optimizer_schedules_and_class_weights():
  params = {"w": jnp.ones(3)}
  config = ml_collections.ConfigDict(th.tiny_config().to_dict())
  for schedule in ("constant", "cosine", "plateau"):
    config.schedule = schedule
    config.grad_clip_norm = 1.0
    tx = optim.make_optimizer(config, params, total_steps=10, steps_per_epoch=2)
    updates, _ = tx.update({"w": jnp.full(3, 5.0)}, tx.init(params), params, value=jnp.float32(1.0))
    assert np.all(np.isfinite(np.asarray(updates["w"])))
  config.class_weights = "balanced"
  np.testing.assert_allclose(train_step.class_weight_vector(config, [0, 0, 0, 1]), [2 / 3, 2.0])
  config.class_weights = "1,3"
  np.testing.assert_allclose(train_step.class_weight_vector(config, [0, 1]), [1.0, 3.0])


def test_merge_pretrained_keeps_a_mismatched_head():
  variables = {"params": {"conv1": {"kernel": np.zeros((3, 3, 1, 4))}, "fc": {"kernel": np.zeros((4, 2))}}}
  loaded = {"params": {"conv1": {"kernel": np.ones((3, 3, 1, 4))}, "fc": {"kernel": np.ones((4, 1000))}}}
  # Only when the head is named as left fresh (config.init_skip); silently, it is an error.
  with pytest.raises(pretrained.InitFromError, match=r"params/fc/kernel: checkpoint \(4, 1000\), model \(4, 2\)"):
    pretrained.merge_pretrained(variables, loaded)
  merged, copied, skipped = pretrained.merge_pretrained(variables, loaded, skip=("params/fc/*",))
  assert copied == 1 and skipped == ["params/fc/kernel"]
  assert merged["params"]["conv1"]["kernel"].sum() == 36
  assert merged["params"]["fc"]["kernel"].shape == (4, 2) and merged["params"]["fc"]["kernel"].sum() == 0


@pytest.mark.parametrize("parallel", ["pmap", "shard_map"])
def test_compiled_train_step_equals_train_step(parallel):
  devices = jax.devices()[:2]
  model, tx, sc, state = _setup()
  runner = parallel_lib.Runner(train_step.make_train_step(model, tx, sc), train_step.make_eval_step(model, sc),
                             parallel, devices=devices)
  batch = _batch(2, 2)
  compiled = runner.compile_train_step(runner.put_state(state), batch)
  assert compiled.cost_analysis() is not None
  ahead, _ = compiled(runner.put_state(state), runner.put_batch(batch))
  live, _ = runner.train_step(runner.put_state(state), batch)
  assert _max_diff(runner.host_state(ahead)["params"], runner.host_state(live)["params"]) == 0.0


class _ListIterator:
  """Yields `items` in order; its state is how many it handed out (as grain's position)."""

  def __init__(self, items):
    self._items, self._position = list(items), 0

  def __iter__(self):
    return self

  def __next__(self):
    if self._position == len(self._items):
      raise StopIteration
    self._position += 1
    return self._items[self._position - 1]

  def get_state(self):
    return self._position


@pytest.mark.parametrize("size", [0, 1, 3])
def test_device_prefetch_runs_ahead_but_reports_the_consumed_position(size):
  source = _ListIterator(range(5))
  placed = []
  prefetch = parallel_lib.DevicePrefetch(source, lambda b: placed.append(b) or -b, size)
  assert prefetch.get_state() == 0 and placed == []
  assert next(prefetch) == (0, 0)
  assert placed == list(range(min(size + 1, 5)))  # the step's batch and `size` more, placed
  assert prefetch.get_state() == 1  # resume would start at batch 1, whatever is buffered
  assert list(prefetch) == [(b, -b) for b in range(1, 5)]
  assert prefetch.get_state() == 5 and placed == list(range(5))
  with pytest.raises(ValueError, match="prefetch size -1"):
    parallel_lib.DevicePrefetch(_ListIterator([0]), lambda b: b, -1)


@pytest.mark.parametrize("parallel", ["pmap", "shard_map"])
def test_prefetched_batches_give_the_same_steps(parallel):
  devices = jax.devices()[:2]
  batches = [_batch(2, 2, seed=s) for s in range(3)]
  model, tx, sc, state = _setup()
  runner = parallel_lib.Runner(train_step.make_train_step(model, tx, sc), train_step.make_eval_step(model, sc),
                             parallel, devices=devices)
  prefetched = runner.put_state(state)
  for _, placed in parallel_lib.DevicePrefetch(_ListIterator(batches), runner.put_batch, 2):
    prefetched, _ = runner.train_step_placed(prefetched, placed)
  reference = _run(parallel, devices, batches)[0]
  assert _max_diff(runner.host_state(prefetched)["params"], reference["params"]) == 0.0

