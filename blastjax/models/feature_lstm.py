"""LSTM-FC classifier over pre-extracted per-frame features (the seizure I3D+LSTM paper).

Karácsony et al. classify I3D features (1024-d per time step) with a Keras model:
masking -> LSTM(128) -> LSTM(64) -> FC(64) -> FC(32) -> one sigmoid unit, with batch
normalization followed by dropout 0.5 as regularization, recurrent dropout 0.3, ReLU on
the dense layers and He-uniform dense kernels. This module is that classifier:

  features [B, T, D] -> MaskedLSTM(128) -> MaskedLSTM(64) -> last valid state
    -> BN -> dropout -> [Dense(64) -> ReLU -> BN -> dropout] -> [Dense(32) -> ReLU -> BN
    -> dropout] -> Dense(num_classes)

- Masking: a padded step (mask True) does not update the LSTM state, so the state after
  the last step is the state at each sequence's last valid step, wherever the padding
  sits (the paper pre-pads with -1 vectors and masks them; blastjax pads at the end).
- `num_classes=1` reproduces the paper's single sigmoid unit (train it with a sigmoid
  binary cross-entropy or, as the paper, a weighted MSE on the sigmoid); the default
  `num_classes=2` gives softmax logits like every other blastjax model; `num_classes=0`
  returns the 32-d features before the output layer.
- Keras conventions are kept where they shape the numbers: one bias per LSTM gate block
  (gates ordered i, f, c, o; forget bias initialised to 1), glorot-uniform input and
  orthogonal recurrent kernels, BatchNorm momentum 0.99 and epsilon 1e-3. The paper's
  L2 kernel/bias/activity regularizers are a training choice, not part of the module:
  use the optimizer's weight decay.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from blastjax.models import torch_compat
from blastjax.models.registry import register

# Keras BatchNormalization(momentum=0.99, epsilon=1e-3): Keras's momentum is the decay of
# the running averages, as Flax's; torch's equivalent momentum is 0.01.
batch_norm = torch_compat.torch_batch_norm(momentum=0.01, eps=1e-3)


def _lstm_bias_init(key, shape, dtype=jnp.float32):
  """Keras `unit_forget_bias`: zeros, except ones for the forget gate block."""
  del key
  units = shape[0] // 4
  return jnp.zeros(shape, dtype).at[units:2 * units].set(1.0)


def _orthogonal_init(param_dtype):
  """Orthogonal init computed in float32 (the QR has no bfloat16 kernel), then cast."""
  def init(key, shape):
    return nn.initializers.orthogonal()(key, shape, jnp.float32).astype(param_dtype)
  return init


class MaskedLSTM(nn.Module):
  """A Keras-style LSTM whose state is frozen on padded steps.

  Returns (outputs [B, T, units], final hidden state [B, units]); on a padded step the
  output repeats the previous one. Recurrent dropout (Gal & Ghahramani, as Keras) drops
  the same hidden units at every step of a sequence.
  """

  units: int
  recurrent_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, valid, train: bool = False):
    batch = x.shape[0]
    gates = nn.Dense(4 * self.units, kernel_init=nn.initializers.glorot_uniform(),
                     bias_init=_lstm_bias_init, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="input")(x)
    recurrent = self.param("recurrent_kernel", _orthogonal_init(self.param_dtype),
                           (self.units, 4 * self.units)).astype(self.dtype)
    keep = 1.0 - self.recurrent_dropout_rate
    if train and self.recurrent_dropout_rate > 0:
      drop = jax.random.bernoulli(self.make_rng("dropout"), keep, (batch, self.units))
      drop = drop.astype(self.dtype) / keep
    else:
      drop = jnp.ones((batch, self.units), self.dtype)

    def step(carry, inputs):
      cell, hidden = carry
      gate_t, valid_t = inputs
      z = gate_t + (hidden * drop) @ recurrent
      i, f, g, o = jnp.split(z, 4, axis=-1)
      new_cell = nn.sigmoid(f) * cell + nn.sigmoid(i) * jnp.tanh(g)
      new_hidden = nn.sigmoid(o) * jnp.tanh(new_cell)
      valid_t = valid_t[:, None]
      cell = jnp.where(valid_t, new_cell, cell)
      hidden = jnp.where(valid_t, new_hidden, hidden)
      return (cell, hidden), hidden

    zeros = jnp.zeros((batch, self.units), gates.dtype)
    (_, hidden), outputs = jax.lax.scan(step, (zeros, zeros),
                                        (jnp.swapaxes(gates, 0, 1), jnp.swapaxes(valid, 0, 1)))
    return jnp.swapaxes(outputs, 0, 1), hidden


class FeatureLSTM(nn.Module):
  """Masked 2-layer LSTM + FC head over features [B, T, D] (see the module docstring)."""

  num_classes: int = 2
  lstm_units: Sequence[int] = (128, 64)
  dense_units: Sequence[int] = (64, 32)
  dropout_rate: float = 0.5
  recurrent_dropout_rate: float = 0.3
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _regularize(self, x, train: bool, name: str):
    x = batch_norm(use_running_average=not train, dtype=self.dtype, param_dtype=self.param_dtype,
                   name=f"{name}_bn")(x)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(x)

  @nn.compact
  def __call__(self, x, train: bool = False, mask: Optional[jnp.ndarray] = None):
    x = x.astype(self.dtype)
    valid = jnp.ones(x.shape[:2], bool) if mask is None else ~mask
    for index, units in enumerate(self.lstm_units):
      x, hidden = MaskedLSTM(units, self.recurrent_dropout_rate, dtype=self.dtype,
                             param_dtype=self.param_dtype, name=f"lstm{index + 1}")(x, valid, train)
    x = self._regularize(hidden, train, "lstm")
    for index, units in enumerate(self.dense_units):
      x = nn.Dense(units, kernel_init=nn.initializers.he_uniform(), dtype=self.dtype,
                   param_dtype=self.param_dtype, name=f"fc{index + 1}")(x)
      x = self._regularize(nn.relu(x), train, f"fc{index + 1}")
    if self.num_classes == 0:
      return x
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="output")(x)


@register(input_kind="features",
          reference="Karácsony et al., seizure I3D+LSTM (Keras; no public code)")
def feature_lstm(num_classes: int = 2, **kwargs) -> FeatureLSTM:
  """Masked LSTM(128, 64) -> FC(64, 32) classifier over per-frame I3D features."""
  return FeatureLSTM(num_classes=num_classes, **kwargs)
