"""The optimizers against torch.optim (same params, same gradients, same result), kernel
L2 as a loss term, the plateau scale in the optimizer state, and the config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from blastjax.testing import tiny as th
from blastjax import config_validation, optim
from blastjax import parallel as parallel_lib

STEPS = 6
LR = 1e-2


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {"conv1": {"kernel": rng.normal(size=(3, 3, 1, 4)).astype(np.float32)},
          "bn1": {"scale": (1 + 0.1 * rng.normal(size=4)).astype(np.float32),
                  "bias": (0.1 * rng.normal(size=4)).astype(np.float32)},
          "fc": {"kernel": rng.normal(size=(4, 2)).astype(np.float32),
                 "bias": rng.normal(size=2).astype(np.float32)}}


def _grads(params, count, seed=1):
  rng = np.random.default_rng(seed)
  return [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params) for _ in range(count)]


def _config(**overrides):
  c = th.tiny_config()
  c.learning_rate = LR
  c.update(overrides)
  return c


def _run_optax(config, params, grads, scale_at=None, factor=0.1):
  tx = optim.make_optimizer(config, params, total_steps=len(grads))
  state = tx.init(params)
  update = jax.jit(tx.update)
  for i, g in enumerate(grads):
    if scale_at is not None and i == scale_at:
      state = optim.set_plateau_scale(state, factor)
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
  return jax.tree.map(np.asarray, params)


def _run_torch(make, params, grads, scale_at=None, factor=0.1):
  leaves, treedef = jax.tree.flatten(params)
  tensors = [torch.tensor(np.array(p), requires_grad=True) for p in leaves]
  opt = make(tensors)
  for i, g in enumerate(grads):
    if scale_at is not None and i == scale_at:
      for group in opt.param_groups:
        group["lr"] *= factor
    for t, gl in zip(tensors, jax.tree.leaves(g)):
      t.grad = torch.tensor(np.array(gl))
    opt.step()
  return jax.tree.unflatten(treedef, [t.detach().numpy() for t in tensors])


# float32 both sides. Adam's bias correction 1 - b2**t is computed by optax in float32,
# where the rounding of b2**t (~3e-8) is a relative error of ~1e-5 of 1 - b2**t at small
# t (torch computes it in float64): Adam-family updates then differ by up to ~8e-6
# relative. SGD has no such term and agrees to float32 rounding.
ADAM_RTOL, SGD_RTOL = 2e-5, 2e-6


def _assert_close(a, b, rtol=SGD_RTOL):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol / 10)


def _rtol(name):
  return SGD_RTOL if name.startswith("sgd") else ADAM_RTOL


TORCH = {
    "adamw": (dict(optimizer="adamw", weight_decay=0.05),
              lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=0.05)),
    "adam_l2": (dict(optimizer="adam", weight_decay=0.05),
                lambda ps: torch.optim.Adam(ps, lr=LR, weight_decay=0.05)),
    "adam": (dict(optimizer="adam", weight_decay=0.0), lambda ps: torch.optim.Adam(ps, lr=LR)),
    "sgd_nesterov": (dict(optimizer="sgd", momentum=0.9, nesterov=True, weight_decay=0.01),
                     lambda ps: torch.optim.SGD(ps, lr=LR, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "sgd_momentum": (dict(optimizer="sgd", momentum=0.9, weight_decay=1e-3),
                     lambda ps: torch.optim.SGD(ps, lr=LR, momentum=0.9, weight_decay=1e-3)),
    "sgd_plain": (dict(optimizer="sgd", momentum=0.0, weight_decay=0.01),
                  lambda ps: torch.optim.SGD(ps, lr=LR, weight_decay=0.01)),
}


@pytest.mark.parametrize("name", sorted(TORCH))
def test_optimizer_matches_torch(name):
  overrides, make = TORCH[name]
  params, grads = _params(), _grads(_params(), STEPS)
  ours = _run_optax(_config(**overrides), params, grads)
  _assert_close(ours, _run_torch(make, params, grads), _rtol(name))
  assert max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(params))) > 1e-3


@pytest.mark.parametrize("name", ["adamw", "adam_l2", "sgd_nesterov"])
def test_plateau_scale_is_torch_lowering_the_rate(name):
  """Setting the scale mid-run equals torch's ReduceLROnPlateau lowering param_group['lr']
  (momentum buffers and Adam moments untouched; AdamW's decay scaled with the rate)."""
  overrides, make = TORCH[name]
  params, grads = _params(), _grads(_params(), STEPS)
  ours = _run_optax(_config(schedule="plateau", **overrides), params, grads, scale_at=3)
  _assert_close(ours, _run_torch(make, params, grads, scale_at=3), _rtol(name))


def test_kernel_l2_is_the_keras_loss_term():
  l2 = 0.01
  params = _params()
  inputs = np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)

  def loss(p):
    h = inputs * p["bn1"]["scale"] + p["bn1"]["bias"] + p["conv1"]["kernel"].sum()
    return jnp.mean((h @ p["fc"]["kernel"] + p["fc"]["bias"]) ** 2)

  def regularised(p):
    return loss(p) + l2 * sum(jnp.sum(k ** 2) for k in (p["conv1"]["kernel"], p["fc"]["kernel"]))

  grads = jax.grad(loss)(params)
  tx = optim.kernel_l2(l2)
  added, _ = tx.update(grads, tx.init(params), params)
  _assert_close(added, jax.grad(regularised)(params))
  for module, name in (("fc", "bias"), ("bn1", "scale"), ("bn1", "bias")):
    np.testing.assert_array_equal(added[module][name], grads[module][name])
  # Through the whole optimizer: kernel_l2 with Adam == Adam on the regularised loss.
  params_a, params_b = params, params
  tx_a = optim.make_optimizer(_config(optimizer="adam", weight_decay=0.0, kernel_l2=l2), params, 4)
  tx_b = optim.make_optimizer(_config(optimizer="adam", weight_decay=0.0), params, 4)
  state_a, state_b = tx_a.init(params), tx_b.init(params)
  for _ in range(4):
    u, state_a = tx_a.update(jax.grad(loss)(params_a), state_a, params_a)
    params_a = optax.apply_updates(params_a, u)
    u, state_b = tx_b.update(jax.grad(regularised)(params_b), state_b, params_b)
    params_b = optax.apply_updates(params_b, u)
  _assert_close(params_a, params_b)


