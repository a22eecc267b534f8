"""Recurrent heads: cell equations, torch parity of the LSTM/GRU cells, bidirectional
recurrence against a plain python loop, padding, a train step of resnet_convlstm."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from blastjax import models
from blastjax.models import recurrent


def _sigmoid(v):
  return 1.0 / (1.0 + np.exp(-v))


def test_convlstm_cell_follows_equation_1():
  """With 1x1 kernels every convolution is a matrix product: check Eq. (1) term by term."""
  rng = np.random.default_rng(0)
  features, inputs = 3, 5
  x = rng.standard_normal((2, 1, 1, inputs)).astype(np.float32)
  c0 = rng.standard_normal((2, 1, 1, features)).astype(np.float32)
  h0 = rng.standard_normal((2, 1, 1, features)).astype(np.float32)
  cell = recurrent.ConvLSTMCell(features, kernel_size=1)
  params = cell.init(jax.random.PRNGKey(0), (c0, h0), x)["params"]
  params = jax.tree_util.tree_map(lambda p: p + 0.3 * rng.standard_normal(p.shape), params)
  (c1, h1), _ = cell.apply({"params": params}, (c0, h0), x)

  def w(name):
    return np.asarray(params[name]["kernel"])[0, 0]

  xs, hs, cs = x[:, 0, 0], h0[:, 0, 0], c0[:, 0, 0]
  pre = xs @ w("input_conv") + np.asarray(params["input_conv"]["bias"]) + hs @ w("hidden_conv")
  pi, pf, pc, po = np.split(pre, 4, axis=-1)
  wci, wcf = np.split(w("peephole_if"), 2, axis=-1)
  i = _sigmoid(pi + cs @ wci)
  f = _sigmoid(pf + cs @ wcf)
  c = f * cs + i * np.tanh(pc)
  o = _sigmoid(po + c @ w("peephole_o"))  # The output gate peeks at the new C_t.
  np.testing.assert_allclose(np.asarray(c1)[:, 0, 0], c, atol=1e-5)
  np.testing.assert_allclose(np.asarray(h1)[:, 0, 0], o * np.tanh(c), atol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_vector_cells_match_torch(kind):
  torch.manual_seed(0)
  ref = (torch.nn.LSTMCell if kind == "lstm" else torch.nn.GRUCell)(6, 4)
  x = torch.randn(3, 6)
  h = torch.randn(3, 4)
  c = torch.randn(3, 4)
  params = {"ih": {"kernel": ref.weight_ih.detach().numpy().T, "bias": ref.bias_ih.detach().numpy()},
            "hh": {"kernel": ref.weight_hh.detach().numpy().T, "bias": ref.bias_hh.detach().numpy()}}
  cell = recurrent.CELLS[kind](4)
  with torch.no_grad():
    if kind == "lstm":
      expected_h, expected_c = ref(x, (h, c))
      (ours_c, ours_h), _ = cell.apply({"params": params}, (c.numpy(), h.numpy()), x.numpy())
      np.testing.assert_allclose(np.asarray(ours_c), expected_c.numpy(), atol=1e-5)
    else:
      expected_h = ref(x, h)
      ours_h, _ = cell.apply({"params": params}, h.numpy(), x.numpy())
  np.testing.assert_allclose(np.asarray(ours_h), expected_h.numpy(), atol=1e-5)


def _loop_reference(cell, params_fwd, params_bwd, xs, valid):
  """Forward and backward recurrences as plain python loops over each sequence's valid frames."""
  step = jax.jit(lambda p, carry, x: recurrent.CELLS[cell](4, 3).apply({"params": p}, carry, x))
  finals = []
  for b in range(xs.shape[0]):
    frames = [xs[b, t:t + 1] for t in range(xs.shape[1]) if valid[b, t]]
    states = []
    for params, order in ((params_fwd, frames), (params_bwd, frames[::-1])):
      carry = recurrent.CELLS[cell].initial_carry(order[0].shape, 4, jnp.float32)
      for frame in order:
        carry, _ = step(params, carry, frame)
      states.append(recurrent.hidden_state(carry))
    finals.append(jnp.concatenate(states, axis=-1))
  return jnp.concatenate(finals, axis=0)


