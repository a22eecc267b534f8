"""blastjax.models.create_nnx: registered models as NNX modules through flax.nnx.bridge.

Tiny shapes: resnet18 at 32x32 (BatchNorm, no dropout), a one-layer feature_lstm over
[2, 3, 6] features (BatchNorm, dropout and recurrent dropout), mc3_18 at 2x4x16x16x3
with a padding mask (a video model; XLA compiles r3d_18's 3-D convs three times slower).
Most of the time is XLA compiling each model once.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from blastjax import models

IMAGE = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
VIDEO = jax.random.normal(jax.random.key(2), (2, 4, 16, 16, 3))
FEATURES = jax.random.normal(jax.random.key(3), (2, 3, 6))
MASK = jnp.array([[False, False, False, True], [False, False, False, False]])
LABELS = jnp.array([0, 1])
SMALL_LSTM = dict(lstm_units=(8,), dense_units=(8,))


@pytest.fixture(scope="module")
def resnet():
  """(linen module, linen variables) of resnet18; each test builds its own NNX copy."""
  module = models.create("resnet18", num_classes=2)
  return module, module.init(jax.random.key(0), IMAGE)


def _max_diff(a, b):
  return float(jnp.max(jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32))))


def test_init_builds_params_and_batch_stats():
  model = models.create_nnx("resnet18", IMAGE, nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)["linen"]
  assert params["conv1"]["kernel"].shape == (7, 7, 3, 64)
  assert params["fc"]["kernel"].shape == (512, 2)
  stats = nnx.state(model, nnx.BatchStat)["linen"]
  np.testing.assert_array_equal(stats["bn1"]["var"][...], np.ones(64, np.float32))
  count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert count == 11177538  # torchvision's resnet18 with 2 classes
  model.eval()
  assert model(IMAGE).shape == (2, 2)


def test_eval_logits_equal_linen_with_same_variables(resnet):
  module, variables = resnet
  # Eval with trained-looking statistics, so a BatchNorm mix-up would show.
  stats = jax.tree.map(lambda v: v + 0.3, variables["batch_stats"])
  variables = {"params": variables["params"], "batch_stats": stats}
  model = models.create_nnx("resnet18", IMAGE, nnx.Rngs(5), variables=variables)
  model.eval()
  expected = module.apply(variables, IMAGE, train=False)
  np.testing.assert_allclose(model(IMAGE), expected, rtol=1e-6, atol=1e-6)
  # Eval mode reads the statistics and leaves them alone.
  after = model.linen_variables()["batch_stats"]
  assert _max_diff(after["bn1"]["mean"], stats["bn1"]["mean"]) == 0.0


def test_train_mode_updates_batch_stats_as_linen(resnet):
  module, variables = resnet
  model = models.create_nnx("resnet18", IMAGE, nnx.Rngs(5), variables=variables)
  model.train()
  logits = model(IMAGE)
  expected, updates = module.apply(variables, IMAGE, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
  got = model.linen_variables()["batch_stats"]
  for path in (("bn1", "mean"), ("layer4_1", "bn2", "var")):
    want, have, old = updates["batch_stats"], got, variables["batch_stats"]
    for key in path:
      want, have, old = want[key], have[key], old[key]
    np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-6)
    assert _max_diff(have, old) > 1e-4  # the statistics did move
  # The exported variables feed the linen model back, with the same logits.
  model.eval()
  np.testing.assert_allclose(model(IMAGE), module.apply(model.linen_variables(), IMAGE),
                             rtol=1e-6, atol=1e-6)


def test_optimizer_steps_lower_the_loss():
  model = models.create_nnx("feature_lstm", FEATURES, nnx.Rngs(0), **SMALL_LSTM)
  optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)

  def loss_fn(model):
    logits = model(FEATURES)
    return optax.softmax_cross_entropy_with_integer_labels(logits, LABELS).mean()

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  model.train()
  before = nnx.state(model, nnx.BatchStat)["linen"]["lstm_bn"]["mean"][...]
  losses = [float(train_step(model, optimizer)) for _ in range(6)]
  assert losses[-1] < losses[0] - 0.05, losses
  assert int(optimizer.step[...]) == 6
  after = nnx.state(model, nnx.BatchStat)["linen"]["lstm_bn"]["mean"][...]
  assert _max_diff(after, before) > 1e-4  # BatchStat updates survive nnx.jit + grad


def test_dropout_random_in_train_and_off_in_eval():
  kwargs = dict(SMALL_LSTM, dropout_rate=0.5, recurrent_dropout_rate=0.3)
  model = models.create_nnx("feature_lstm", FEATURES, nnx.Rngs(params=0, dropout=3), **kwargs)
  call = nnx.jit(lambda m, x: m(x))
  model.eval()
  first, second = call(model, FEATURES), call(model, FEATURES)
  np.testing.assert_array_equal(first, second)
  module = models.create("feature_lstm", **kwargs)
  np.testing.assert_allclose(first, module.apply(model.linen_variables(), FEATURES),
                             rtol=1e-6, atol=1e-6)
  model.train()
  a, b = call(model, FEATURES), call(model, FEATURES)  # each call draws a new dropout key
  assert _max_diff(a, b) > 1e-3
  # train=False on a call is eval mode, whatever the module's mode.
  off = model(FEATURES, train=False)
  assert _max_diff(a, off) > 1e-3
  model.eval()
  np.testing.assert_allclose(call(model, FEATURES), off, rtol=1e-6, atol=1e-6)


def test_mixed_mode_is_a_clear_error():
  model = models.create_nnx("resnet18", IMAGE, nnx.Rngs(0))
  model.set_attributes(deterministic=True)
  with pytest.raises(ValueError, match="one `train` flag"):
    model(IMAGE)


def test_video_model_with_mask_matches_linen():
  model = models.create_nnx("mc3_18", VIDEO, nnx.Rngs(1), mask=MASK)
  model.eval()
  module = models.create("mc3_18", num_classes=2)
  expected = module.apply(model.linen_variables(), VIDEO, train=False, mask=MASK)
  logits = model(VIDEO, MASK)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
  assert _max_diff(logits, model(VIDEO)) > 1e-6  # the mask is used


def test_unknown_model_name():
  with pytest.raises(ValueError, match="unknown model 'resnet19'.*resnet18"):
    models.create_nnx("resnet19", IMAGE, nnx.Rngs(0))


def test_variables_of_another_model_are_rejected(resnet):
  _, variables = resnet
  expected = r"wrong shape: .*fc/kernel: \(512, 2\) \(model: \(512, 3\)\)"
  with pytest.raises(ValueError, match=expected):
    models.create_nnx("resnet18", IMAGE, nnx.Rngs(0), num_classes=3, variables=variables)