@pytest.mark.parametrize("optimizer", config_validation.OPTIMIZERS)
def test_freeze_clip_and_plateau_with_every_optimizer(optimizer):
  params = _params()
  config = _config(optimizer=optimizer, freeze="fc", grad_clip_norm=0.5, schedule="plateau", kernel_l2=1e-3,
                   weight_decay=0.1, warmup_steps=2)
  out = _run_optax(config, params, _grads(params, 3), scale_at=1)
  for module in ("conv1", "bn1"):
    for a, b in zip(jax.tree.leaves(out[module]), jax.tree.leaves(params[module])):
      np.testing.assert_array_equal(a, b)
  assert float(np.abs(out["fc"]["kernel"] - params["fc"]["kernel"]).max()) > 0
  tx = optim.make_optimizer(config, params, 3)
  assert optim.plateau_scales(optim.set_plateau_scale(tx.init(params), 0.25)) == [0.25]


@pytest.mark.parametrize("parallel", ["pmap", "shard_map"])
def test_set_plateau_scale_on_placed_state(parallel):
  params = _params()
  tx = optim.make_optimizer(_config(schedule="plateau"), params, 3)
  runner = parallel_lib.Runner(lambda s, b: (s, {}), lambda s, b: b, parallel, devices=jax.devices()[:2])
  placed = runner.put_state({"opt_state": tx.init(params)})
  changed = {"opt_state": optim.set_plateau_scale(placed["opt_state"], 0.1)}
  old = jax.tree.leaves(placed)
  new = jax.tree.leaves(changed)
  assert [x.sharding for x in old] == [x.sharding for x in new]
  assert optim.plateau_scales(runner.host_state(changed)["opt_state"]) == [np.float32(0.1)]


def _problems(**overrides):
  return config_validation.validate(th.tiny_config(**overrides))


def test_config_checks_name_the_field():
  assert _problems(optimizer="sgd", momentum=0.0) == []
  assert _problems(optimizer="sgd", nesterov=True) == []
  assert _problems(eval_every_steps=0, schedule="plateau") == []
  cases = {"config.optimizer='rmsprop'": dict(optimizer="rmsprop"),
           "config.momentum=1.0": dict(optimizer="sgd", momentum=1.0),
           "config.nesterov=True needs momentum > 0": dict(optimizer="sgd", momentum=0.0, nesterov=True),
           "config.nesterov=True: only optimizer='sgd'": dict(optimizer="adam", nesterov=True),
           "config.kernel_l2=-0.1": dict(kernel_l2=-0.1),
           "config.eval_every_steps=-1": dict(eval_every_steps=-1),
           "config.schedule='plateau' with validation_fraction=0": dict(schedule="plateau", validation_fraction=0.0)}
  for message, overrides in cases.items():
    problems = _problems(**overrides)
    assert len(problems) == 1 and problems[0].startswith(message), (overrides, problems)
