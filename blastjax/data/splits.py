"""Train/test splits: the paper's class-balanced half/half split (by embryo), a
patient-grouped half/half split, the dataset's own split column, stratified validation
(by embryo or by patient) and patient-grouped stratified k-fold. All reproducible by
seed; indices are sorted."""

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


def _patient_ids(labels, patient_ids) -> np.ndarray:
  patient_ids = np.asarray(patient_ids)
  if patient_ids.shape != labels.shape:
    raise ValueError(f"patient_ids ({patient_ids.size}) and labels ({labels.size}) differ in length")
  return patient_ids


def _greedy_groups(labels, patient_ids, targets, seed: int) -> np.ndarray:
  """The bin of each example: whole patients, class counts near `targets` [bins, 2].

  Patients are shuffled, sorted by size (largest first) and each is given to the bin
  whose blast/non-blast counts are furthest below their targets (greedy stratification).
  """
  rng = np.random.default_rng(seed)
  patients = rng.permutation(np.unique(patient_ids))
  counts = {p: np.bincount(labels[patient_ids == p], minlength=2) for p in patients}
  patients = sorted(patients, key=lambda p: -counts[p].sum())  # stable: ties keep the shuffle
  bin_counts = np.zeros_like(targets, dtype=float)
  bin_of = {}
  for p in patients:
    deficit = ((targets - bin_counts) * (counts[p] > 0)).sum(axis=1) - 1e-6 * bin_counts.sum(axis=1)
    chosen = int(np.argmax(deficit))
    bin_of[p] = chosen
    bin_counts[chosen] += counts[p]
  return np.asarray([bin_of[p] for p in patient_ids])


def patient_kfold(labels, patient_ids, k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
  """k folds with no patient on both sides, blast fractions as even as the groups allow
  (see _greedy_groups)."""
  labels = _labels(labels)
  patient_ids = _patient_ids(labels, patient_ids)
  patients = np.unique(patient_ids)
  if not 2 <= k <= patients.size:
    raise ValueError(f"k={k} folds needs 2 <= k <= number of patients ({patients.size})")
  targets = np.tile(np.bincount(labels, minlength=2) / k, (k, 1))
  assignment = _greedy_groups(labels, patient_ids, targets, seed)
  folds = []
  for fold in range(k):
    test = np.flatnonzero(assignment == fold)
    if test.size == 0:
      raise ValueError(f"fold {fold} of {k} is empty: too few patients for k={k}")
    folds.append((np.flatnonzero(assignment != fold), test))
  return folds


def patient_split(labels, patient_ids, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(train, test): about half of the embryos each, no patient on both sides, blast
  fractions as even as the patients allow. The two folds of patient_kfold(k=2)."""
  labels = _labels(labels)
  patients = np.unique(_patient_ids(labels, patient_ids))
  if patients.size < 2:
    raise ValueError(f"a patient-grouped split needs at least 2 patients, the dataset has {patients.size}")
  train, test = patient_kfold(labels, patient_ids, k=2, seed=seed)[0]
  return train, test


def patient_validation_split(train_idx, labels, patient_ids, fraction: float = 0.1, seed: int = 0
                             ) -> tuple[np.ndarray, np.ndarray]:
  """Splits `train_idx` into (train, validation) by patient: about `fraction` of each
  class in validation, no patient on both sides."""
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
  train_idx = np.asarray(train_idx, np.int64)
  labels = _labels(labels)
  patient_ids = _patient_ids(labels, patient_ids)
  sub_labels, sub_patients = labels[train_idx], patient_ids[train_idx]
  if np.unique(sub_patients).size < 2:
    raise ValueError(f"a patient-grouped validation split needs at least 2 training patients, "
                     f"there are {np.unique(sub_patients).size}")
  totals = np.bincount(sub_labels, minlength=2)
  targets = np.stack([fraction * totals, (1.0 - fraction) * totals])
  in_validation = _greedy_groups(sub_labels, sub_patients, targets, seed) == 0
  if not in_validation.any():  # a few large patients: the greedy filled train first
    patients, sizes = np.unique(sub_patients, return_counts=True)
    in_validation = sub_patients == patients[np.argmin(sizes)]
  return np.sort(train_idx[~in_validation]), np.sort(train_idx[in_validation])


# The values of a dataset's split column, and the split each one names.
DATASET_SPLIT_NAMES = {"train": "train", "validation": "validation", "val": "validation",
                       "valid": "validation", "test": "test"}


def dataset_split(split_names, embryo_ids=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(train, test, validation) from each embryo's split string (the folder layout's
  `split` column): train, validation (or val, valid) and test, case-insensitive.
  Validation may be empty; the other two may not."""
  names = np.asarray([str(s).strip().lower() for s in np.asarray(split_names, dtype=object).reshape(-1)],
                     dtype=object)
  ids = np.asarray(embryo_ids if embryo_ids is not None else [f"#{i}" for i in range(names.size)], dtype=object)
  if names.size == 0 or not any(names):
    raise ValueError("the dataset has no split column (every embryo's split is empty): add a split column "
                     "(train, validation, test) to labels.csv and rebuild, or use split='paper' or 'patient'")
  unknown = [i for i, name in enumerate(names) if name not in DATASET_SPLIT_NAMES]
  if unknown:
    i = unknown[0]
    raise ValueError(f"split value {names[i]!r} of embryo {ids[i]} ({len(unknown)} embryo(s) in all) is not "
                     "train, validation (val, valid) or test: fix the split column of labels.csv and rebuild")
  canonical = np.asarray([DATASET_SPLIT_NAMES[name] for name in names])
  for side in ("train", "test"):
    if not (canonical == side).any():
      raise ValueError(f"no embryo has split {side!r} in the dataset's split column: mark some rows "
                       f"{side} in labels.csv and rebuild, or use split='paper' or 'patient'")
  return tuple(np.flatnonzero(canonical == side) for side in ("train", "test", "validation"))


def shared_patients(patient_ids, first, second) -> np.ndarray:
  """The patients with embryos in both index sets (empty ids are not patients)."""
  patient_ids = np.asarray(patient_ids, dtype=object)
  common = set(patient_ids[np.asarray(first, np.int64)]) & set(patient_ids[np.asarray(second, np.int64)])
  return np.asarray(sorted(p for p in common if str(p)), dtype=object)
