"""Running the one-device steps on every device: `Runner` wraps them with `jax.pmap`
(default) or `jax.jit(jax.shard_map(...))` over a 1-D mesh whose axis is AXIS; the
steps' collectives (blastjax.train_step) name the same axis. `DevicePrefetch` places
batches ahead of the step; `selected_devices` picks a run's devices."""

from __future__ import annotations

import collections
from typing import Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "batch"


def selected_devices(config) -> list:
  """The devices a run uses: every device, or the first `config.num_devices` of each process."""
  wanted = config.get("num_devices", 0)
  if not wanted:
    return jax.devices()
  chosen = []
  for process in range(jax.process_count()):
    local = [d for d in jax.devices() if d.process_index == process]
    if wanted > len(local):
      raise ValueError(f"config.num_devices={wanted}: process {process} has only {len(local)} devices")
    chosen += local[:wanted]
  return chosen


class Runner:
  """Runs the one-device steps on every device with pmap or jit + shard_map.

  Batches arrive as this process's [local_devices, per_device, ...] arrays; the state
  as one host copy. `put_state` places it (replicated), `host_state` brings it back.
  `train_step=None` makes an evaluation-only runner (predict).
  """

  def __init__(self, train_step: Callable, eval_step: Callable, parallel: str = "pmap",
               devices=None):
    self.parallel = parallel
    self.devices = list(devices) if devices is not None else jax.devices()
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
    if parallel == "pmap":
      self._train = train_step and jax.pmap(train_step, axis_name=AXIS, donate_argnums=(0,), devices=self.devices)
      self._eval = jax.pmap(eval_step, axis_name=AXIS, devices=self.devices)
      self._place = jax.pmap(lambda tree: tree, axis_name=AXIS, devices=self.devices)
      # Row i of a [local_devices, ...] batch on local device i, as pmap splits it.
      self._local_rows = NamedSharding(Mesh(np.asarray(self.local_devices), (AXIS,)), P(AXIS))
    elif parallel == "shard_map":
      self.mesh = Mesh(np.asarray(self.devices), (AXIS,))
      self._replicated = NamedSharding(self.mesh, P())
      self._sharded = NamedSharding(self.mesh, P(AXIS))

      def train_one(state, batch):
        return train_step(state, jax.tree.map(lambda v: v[0], batch))

      def eval_one(state, batch):
        return eval_step(state, jax.tree.map(lambda v: v[0], batch))[None]

      self._train = train_step and jax.jit(jax.shard_map(train_one, mesh=self.mesh, in_specs=(P(), P(AXIS)),
                                                         out_specs=(P(), P())), donate_argnums=(0,))
      self._eval = jax.jit(jax.shard_map(eval_one, mesh=self.mesh, in_specs=(P(), P(AXIS)),
                                         out_specs=P(AXIS)))
    else:
      raise ValueError(f"parallel={parallel!r}: choose 'pmap' or 'shard_map'")

  def put_state(self, state):
    if self.parallel == "pmap":
      # Through an identity pmap, so the first step sees device arrays of the same kind
      # as the step's own outputs (host arrays would make the second call recompile).
      stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (len(self.local_devices),) + np.shape(x)),
                             state)
      return self._place(stacked)
    return jax.tree.map(lambda x: jax.make_array_from_callback(
        np.shape(x), self._replicated, lambda index: np.asarray(x)[index]), state)

  def put_batch(self, batch):
    """This process's host batch as device arrays, split over the local devices.

    The copy starts at once and runs asynchronously; `DevicePrefetch` calls this ahead of
    the step so the copy overlaps earlier steps' compute.
    """
    if self.parallel == "pmap":
      return jax.device_put(batch, self._local_rows)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self._sharded, np.asarray(x)), batch)

  def host_state(self, state):
    if self.parallel == "pmap":
      return jax.tree.map(lambda x: np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x[0])
                          .reshape(x.shape[1:]), state)
    return to_numpy_tree(state)

  def train_step(self, state, batch):
    """One step on a host batch (placed on the devices first)."""
    return self.train_step_placed(state, self.put_batch(batch))

  def train_step_placed(self, state, placed_batch):
    """One step on a batch already placed by `put_batch` (as `DevicePrefetch` yields)."""
    return self._train(state, placed_batch)

  def compile_train_step(self, state, batch):
    """The train step compiled ahead of time for these shapes (what `train_step` runs).

    Returns a jax `Compiled`: call it as `compiled(state, runner.put_batch(batch))`; its
    `input_shardings`, `cost_analysis()` and `memory_analysis()` serve benchmarks.
    """
    return self._train.lower(state, self.put_batch(batch)).compile()

  def eval_step(self, state, batch) -> np.ndarray:
    """This process's probabilities, [local_devices * per_device]."""
    out = self._eval(state, self.put_batch(batch))
    if self.parallel == "pmap":
      return np.asarray(out).reshape(-1)
    shards = sorted(out.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data).reshape(-1) for s in shards])


class DevicePrefetch:
  """Yields (host batch, placed batch) with `size` more batches already on the devices.

  Placing batch t+1..t+size while step t runs hides the host-to-device copy behind
  compute (what flax's prefetch_to_device does). `get_state()` is the wrapped iterator's
  state as of the last batch handed out, not of those buffered ahead, so a checkpoint
  resumes at the next batch the step has not seen. size=0 places each batch when asked.
  """

  def __init__(self, iterator: Iterator, put: Callable, size: int):
    if size < 0:
      raise ValueError(f"prefetch size {size}: use 0 (no prefetch) or more")
    self._iterator, self._put, self._size = iterator, put, size
    self._ahead = collections.deque()
    self._state = iterator.get_state()

  def __iter__(self):
    return self

  def __next__(self):
    while len(self._ahead) <= self._size:
      try:
        batch = next(self._iterator)
      except StopIteration:
        break
      self._ahead.append((batch, self._put(batch), self._iterator.get_state()))
    if not self._ahead:
      raise StopIteration
    batch, placed, self._state = self._ahead.popleft()
    return batch, placed

  def get_state(self):
    return self._state


def to_numpy_tree(tree):
  """Host numpy copies of every leaf (one device's copy of replicated arrays)."""

  def one(x):
    if isinstance(x, jax.Array):
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(one, tree)


def metrics_to_host(metrics) -> dict:
  """One device's copy of the (replicated) step metrics as Python scalars."""
  out = {}
  for key, value in metrics.items():
    if isinstance(value, jax.Array):
      value = value.addressable_data(0)
    out[key] = np.asarray(value).reshape(-1)[0].item()
  return out
