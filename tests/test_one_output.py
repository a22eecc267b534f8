"""One-output models (config.loss 'weighted_mse' / 'bce'): the loss is the formula on a
hand batch, P(blast) = sigmoid(logit), accuracy from P >= 0.5, the head is built with one
output, validation refuses a loss/head mismatch, and a tiny run trains and evaluates."""

import json
import os

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from blastjax.testing import tiny as th
from blastjax import config_validation, parallel, rundir, train, train_step

LOGITS = np.asarray([2.0, -1.0, 0.5, -3.0, 1.5, 0.0], np.float32)
LABELS = np.asarray([1, 0, 0, 1, 1, 0], np.int32)
VALID = np.asarray([1, 1, 1, 1, 1, 0], bool)  # the last row pads the batch
CLASS_WEIGHTS = (0.75, 1.5)


class HandLogit(nn.Module):
  """logit = the image's first pixel times a parameter initialised to 1 (so the loss on
  the first step is a function of LOGITS alone)."""

  num_classes: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    scale = self.param("scale", nn.initializers.ones, (self.num_classes,))
    return x.reshape(x.shape[0], -1)[:, :1] * scale


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _expected(loss: str) -> float:
  """The class-weighted mean over valid rows of the per-row loss."""
  p, y = _sigmoid(LOGITS.astype(np.float64)), LABELS.astype(np.float64)
  per_row = (p - y) ** 2 if loss == "weighted_mse" else -(y * np.log(p) + (1 - y) * np.log(1 - p))
  weights = np.asarray(CLASS_WEIGHTS)[LABELS] * VALID
  return float((weights * per_row).sum() / weights.sum())


def _step_once(loss: str):
  model = HandLogit()
  batch = {"image": np.broadcast_to(LOGITS[:, None, None, None], (6, 2, 2, 1)).copy(), "label": LABELS,
           "valid": VALID, "mask": np.zeros((6, 1), bool), "example_index": np.arange(6, dtype=np.int32)}
  variables = model.init(jax.random.PRNGKey(0), batch["image"])
  tx = optax.sgd(0.1)
  sc = train_step.StepConfig("image", False, class_weights=CLASS_WEIGHTS, loss=loss)
  runner = parallel.Runner(train_step.make_train_step(model, tx, sc), train_step.make_eval_step(model, sc),
                           "pmap", devices=jax.local_devices()[:1])
  state = runner.put_state(train_step.init_state(model, tx, dict(variables), seed=0))
  probs = runner.eval_step(state, {k: v[None] for k, v in batch.items()})
  _, metrics = runner.train_step(state, {k: v[None] for k, v in batch.items()})
  return parallel.metrics_to_host(metrics), np.asarray(probs).reshape(-1)


@pytest.mark.parametrize("loss", ["weighted_mse", "bce"])
def test_loss_is_the_formula_on_a_hand_batch(loss):
  metrics, probs = _step_once(loss)
  assert metrics["loss"] == pytest.approx(_expected(loss), rel=1e-5)
  np.testing.assert_allclose(probs, _sigmoid(LOGITS), rtol=1e-6)  # P(blast) = sigmoid(logit)
  predicted = (_sigmoid(LOGITS) >= 0.5).astype(int)  # logit 0 -> P = 0.5 -> blast
  assert metrics["accuracy"] == pytest.approx(((predicted == LABELS) & VALID).sum() / VALID.sum())


def test_example_loss_per_row():
  z = np.asarray([[0.3], [-2.0]], np.float32)
  y = np.asarray([1, 0], np.int32)
  np.testing.assert_allclose(train_step.example_loss(z, y, "weighted_mse"), (_sigmoid(z[:, 0]) - y) ** 2,
                             rtol=1e-6)
  np.testing.assert_allclose(train_step.example_loss(z, y, "bce"),
                             -(y * np.log(_sigmoid(z[:, 0])) + (1 - y) * np.log(1 - _sigmoid(z[:, 0]))),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="loss='hinge'"):
    train_step.example_loss(z, y, "hinge")


def test_head_width_follows_the_loss():
  assert train_step.num_outputs(th.tiny_config("tiny_image")) == 2
  for loss in config_validation.ONE_OUTPUT_LOSSES:
    config = th.tiny_config("tiny_image", loss=loss)
    model, _ = train_step.create_model(config)
    assert model.num_classes == 1
  assert config_validation.ONE_OUTPUT_LOSSES == train_step.ONE_OUTPUT_LOSSES


def test_loss_and_head_mismatch_is_a_config_error():
  config = th.tiny_config("tiny_image", loss="weighted_mse", model_kwargs={"num_classes": 2})
  assert config_validation.validate(config) == [
      "config.model_kwargs.num_classes=2 with loss='weighted_mse': a one-output loss needs num_classes=1 "
      "(or leave num_classes out: it follows config.loss)"]
  config = th.tiny_config("tiny_image", model_kwargs={"num_classes": 1})
  problems = config_validation.validate(config)
  assert len(problems) == 1 and "num_classes=1 with loss='cross_entropy'" in problems[0], problems
  assert config_validation.validate(th.tiny_config("tiny_image", loss="mse")) == [
      "config.loss='mse': choose one of cross_entropy, weighted_mse, bce"]
  assert config_validation.validate(th.tiny_config("tiny_image", loss="bce", model_kwargs={"num_classes": 1})) == []


def test_one_output_run_lowers_the_loss_and_evaluates(tmp_path):
  data_dir = th.build_small_dataset(str(tmp_path / "data"))
  config = th.tiny_config("tiny_image", data_dir=data_dir, loss="weighted_mse", class_weights="balanced",
                          num_steps=30, learning_rate=0.03, log_every_steps=1, eval_every_steps=15,
                          checkpoint_every_steps=15, eval_checkpoint="last", model_kwargs={"dropout": 0.0})
  assert config_validation.validate(config) == []
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  rundir.write_config(workdir, config)  # as blastjax.main does
  result = train.train_and_evaluate(config, workdir)
  assert result["step"] == 30 and 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["auc"] <= 1.0
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    losses = [r["loss"] for r in map(json.loads, f) if r["kind"] == "train"]
  assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses
  # --mode evaluate and predict rebuild the one-output head from config.json
  model, _ = train_step.create_model(rundir.read_config(workdir, "test"))
  assert model.num_classes == 1
  again = train.evaluate_workdir(workdir)
  assert (again["accuracy"], again["auc"]) == pytest.approx((result["accuracy"], result["auc"]))