# The recurrence is the same code for every cell; one convolutional and one vector cell.
@pytest.mark.parametrize("cell,frame_shape", [("convlstm", (4, 4, 3)), ("gru", (5,))])
def test_bidirectional_matches_python_loop(cell, frame_shape):
  rng = np.random.default_rng(1)
  xs = jnp.asarray(rng.standard_normal((3, 4) + frame_shape).astype(np.float32))
  valid = np.array([[True] * 4, [True] * 3 + [False], [True] + [False] * 3])
  layer = recurrent.BidirectionalRecurrence(cell, 4, kernel_size=3)
  variables = jax.jit(layer.init)(jax.random.PRNGKey(0), xs, jnp.asarray(valid))
  apply = jax.jit(layer.apply)
  padded = np.asarray(xs).copy()
  padded[~valid] = 100.0  # Padding content must not matter.
  ours = apply(variables, jnp.asarray(padded), jnp.asarray(valid))
  p = variables["params"]
  expected = _loop_reference(cell, p["layer0_forward"]["cell"], p["layer0_backward"]["cell"],
                             np.asarray(xs), valid)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), atol=1e-5)

  # Reversing a full sequence swaps the roles of the two directions.
  swapped = {"params": {"layer0_forward": p["layer0_backward"], "layer0_backward": p["layer0_forward"]}}
  reversed_out = apply(swapped, xs[:, ::-1], jnp.ones((3, 4), bool))[:1]
  half = ours.shape[-1] // 2
  np.testing.assert_allclose(np.asarray(reversed_out[..., :half]), np.asarray(ours[:1, ..., half:]),
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(reversed_out[..., half:]), np.asarray(ours[:1, ..., :half]),
                             atol=1e-5)


def test_stacked_layers_and_dropout():
  xs = jnp.asarray(np.random.default_rng(2).standard_normal((2, 4, 5)).astype(np.float32))
  valid = jnp.asarray([[True] * 4, [True, True, False, False]])
  layer = recurrent.BidirectionalRecurrence("lstm", 6, num_layers=2, dropout_rate=0.5)
  variables = jax.jit(layer.init)(jax.random.PRNGKey(0), xs, valid)
  assert set(variables["params"]) == {"layer0_forward", "layer0_backward",
                                      "layer1_forward", "layer1_backward"}
  assert variables["params"]["layer1_forward"]["cell"]["ih"]["kernel"].shape == (12, 24)
  eval_out = layer.apply(variables, xs, valid)
  train = jax.jit(lambda key: layer.apply(variables, xs, valid, train=True, rngs={"dropout": key}))
  train_a, train_b = train(jax.random.PRNGKey(1)), train(jax.random.PRNGKey(2))
  assert eval_out.shape == (2, 12)
  assert not np.allclose(np.asarray(train_a), np.asarray(train_b))


def test_chunk_size():
  assert recurrent.chunk_size(32, 8) == 8
  assert recurrent.chunk_size(28, 8) == 7
  assert recurrent.chunk_size(7, 8) == 7
  assert recurrent.chunk_size(13, 8) == 1


@pytest.mark.parametrize("name,expected", [("resnet_convlstm", (2, 2)), ("resnet_convgru", (2, 2)),
                                           ("resnet_lstm", (2, 2)), ("resnet_gru", (2, 2))])
def test_registered_shapes(name, expected):
  model = models.create(name, backbone="resnet18", hidden_size=8)
  x = jax.ShapeDtypeStruct((2, 4, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda v: model.init(jax.random.PRNGKey(0), v), x)
  assert jax.eval_shape(lambda v, y: model.apply(v, y), variables, x).shape == expected
  features = models.create(name, num_classes=0, backbone="resnet18", hidden_size=8)
  assert jax.eval_shape(lambda v, y: features.apply(v, y), variables, x).shape == (2, 16)


# Adam at 1e-2 overshoots on the ConvGRU head's second step; 1e-3 lowers its loss steadily.
@pytest.mark.parametrize("name,learning_rate", [("resnet_convlstm", 1e-2), ("resnet_convgru", 1e-3)])
def test_train_step_with_padding_lowers_loss_and_ignores_padding(name, learning_rate):
  # Stem + layer1 of a ResNet-18 keeps the compile short; the chunked remat scan is the same.
  model = models.create(name, backbone="resnet18", backbone_stages=1, hidden_size=4,
                        frames_per_chunk=2, dropout_rate=0.2)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 4, 32, 32, 3)).astype(np.float32)
  mask = np.array([[False, False, True, True], [False, False, False, False]])
  noisy = x.copy()
  noisy[mask] = 50.0 * rng.standard_normal(noisy[mask].shape)
  labels = jnp.asarray([0, 1])
  variables = jax.jit(lambda v: model.init(jax.random.PRNGKey(0), v, mask=jnp.asarray(mask)))(x)
  optimizer = optax.adam(learning_rate)

  @jax.jit
  def step(params, batch_stats, opt_state, images):
    def loss_fn(p):
      logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, images, train=True,
                                    mask=jnp.asarray(mask), mutable=["batch_stats"],
                                    rngs={"dropout": jax.random.PRNGKey(3)})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, (logits, updates)
    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    changes, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, changes), updates["batch_stats"], opt_state, loss, logits

  params, stats = variables["params"], variables["batch_stats"]
  opt_state = optimizer.init(params)
  _, _, _, noisy_loss, noisy_logits = step(params, stats, opt_state, noisy)
  losses = []
  for i in range(3):
    params, stats, opt_state, loss, logits = step(params, stats, opt_state, x)
    if i == 0:
      np.testing.assert_allclose(np.asarray(logits), np.asarray(noisy_logits), atol=1e-5)
    losses.append(float(loss))
  assert np.isfinite(losses).all() and losses[-1] < losses[0]
