"""Recurrent heads over a per-frame ResNet: ConvLSTM, ConvGRU, LSTM, GRU (bidirectional).

The cleavage-stage benchmark (`papers/cleavage_stage_blastocyst_dataset.txt`, "LSTM" and
"GRU") extracts per-frame feature maps with a ResNet-50, propagates them forward (first
to last frame) and backward (last to first) with the recurrent model, concatenates the
last forward and backward maps and classifies them like a single-frame network.

- `ConvLSTMCell` follows Eq. (1) of `papers/restaurant_action_recognition_convlstm_yowo.txt`:
  the peepholes W_ci, W_cf, W_co are convolutions (not Hadamard products), the output
  gate peeks at the new cell state C_t.
- `ConvGRUCell`: z, r from convolutions of [X_t, H_{t-1}]; candidate
  tanh(W_xn * X_t + W_hn * (r o H_{t-1}) + b_n); H_t = (1 - z) o H_{t-1} + z o candidate.
- `LSTMCell` / `GRUCell`: torch.nn.LSTM / nn.GRU's equations and parameters (two biases
  per gate), over the spatially pooled per-frame features.

Padding (mask True = padded frame, at any positions; `masking.compact` first moves the
valid frames to the front, in order): the recurrences step over the
valid frames only (a padded step leaves the state unchanged), so the forward pass ends
at each sequence's last valid frame and the backward pass starts there. Padded frames
are also replaced by looped valid frames before the backbone, so in training mode
BatchNorm's batch statistics cannot see padded content either.

Memory: the backbone runs over chunks of `frames_per_chunk` frames (time folded into the
batch) inside `nn.scan` with `nn.remat`, so a backward pass keeps only the chunk inputs
and recomputes each chunk's activations; peak activation memory is set by one chunk,
not by T. In training mode BatchNorm normalises each chunk with its own statistics and
updates its running averages once per chunk. A sequence of one chunk (T <=
frames_per_chunk) runs the backbone once, without the scan.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from blastjax.models import cpu_conv, masking
from blastjax.models.registry import register
from blastjax.models.resnet import RESNET_CONFIGS, ResNet
from blastjax.models.torch_compat import kernel_padding

Array = jax.Array


class ConvLSTMCell(nn.Module):
  """ConvLSTM with convolutional peepholes; carry (C, H), each [B, h, w, features]."""

  features: int
  kernel_size: int = 3
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, x):
    cell, hidden = carry
    conv = functools.partial(cpu_conv.Conv, kernel_size=(self.kernel_size,) * 2,
                             padding=kernel_padding(self.kernel_size), dtype=self.dtype,
                             param_dtype=self.param_dtype)
    gates = (conv(4 * self.features, name="input_conv")(x)  # W_x{i,f,c,o} * X_t + b
             + conv(4 * self.features, use_bias=False, name="hidden_conv")(hidden))
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    peep_i, peep_f = jnp.split(conv(2 * self.features, use_bias=False, name="peephole_if")(cell),
                               2, axis=-1)
    i = nn.sigmoid(i + peep_i)
    f = nn.sigmoid(f + peep_f)
    cell = f * cell + i * jnp.tanh(g)
    o = nn.sigmoid(o + conv(self.features, use_bias=False, name="peephole_o")(cell))
    hidden = o * jnp.tanh(cell)
    return (cell, hidden), hidden

  @staticmethod
  def initial_carry(input_shape: Sequence[int], features: int, dtype) -> tuple:
    shape = tuple(input_shape[:-1]) + (features,)
    return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)


class ConvGRUCell(nn.Module):
  """Convolutional GRU; carry H [B, h, w, features]."""

  features: int
  kernel_size: int = 3
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, hidden, x):
    conv = functools.partial(cpu_conv.Conv, kernel_size=(self.kernel_size,) * 2,
                             padding=kernel_padding(self.kernel_size), dtype=self.dtype,
                             param_dtype=self.param_dtype)
    gates = (conv(2 * self.features, name="input_gates")(x)
             + conv(2 * self.features, use_bias=False, name="hidden_gates")(hidden))
    z, r = jnp.split(nn.sigmoid(gates), 2, axis=-1)
    candidate = jnp.tanh(conv(self.features, name="input_candidate")(x)
                         + conv(self.features, use_bias=False, name="hidden_candidate")(r * hidden))
    hidden = (1.0 - z) * hidden + z * candidate
    return hidden, hidden

  @staticmethod
  def initial_carry(input_shape: Sequence[int], features: int, dtype) -> Array:
    return jnp.zeros(tuple(input_shape[:-1]) + (features,), dtype)


class LSTMCell(nn.Module):
  """torch.nn.LSTM's cell (gates i, f, g, o; biases b_ih and b_hh); carry (c, h)."""

  features: int
  kernel_size: int = 1  # Unused; keeps the cells interchangeable.
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, x):
    cell, hidden = carry
    dense = functools.partial(nn.Dense, 4 * self.features, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    gates = dense(name="ih")(x) + dense(name="hh")(hidden)
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    cell = nn.sigmoid(f) * cell + nn.sigmoid(i) * jnp.tanh(g)
    hidden = nn.sigmoid(o) * jnp.tanh(cell)
    return (cell, hidden), hidden

  initial_carry = staticmethod(ConvLSTMCell.initial_carry)


class GRUCell(nn.Module):
  """torch.nn.GRU's cell (gates r, z, n; n = tanh(W_in x + b_in + r o (W_hn h + b_hn)))."""

  features: int
  kernel_size: int = 1  # Unused; keeps the cells interchangeable.
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, hidden, x):
    dense = functools.partial(nn.Dense, 3 * self.features, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    from_input = dense(name="ih")(x)
    from_hidden = dense(name="hh")(hidden)
    ir, iz, in_ = jnp.split(from_input, 3, axis=-1)
    hr, hz, hn = jnp.split(from_hidden, 3, axis=-1)
    r = nn.sigmoid(ir + hr)
    z = nn.sigmoid(iz + hz)
    candidate = jnp.tanh(in_ + r * hn)
    hidden = (1.0 - z) * candidate + z * hidden
    return hidden, hidden

  initial_carry = staticmethod(ConvGRUCell.initial_carry)


CELLS = {"convlstm": ConvLSTMCell, "convgru": ConvGRUCell, "lstm": LSTMCell, "gru": GRUCell}


def hidden_state(carry):
  """H of a carry: (C, H) for LSTMs, H for GRUs."""
  return carry[1] if isinstance(carry, tuple) else carry


class MaskedStep(nn.Module):
  """One time step of a cell that leaves the carry unchanged where `valid` is False."""

  cell: str
  features: int
  kernel_size: int = 3
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, inputs):
    x, valid = inputs
    new_carry, _ = CELLS[self.cell](self.features, self.kernel_size, self.dtype, self.param_dtype,
                                    name="cell")(carry, x)

    def keep(new, old):
      return jnp.where(valid.reshape(valid.shape + (1,) * (new.ndim - 1)), new, old)

    carry = jax.tree_util.tree_map(keep, new_carry, carry)
    return carry, hidden_state(carry)


