"""Train/test splits: the paper's class-balanced half/half split, stratified validation
and patient-grouped stratified k-fold. All reproducible by seed; indices are sorted."""

from __future__ import annotations

import numpy as np


def _labels(labels) -> np.ndarray:
  labels = np.asarray(labels).astype(np.int64).reshape(-1)
  if labels.size < 2:
    raise ValueError(f"need at least 2 examples to split, got {labels.size}")
  return labels


def paper_split(labels, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Half of each class for training, the rest for testing (by embryo).

  The paper builds its training set by "randomly selecting half embryos from the sets
  of blasts and non-blasts"; an odd class count gives the extra embryo to the test set.
  """
  labels = _labels(labels)
  rng = np.random.default_rng(seed)
  train = []
  for value in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == value))
    train.extend(members[: members.size // 2])
  train = np.sort(np.asarray(train, np.int64))
  return train, np.setdiff1d(np.arange(labels.size), train)


def validation_split(train_idx, labels, fraction: float = 0.1, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Splits `train_idx` into (train, validation), stratified by label."""
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
  train_idx = np.asarray(train_idx, np.int64)
  labels = _labels(labels)
  rng = np.random.default_rng(seed)
  val = []
  for value in np.unique(labels[train_idx]):
    members = rng.permutation(train_idx[labels[train_idx] == value])
    val.extend(members[: max(1, int(round(fraction * members.size)))] if members.size > 1 else [])
  val = np.sort(np.asarray(val, np.int64))
  return np.setdiff1d(train_idx, val), val


def patient_kfold(labels, patient_ids, k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
  """k folds with no patient on both sides, blast fractions as even as the groups allow.

  Patients are shuffled, sorted by size (largest first) and each is given to the fold
  whose blast/non-blast counts are furthest below their targets (greedy stratification).
  """
  labels = _labels(labels)
  patient_ids = np.asarray(patient_ids)
  if patient_ids.shape != labels.shape:
    raise ValueError(f"patient_ids ({patient_ids.size}) and labels ({labels.size}) differ in length")
  patients = np.unique(patient_ids)
  if not 2 <= k <= patients.size:
    raise ValueError(f"k={k} folds needs 2 <= k <= number of patients ({patients.size})")
  rng = np.random.default_rng(seed)
  patients = rng.permutation(patients)
  counts = {p: np.bincount(labels[patient_ids == p], minlength=2) for p in patients}
  patients = sorted(patients, key=lambda p: -counts[p].sum())  # stable: ties keep the shuffle
  target = np.bincount(labels, minlength=2) / k
  fold_counts = np.zeros((k, 2))
  fold_of = {}
  for p in patients:
    deficit = ((target - fold_counts) * (counts[p] > 0)).sum(axis=1) - 1e-6 * fold_counts.sum(axis=1)
    fold = int(np.argmax(deficit))
    fold_of[p] = fold
    fold_counts[fold] += counts[p]
  assignment = np.asarray([fold_of[p] for p in patient_ids])
  folds = []
  for fold in range(k):
    test = np.flatnonzero(assignment == fold)
    if test.size == 0:
      raise ValueError(f"fold {fold} of {k} is empty: too few patients for k={k}")
    folds.append((np.flatnonzero(assignment != fold), test))
  return folds
