"""Padding at any position, for every registered multi-frame model.

A late start pads the front of a sequence, an imaging gap its middle, a short sequence
its end. For every model whose input kind is video, video_focal or features (taken from
the registry, so a new model is covered without editing this file):
- the content of padded frames changes nothing (eval logits; train-mode logits and
  BatchNorm statistics);
- every valid frame, the last one in particular, changes the final logits;
- per-step models keep their time axis: a padded step's output is 0 and a valid step's
  equals the output of the same sequence with its gaps closed up.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blastjax import models
from blastjax.models import masking
from blastjax.models.registry import final_logits

KINDS = ("video", "video_focal", "features")
# Smaller settings of the models too large to compile at their defaults on a 2-core CI;
# a model without an entry is tested at its defaults.
SMALL = {
    "amsnet": dict(backbone="resnet18", dropout_rate=0.0),
    "resnet_convlstm": dict(backbone="resnet18", backbone_stages=1, hidden_size=4, dropout_rate=0.0),
    "resnet_convgru": dict(backbone="resnet18", backbone_stages=1, hidden_size=4, dropout_rate=0.0),
    "resnet_lstm": dict(backbone="resnet18", backbone_stages=1, hidden_size=4, dropout_rate=0.0),
    "resnet_gru": dict(backbone="resnet18", backbone_stages=1, hidden_size=4, dropout_rate=0.0),
    "yowo_cfam": dict(inter_channels=16, out_channels=16, dropout_rate=0.0),
    "hara_resnet3d_50": dict(),
    "tsm_resnet50": dict(backbone="resnet18", dropout_rate=0.0),
    "tsm_resnet18": dict(dropout_rate=0.0),
}
FRAMES = 6
# Row 0 has a gap of each kind (leading, middle, trailing), row 1 a middle gap only.
MASKS = np.array([
    [1, 0, 1, 0, 0, 1],
    [0, 1, 1, 0, 0, 0],
], bool)


def multi_frame_models():
  """The library's registered multi-frame models (not the tests' own tiny_* models)."""
  return [name for kind in KINDS for name in models.list_models(kind)
          if models.get_spec(name).builder.__module__.startswith("blastjax.")]


def per_step_models():
  return [name for name in multi_frame_models() if models.get_spec(name).per_step]


def example_input(spec, batch: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  size = max(32, spec.min_image_size)
  shape = {"video": (batch, FRAMES, size, size, 3),
           "video_focal": (batch, FRAMES, 2, size, size, 1),
           "features": (batch, FRAMES, 16)}[spec.input_kind]
  return rng.standard_normal(shape).astype(np.float32)


def build(name):
  spec = models.get_spec(name)
  model = models.create(name, num_classes=2, **SMALL.get(name, {}))
  x = example_input(spec, len(MASKS), seed=0)
  variables = jax.jit(lambda inputs: model.init(jax.random.PRNGKey(0), inputs, train=False))(x[:1])
  return spec, model, x, variables


@pytest.fixture(scope="module", params=multi_frame_models())
def case(request):
  name = request.param
  spec, model, x, variables = build(name)
  mask = jnp.asarray(MASKS)

  @jax.jit
  def evaluate(inputs):
    logits = model.apply(variables, inputs, train=False, mask=mask)
    return logits, final_logits(logits, mask, spec.per_step)

  @jax.jit
  def train(inputs):
    logits, updates = model.apply(variables, inputs, train=True, mask=mask, mutable=["batch_stats"],
                                  rngs={"dropout": jax.random.PRNGKey(1)})
    return logits, updates

  return name, spec, x, evaluate, train


def with_frames(x, rows_and_frames, seed):
  """x with the given (row, frame) positions replaced by large random content."""
  rng = np.random.default_rng(seed)
  out = x.copy()
  for row, frame in rows_and_frames:
    out[row, frame] = 9.0 * rng.standard_normal(out[row, frame].shape)
  return out


def padded_positions():
  return [tuple(p) for p in np.argwhere(MASKS)]


def test_padded_content_changes_nothing(case):
  name, _, x, evaluate, train = case
  other = with_frames(x, padded_positions(), seed=5)
  for ours, theirs in zip(jax.tree.leaves(evaluate(x)), jax.tree.leaves(evaluate(other))):
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-5, err_msg=name)
  for ours, theirs in zip(jax.tree.leaves(train(x)), jax.tree.leaves(train(other))):
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-5, rtol=1e-5,
                               err_msg=f"{name} (train mode)")


def test_every_valid_frame_changes_the_final_logits(case):
  name, _, x, evaluate, _ = case
  _, final = evaluate(x)
  for frame in range(FRAMES):  # rows are independent in eval mode: change one frame of each
    _, changed = evaluate(with_frames(x, [(row, frame) for row in range(len(MASKS))], seed=7 + frame))
    for row in np.flatnonzero(~MASKS[:, frame]):
      delta = float(np.abs(np.asarray(changed[row]) - np.asarray(final[row])).max())
      last = " (the last valid frame)" if frame == np.flatnonzero(~MASKS[row])[-1] else ""
      assert delta > 1e-6, f"{name}: row {row}, valid frame {frame}{last} does not reach the logits"


@pytest.mark.parametrize("name", per_step_models())
def test_per_step_outputs_keep_their_slots(name):
  _, model, x, variables = build(name)
  logits = np.asarray(jax.jit(lambda v, inputs: model.apply(v, inputs, train=False, mask=MASKS))(
      variables, x))
  assert logits.shape[:2] == MASKS.shape
  np.testing.assert_array_equal(logits[MASKS], 0.0)
  # The same sequences with their gaps closed up (valid frames first): the valid steps'
  # outputs are the same, moved to the original slots.
  packed, packed_mask = masking.compact(jnp.asarray(x), jnp.asarray(MASKS))
  closed_up = np.asarray(model.apply(variables, packed, train=False, mask=packed_mask))
  for row in range(len(MASKS)):
    count = int((~MASKS[row]).sum())
    np.testing.assert_allclose(logits[row][~MASKS[row]], closed_up[row, :count], atol=1e-5)


def test_every_kind_is_covered():
  names = multi_frame_models()
  assert {models.get_spec(n).input_kind for n in names} == set(KINDS)
  assert "amsnet" in names and "feature_lstm" in names and "r2plus1d_18" in names


def test_compact_and_scatter_on_a_known_mask():
  x = np.arange(6, dtype=np.float32).reshape(1, 6, 1) * 10
  mask = np.array([[True, False, True, False, False, True]])
  packed, packed_mask = masking.compact(x, mask)
  np.testing.assert_array_equal(np.asarray(packed)[0, :, 0], [10, 30, 40, 10, 30, 40])
  np.testing.assert_array_equal(np.asarray(packed_mask)[0], [False, False, False, True, True, True])
  back = masking.scatter_steps(packed, mask)
  np.testing.assert_array_equal(np.asarray(back)[0, :, 0], [0, 10, 0, 30, 40, 0])
  np.testing.assert_array_equal(masking.last_valid_index(mask, 6, 1), [4])