class BidirectionalRecurrence(nn.Module):
  """Stacked (bi)directional recurrence over xs [B, T, ...] and valid [B, T].

  Returns the last layer's final forward state (after the last valid frame)
  concatenated with its final backward state (after frame 0), [B, ..., D * features]
  with D = 2 if bidirectional. Layers above the first read the concatenated outputs of
  the layer below; dropout between layers as torch's `dropout` argument.
  """

  cell: str
  features: int
  kernel_size: int = 3
  num_layers: int = 1
  bidirectional: bool = True
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, xs, valid, train: bool = False):
    if self.cell not in CELLS:
      raise ValueError(f"cell={self.cell!r}; expected one of {sorted(CELLS)}")
    directions = ("forward", "backward") if self.bidirectional else ("forward",)
    finals = []
    for layer in range(self.num_layers):
      outputs, finals = [], []
      for direction in directions:
        scan = nn.scan(MaskedStep, variable_broadcast="params", split_rngs={"params": False},
                       in_axes=1, out_axes=1, reverse=direction == "backward")
        step = scan(self.cell, self.features, self.kernel_size, self.dtype, self.param_dtype,
                    name=f"layer{layer}_{direction}")
        carry = CELLS[self.cell].initial_carry(xs.shape[:1] + xs.shape[2:], self.features,
                                               self.dtype)
        carry, ys = step(carry, (xs, valid))
        outputs.append(ys)
        finals.append(hidden_state(carry))
      xs = jnp.concatenate(outputs, axis=-1)
      if layer + 1 < self.num_layers and self.dropout_rate > 0:
        xs = nn.Dropout(self.dropout_rate, deterministic=not train)(xs)
    return jnp.concatenate(finals, axis=-1)


