"""Parity with torchvision's 2D CNNs: seeded reference models, converted weights, logits
compared at a relative tolerance, and train steps on a tiny batch (ResNet and DenseNet
families). Compiles use XLA's cheapest optimisation level: the CPU compile is shorter,
numerics unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torchvision

from blastjax import models, weights

ODD_INPUT = (1, 67, 75, 3)  # H and W not multiples of 32.

PAPER_INPUT = (1, 400, 400, 3)  # The paper's single-frame size.

TRAIN_INPUT = (2, 64, 64, 3)  # layer4 is 2x2: batch statistics over 8 values.

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

def torch_model(name, seed=0, **kwargs):
  """torchvision's `name` with 2 classes, seeded, in eval mode, with BN statistics that matter.

  BN biases are randomised and the running statistics are those of one random batch, so
  every BN layer shifts and scales (statistics left at 0/1 would hide conversion errors),
  while activations stay O(1) through the deepest nets.
  """
  torch.manual_seed(seed)
  model = getattr(torchvision.models, name)(num_classes=2, **kwargs)
  generator = torch.Generator().manual_seed(seed + 1)
  for module in model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.bias.data.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
      module.reset_running_stats()
      module.momentum = None  # Cumulative average: after one batch, that batch's statistics.
  with torch.no_grad():
    model.train()(torch.randn(4, 3, 64, 64, generator=generator))
  for module in model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      # Near-dead channels of the small batch would amplify float32 rounding 300-fold.
      module.running_var.clamp_(min=0.05)
  return model.eval()

def torch_logits(model, x_nhwc):
  with torch.no_grad():
    return model(torch.from_numpy(np.transpose(x_nhwc, (0, 3, 1, 2)))).numpy()

def assert_parity(ours, reference, relative=1e-4):
  tolerance = relative * max(1.0, float(np.abs(reference).max()))
  print(f"parity: max abs error {np.abs(np.asarray(ours) - reference).max():.3g}, "
        f"max |logit| {np.abs(reference).max():.3g}")
  np.testing.assert_allclose(np.asarray(ours), reference, rtol=0, atol=tolerance)

def make_train_step(model, tx, x, labels):
  """A jitted AdamW step: softmax cross-entropy, mutable batch_stats, a dropout rng."""

  def step(params, batch_stats, opt_state, rng):
    def loss_fn(p):
      logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                    mutable=["batch_stats"], rngs={"dropout": rng})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, updates["batch_stats"]

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss

  return jax.jit(step)

def train_losses(model, variables, steps=4, learning_rate=1e-4):
  """Losses of `steps` AdamW steps on one tiny fixed batch; losses[i] is the loss before
  step i, so steps=2 gives the loss before and after one step."""
  x = np.random.default_rng(0).standard_normal(TRAIN_INPUT).astype(np.float32)
  labels = np.array([0, 1])
  tx = optax.adamw(learning_rate, weight_decay=1e-5)
  params, stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)
  step = make_train_step(model, tx, x, labels)
  step = step.lower(params, stats, opt_state, jax.random.PRNGKey(0)).compile(
      compiler_options=FAST_COMPILE)
  losses = []
  for i in range(steps):
    params, stats, opt_state, loss = step(params, stats, opt_state, jax.random.PRNGKey(i))
    losses.append(float(loss))
  return losses

def gradient_step_losses(model, variables, fraction=0.05):
  """(loss, loss after one gradient-descent step, squared gradient norm) on TRAIN_INPUT.

  The step is sized to lower the loss by `fraction` of itself to first order
  (lr = fraction * loss / |g|^2), so it tests the gradient's direction whatever the net's
  sharpness; one compile serves both evaluations."""
  x = np.random.default_rng(0).standard_normal(TRAIN_INPUT).astype(np.float32)
  labels = np.array([0, 1])
  stats = variables["batch_stats"]

  def loss_fn(params):
    logits, _ = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                            mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(0)})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  params = variables["params"]
  value_and_grad = jax.jit(jax.value_and_grad(loss_fn)).lower(params).compile(
      compiler_options=FAST_COMPILE)
  loss, grads = value_and_grad(params)
  squared_norm = float(sum(jnp.vdot(g, g) for g in jax.tree.leaves(grads)))
  rate = fraction * float(loss) / squared_norm
  stepped = jax.tree.map(lambda p, g: p - rate * g, params, grads)
  return float(loss), float(value_and_grad(stepped)[0]), squared_norm

def assert_gradient_step_lowers_the_loss(name):
  """Converted seeded torchvision weights: a gradient-descent step lowers the loss."""
  variables = weights.from_torch(name, torch_model(name).state_dict())
  before, after, squared_norm = gradient_step_losses(models.create(name), variables)
  assert np.isfinite([before, after, squared_norm]).all(), (before, after, squared_norm)
  assert after < before, (before, after, squared_norm)

def convert_case(name):
  """A seeded torchvision model converted; its logits on the odd input and on the paper's
  400x400, and its size."""
  x = np.random.default_rng(0).standard_normal(ODD_INPUT).astype(np.float32)
  x400 = np.random.default_rng(1).standard_normal(PAPER_INPUT).astype(np.float32)
  reference_model = torch_model(name)
  return {"x": x, "reference": torch_logits(reference_model, x),
          "x400": x400, "reference400": torch_logits(reference_model, x400),
          "torch_params": sum(p.numel() for p in reference_model.parameters()),
          "variables": weights.from_torch(name, reference_model.state_dict())}

def assert_case_parity(name, result, relative=1e-4):
  """Our logits equal torchvision's on the odd input and at 400x400 (one compile each)."""
  apply = jax.jit(models.create(name).apply)
  for x, reference in ((result["x"], result["reference"]), (result["x400"], result["reference400"])):
    ours = apply.lower(result["variables"], x).compile(compiler_options=FAST_COMPILE)(result["variables"], x)
    assert_parity(ours, reference, relative=relative)

def assert_train_steps_lower_the_loss(name, steps=4, learning_rate=1e-4):
  """Converted seeded torchvision weights, `steps - 1` AdamW steps: the loss went down."""
  variables = weights.from_torch(name, torch_model(name).state_dict())
  losses = train_losses(models.create(name), variables, steps=steps, learning_rate=learning_rate)
  assert all(np.isfinite(losses)), losses
  assert losses[-1] < losses[0], losses
