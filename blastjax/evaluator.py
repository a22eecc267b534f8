"""The evaluator: the one place that runs a model over a split (big_vision's
`evaluators/`: an object the loop runs, and so do `--mode evaluate`,
cross-validation and `blastjax.predict`).

It holds what does not change between calls -- the runner (the compiled eval step on
the run's devices), how to load a split's batches, the split's labels and ids, the
early-prediction cut-offs -- and takes the state to evaluate at each call, since the
training loop evaluates a new state every `eval_every_steps`.

    evaluator = Evaluator.for_run(runner, config, data)
    index, probs = evaluator.probabilities(state, data.test)        # per embryo
    metrics, rows, curve = evaluator.evaluate(state, data.test)     # + early prediction

Sliding windows (several rows per embryo) are averaged per embryo; with several
processes each reads its shard and the probabilities are gathered on every process.
Metrics, rows and curves are computed by blastjax.evaluate (pure numpy).
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

import jax
import numpy as np
from tqdm import tqdm

from blastjax import evaluate
from blastjax.train_data import Data, make_loader
from blastjax.parallel import Runner

# loader(indices, observe_hours) -> batches of this process, [local_devices, per_device, ...]
Loader = Callable[[Sequence[int], Optional[float]], Iterable[dict]]


def _gather(*arrays):
  """Every process's rows of each array, concatenated in process order."""
  if jax.process_count() == 1:
    return arrays
  from jax.experimental import multihost_utils
  return tuple(np.asarray(multihost_utils.process_allgather(a)).reshape(-1) for a in arrays)


class Evaluator:
  """P(blast) per embryo, metrics, prediction rows and the early-prediction curve of a split."""

  def __init__(self, runner: Runner, loader: Loader, data: Optional[Data] = None,
               early_hours: Sequence[float] = (), gather: bool = True, temperature: float = 1.0,
               progress: bool = False):
    self.runner = runner
    self.progress = progress  # a bar with ETA over an evaluation's passes (see evaluate)
    self.temperature = float(temperature)  # applied to every probability (1 = uncalibrated)
    self.loader = loader
    self.data = data
    self.early_hours = sorted(float(h) for h in early_hours)
    self.gather = gather

  @classmethod
  def for_run(cls, runner: Runner, config, data: Data) -> "Evaluator":
    """The evaluator of a training run: its evaluation loader, splits and early_hours."""

    def loader(indices, observe_hours):
      return make_loader(config, data, indices, train=False, observe_hours=observe_hours)

    return cls(runner, loader, data, early_hours=config.early_hours,
               progress=bool(config.progress) and jax.process_index() == 0)

  def probabilities(self, state, indices, observe_hours: Optional[float] = None, bar=None):
    """(example indices, P(blast)) over `indices`, one per embryo (windows averaged);
    `bar` (a tqdm over passes) advances by one when the pass ends."""
    rows, probs, valid = [], [], []
    for batch in self.loader(indices, observe_hours):
      probs.append(self.runner.eval_step(state, batch))
      rows.append(np.asarray(batch["example_index"]).reshape(-1))
      valid.append(np.asarray(batch["valid"]).reshape(-1))
      if bar is not None:
        bar.set_postfix(batches=len(probs), refresh=False)
    if bar is not None:
      bar.update(1)
    rows, probs, valid = map(np.concatenate, (rows, probs, valid))
    if self.gather:
      rows, probs, valid = _gather(rows, probs, valid)
    index, probs = evaluate.average_by_example(rows[valid], probs[valid])
    return index, evaluate.apply_temperature(probs, self.temperature)

  def calibrate(self, state, indices) -> dict:
    """Fits the temperature on the split `indices` (the validation split) and keeps it
    for every later call; returns what calibration.json records."""
    self.temperature = 1.0
    index, probs = self.probabilities(state, indices)
    self.temperature = evaluate.fit_temperature(self.data.labels[index], probs)
    return {"temperature": self.temperature, "fitted_on": "validation", "num_embryos": int(index.size)}

  def early_probabilities(self, state, indices, index, bar=None) -> dict:
    """{hours: P(blast) of the embryos `index`} for every early_hours cut-off."""
    by_hours = {}
    for hours in self.early_hours:
      cut_index, cut_probs = self.probabilities(state, indices, observe_hours=hours, bar=bar)
      if not np.array_equal(cut_index, index):
        raise ValueError(f"early prediction at {hours:g} h lost embryos: the cut-off is before their "
                         "first frame; remove it from config.early_hours")
      by_hours[hours] = cut_probs
    return by_hours

  def patient_groups(self, index):
    """The patient of each embryo in `index` when no patient of them is also in the
    run's training or validation side (a patient-grouped split: the bootstrap then
    resamples patients); None otherwise (it resamples embryos)."""
    data = self.data
    patients = np.asarray(data.patient_ids)
    seen = set(patients[np.concatenate([data.train, data.validation])].tolist())
    evaluated = patients[index]
    if seen.intersection(evaluated.tolist()):
      return None
    return evaluated

  def rows(self, index, probs) -> list:
    """predictions.csv rows of the embryos `index`."""
    data = self.data
    return [{"embryo_id": str(data.embryo_ids[i]), "patient_id": str(data.patient_ids[i]),
             "label": int(data.labels[i]), "prob_blast": float(p), "predicted": int(p >= 0.5)}
            for i, p in zip(index, probs)]

  def evaluate(self, state, indices, early: bool = True, intervals: bool = True, desc: str = "evaluation"):
    """(metrics, per-embryo rows, early-prediction curve or None) of a split; without
    the bootstrap intervals (of the metrics and of each cut-off of the curve) when
    `intervals` is False (1,000 resamples per call). With `progress`, a bar named `desc`
    counts the passes over the split (the full videos, then each early cut-off) with an ETA.

    `loss` is the mean binary cross-entropy of the final per-embryo P(blast) (windows
    averaged, temperature applied) against the labels -- not the training loss of the
    step's rows; reduce-on-plateau follows it on the validation split.
    """
    early = early and bool(self.early_hours)
    with tqdm(total=1 + (len(self.early_hours) if early else 0), desc=desc, unit="pass", leave=False,
              disable=not self.progress, dynamic_ncols=True, mininterval=0, miniters=1) as bar:  # few passes
      index, probs = self.probabilities(state, indices, bar=bar)
      by_hours = self.early_probabilities(state, indices, index, bar=bar) if early else None
    labels = self.data.labels[index]
    groups = self.patient_groups(index) if intervals else None
    metrics = evaluate.evaluation_metrics(labels, probs, groups, group_name="patients",
                                          intervals=intervals)
    metrics["loss"] = evaluate.binary_cross_entropy(labels, probs)
    metrics["calibrated"] = self.temperature != 1.0
    metrics["temperature"] = self.temperature
    metrics["num_embryos"] = int(index.size)
    rows = self.rows(index, probs)
    if not early:
      return metrics, rows, None
    for hours, cut_probs in by_hours.items():
      for row, p in zip(rows, cut_probs):
        row[f"prob_blast_{hours:g}h"] = float(p)
    # Intervals per cut-off on the test metrics' resamples (patients when they are kept apart).
    return metrics, rows, evaluate.early_prediction(labels, by_hours, intervals=intervals, groups=groups,
                                                    group_name="patients")