class FrameEncoder(nn.Module):
  """The ResNet (first `stages` stages) on frames [B, t, H, W, C] -> [B, t, h, w, C'].

  A scan body: carry passes through untouched.
  """

  backbone: str
  stages: int
  pool: bool
  train: bool
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, frames):
    batch, steps = frames.shape[:2]
    net = ResNet(**RESNET_CONFIGS[self.backbone], num_classes=0, dtype=self.dtype,
                 param_dtype=self.param_dtype, stages=(0, self.stages), name="backbone")
    maps = net(frames.reshape((batch * steps,) + frames.shape[2:]), train=self.train,
               return_feature_map=True)
    if self.pool:
      maps = jnp.mean(maps, axis=(1, 2))
    return carry, maps.reshape((batch, steps) + maps.shape[1:])


def chunk_size(num_frames: int, frames_per_chunk: int) -> int:
  """The largest divisor of num_frames that is at most frames_per_chunk."""
  for size in range(min(frames_per_chunk, num_frames), 0, -1):
    if num_frames % size == 0:
      return size
  return 1


class ChunkedFrameEncoder(nn.Module):
  """`FrameEncoder` over chunks of frames, rematerialised, so memory is set by one chunk."""

  backbone: str
  stages: int
  pool: bool
  frames_per_chunk: int = 8
  remat: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, frames, train: bool = False):
    batch, num_frames = frames.shape[:2]
    if self.is_initializing():
      # Creates the variables outside the scan (the carried BatchNorm statistics must
      # exist before it); the scanned module has the same name, hence the same paths.
      return FrameEncoder(self.backbone, self.stages, self.pool, train, self.dtype,
                          self.param_dtype, name="frame_encoder")(None, frames)[1]
    size = chunk_size(num_frames, self.frames_per_chunk)
    if size == num_frames:
      # One chunk: no scan (the same variables and numbers; a scan body of convolutions
      # ran 6x slower than the plain call on XLA's CPU backend) and no remat (a single
      # chunk's activations are the peak either way).
      return FrameEncoder(self.backbone, self.stages, self.pool, train, self.dtype,
                          self.param_dtype, name="frame_encoder")(None, frames)[1]
    chunks = frames.reshape((batch, num_frames // size, size) + frames.shape[2:])
    body = nn.remat(FrameEncoder, prevent_cse=False) if self.remat else FrameEncoder
    # Training updates the BatchNorm statistics chunk after chunk; evaluation only reads them.
    stats = dict(variable_carry="batch_stats") if train else dict(
        variable_broadcast=["params", "batch_stats"])
    scan = nn.scan(body, **{"variable_broadcast": "params", **stats},
                   split_rngs={"params": False, "dropout": True}, in_axes=1, out_axes=1)
    _, maps = scan(self.backbone, self.stages, self.pool, train, self.dtype, self.param_dtype,
                   name="frame_encoder")(None, chunks)
    return maps.reshape((batch, num_frames) + maps.shape[3:])


class RecurrentVideoClassifier(nn.Module):
  """Per-frame ResNet -> bidirectional (Conv)LSTM/GRU over the valid frames -> classifier.

  cell: 'convlstm' / 'convgru' run on the feature maps (final maps pooled before the
  classifier); 'lstm' / 'gru' run on the pooled per-frame features.
  backbone_stages: how many ResNet stages to keep (4 = the whole ResNet; 3 stops after
  layer3, 1024 channels at stride 16 for ResNet-50).
  """

  cell: str = "convlstm"
  num_classes: int = 2
  backbone: str = "resnet50"
  backbone_stages: int = 4
  hidden_size: int = 256
  kernel_size: int = 3
  num_layers: int = 1
  bidirectional: bool = True
  dropout_rate: float = 0.5
  frames_per_chunk: int = 8
  remat: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    if x.ndim != 5:
      raise ValueError(f"{self.cell} model expects video [B, T, H, W, C]; got shape {x.shape}")
    if self.backbone not in RESNET_CONFIGS:
      raise ValueError(f"backbone={self.backbone!r} is not a ResNet variant; known: "
                       f"{', '.join(RESNET_CONFIGS)}")
    if self.cell not in CELLS:
      raise ValueError(f"cell={self.cell!r}; expected one of {sorted(CELLS)}")
    batch, num_frames = x.shape[:2]
    x, packed_mask = masking.compact(x, mask)
    valid = jnp.ones((batch, num_frames), bool) if mask is None else ~packed_mask
    convolutional = self.cell.startswith("conv")
    features = ChunkedFrameEncoder(self.backbone, self.backbone_stages, pool=not convolutional,
                                   frames_per_chunk=self.frames_per_chunk, remat=self.remat,
                                   dtype=self.dtype, param_dtype=self.param_dtype,
                                   name="encoder")(x, train=train)
    final = BidirectionalRecurrence(self.cell, self.hidden_size, self.kernel_size,
                                    self.num_layers, self.bidirectional, self.dropout_rate,
                                    self.dtype, self.param_dtype,
                                    name="recurrence")(features, valid, train=train)
    if convolutional:
      final = jnp.mean(final, axis=(1, 2))
    if self.num_classes == 0:
      return final
    final = nn.Dropout(self.dropout_rate, deterministic=not train)(final)
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="fc")(final)


def embedded_resnet(model: RecurrentVideoClassifier) -> dict:
  """A `model.backbone` ResNet checkpoint fills the frame encoder (the stages it keeps);
  see `blastjax.weights.from_torch(..., source=...)`."""
  return {model.backbone: {"encoder/frame_encoder/backbone": ("*",)}}


_PAPER = dict(input_kind="video", min_image_size=32, embeds=embedded_resnet,
              reference="cleavage_stage_blastocyst_dataset.txt Table 4 (no public code)")


def recurrent_classifier(cell: str, default_hidden_size: int, num_classes: int,
                         kwargs: dict) -> RecurrentVideoClassifier:
  """The paper's model with `cell`; kwargs: backbone, backbone_stages, hidden_size,
  kernel_size, num_layers, bidirectional, dropout_rate, frames_per_chunk, remat, dtype,
  param_dtype."""
  kwargs = {"hidden_size": default_hidden_size, **kwargs}
  return RecurrentVideoClassifier(cell=cell, num_classes=num_classes, **kwargs)


@register(**_PAPER)
def resnet_convlstm(num_classes: int = 2, **kwargs) -> RecurrentVideoClassifier:
  """ConvLSTM (convolutional peepholes) over per-frame ResNet features (bidirectional)."""
  return recurrent_classifier("convlstm", 256, num_classes, kwargs)


@register(**_PAPER)
def resnet_convgru(num_classes: int = 2, **kwargs) -> RecurrentVideoClassifier:
  """ConvGRU over per-frame ResNet features (bidirectional)."""
  return recurrent_classifier("convgru", 256, num_classes, kwargs)


@register(**_PAPER)
def resnet_lstm(num_classes: int = 2, **kwargs) -> RecurrentVideoClassifier:
  """LSTM over per-frame ResNet features (bidirectional)."""
  return recurrent_classifier("lstm", 512, num_classes, kwargs)


@register(**_PAPER)
def resnet_gru(num_classes: int = 2, **kwargs) -> RecurrentVideoClassifier:
  """GRU over per-frame ResNet features (bidirectional)."""
  return recurrent_classifier("gru", 512, num_classes, kwargs)
