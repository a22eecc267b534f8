"""Reduce-on-plateau: the host tracker against torch's ReduceLROnPlateau, and a tiny run
where it fires on the validation loss, resumed after a crash to the uninterrupted result."""

import dataclasses
import json
import math
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch

from blastjax.testing import tiny as th
from blastjax import optim, train
from blastjax.train_data import make_data, open_source

LOSSES = [1.0, 0.9, 0.95, 0.9, 0.89995, 0.92, 0.8, 0.8, 0.81, float("nan"), 0.79, 0.7999, 0.78, 0.9, 0.9,
          0.9, 0.9, 0.9, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]


def _torch_scales(losses, lr, factor, patience, cooldown=0):
  param = torch.zeros(1, requires_grad=True)
  opt = torch.optim.SGD([param], lr=lr)
  scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=factor, patience=patience,
                                                         threshold=1e-4, threshold_mode="rel", cooldown=cooldown)
  scales = []
  for loss in losses:
    scheduler.step(loss)
    scales.append(opt.param_groups[0]["lr"] / lr)
  return scales


@pytest.mark.parametrize("lr,factor,patience,cooldown", [(1e-3, 0.1, 2, 0), (1e-2, 0.5, 1, 0), (1e-3, 0.3, 0, 2),
                                                         (1e-5, 0.1, 0, 0)])
def test_tracker_matches_torch(lr, factor, patience, cooldown):
  """Same scale after every step; the last case reaches torch's eps floor (1e-8)."""
  tracker = optim.Plateau(factor, patience, lr, cooldown=cooldown)
  ours = []
  for loss in LOSSES:
    tracker.step(loss)
    ours.append(tracker.scale)
    restored = optim.Plateau(factor, patience, lr, cooldown=cooldown)
    restored.load_state_dict(json.loads(json.dumps(tracker.state_dict())))
    assert restored.state_dict() == tracker.state_dict()
    tracker = restored
  np.testing.assert_allclose(ours, _torch_scales(LOSSES, lr, factor, patience, cooldown), rtol=1e-12)
  assert ours[-1] < 1.0


# The plateau run: Adam at a rate so low that the validation loss moves by less than the
# 1e-4 relative threshold, so every validation after the first is a bad one; patience 1
# fires at the third validation (once per epoch: eval_every_steps=0).
PLATEAU = dict(optimizer="adam", learning_rate=1e-6, schedule="plateau", plateau_factor=0.1, plateau_patience=1,
               eval_every_steps=0, checkpoint_every_steps=2, log_every_steps=1, early_hours=(),
               model_kwargs={"batch_norm": False})  # running statistics would move the loss


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return th.build_small_dataset(str(tmp_path_factory.mktemp("data")))


def _latest(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                  options=ocp.CheckpointManagerOptions(read_only=True),
                                  item_names=("state", "meta"))
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                           meta=ocp.args.JsonRestore()))
  manager.close()
  return restored.state, dict(restored.meta)


def _rows(workdir, kind):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [row for row in map(json.loads, f) if row["kind"] == kind]


class _Crash(Exception):
  pass


def test_plateau_fires_and_resumes_exactly(tmp_path, data_dir, monkeypatch):
  config = th.tiny_config("tiny_image", data_dir=data_dir, **PLATEAU)
  data = make_data(config, open_source(config))
  epoch = train.steps_per_epoch(config, data)
  config.num_steps = 5 * epoch
  reference = str(tmp_path / "reference")
  train.train(config, reference, data)

  # The interrupted run crashes inside the save of the fourth validation's step (after
  # that validation has stepped the tracker in memory), then resumes from the save before.
  crash_at = 4 * epoch
  real = train._Saver.checkpoint

  def checkpoint(self, step, *args, **kwargs):
    if step == crash_at:
      raise _Crash(step)
    return real(self, step, *args, **kwargs)

  interrupted = str(tmp_path / "interrupted")
  monkeypatch.setattr(train._Saver, "checkpoint", checkpoint)
  with pytest.raises(_Crash):
    train.train(config, interrupted, data)
  monkeypatch.setattr(train._Saver, "checkpoint", real)
  assert _latest(interrupted)[1]["step"] < crash_at
  train.train(config, interrupted, data)

  state_a, meta_a = _latest(reference)
  state_b, meta_b = _latest(interrupted)
  assert meta_a["step"] == meta_b["step"] == 5 * epoch
  assert meta_a["plateau"] == meta_b["plateau"]
  assert meta_a["plateau"]["scale"] == pytest.approx(0.01)  # fired at validations 3 and 5
  # Restored without a target the chain's states are lists and dicts; the scale is last.
  assert np.asarray(state_a["opt_state"][-1]["scale"]) == np.float32(0.01)
  for a, b in zip(_leaves(state_a), _leaves(state_b)):
    np.testing.assert_array_equal(a, b)

  validations = _rows(reference, "validation")
  assert [row["step"] for row in validations] == [epoch * i for i in range(1, 6)]
  assert all(math.isfinite(row["loss"]) for row in validations)
  rates = {row["step"]: row["learning_rate"] for row in _rows(reference, "train")}
  assert sorted(rates) == list(range(1, 5 * epoch + 1))
  lr = PLATEAU["learning_rate"]
  expected = {step: lr * (1.0 if step <= 3 * epoch else 0.1) for step in rates}
  assert rates == pytest.approx(expected, rel=1e-6)
  assert rates == {row["step"]: row["learning_rate"] for row in _rows(interrupted, "train")}


def _leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_plateau_without_validation_split_is_a_split_error(tmp_path, data_dir):
  config = th.tiny_config("tiny_image", data_dir=data_dir, **PLATEAU)
  data = make_data(config, open_source(config))
  # As split='dataset' on a dataset whose split column has no validation rows.
  data = dataclasses.replace(data, validation=np.zeros(0, np.int64))
  with pytest.raises(train.SplitError, match=r"config.schedule='plateau' .* no validation split"):
    train.train(config, str(tmp_path / "run"), data)
