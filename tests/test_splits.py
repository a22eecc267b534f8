"""Splits: paper half/half by embryo, stratified validation, patient-grouped k-fold."""

import numpy as np
import pytest

from blastjax.data import splits

RNG = np.random.default_rng(0)
LABELS = RNG.integers(0, 2, 101)
PATIENTS = np.asarray([f"P{i}" for i in RNG.integers(0, 23, 101)])


def test_paper_split_is_class_balanced_half_half_and_reproducible():
  train, test = splits.paper_split(LABELS, seed=5)
  assert np.intersect1d(train, test).size == 0
  assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(LABELS.size))
  for value in (0, 1):
    members = (LABELS == value).sum()
    assert (LABELS[train] == value).sum() == members // 2
  again = splits.paper_split(LABELS, seed=5)
  assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
  assert not np.array_equal(train, splits.paper_split(LABELS, seed=6)[0])


def test_validation_split_is_stratified_subset_of_train():
  train, _ = splits.paper_split(LABELS, seed=0)
  fit, val = splits.validation_split(train, LABELS, fraction=0.2, seed=1)
  assert np.intersect1d(fit, val).size == 0
  assert np.array_equal(np.sort(np.concatenate([fit, val])), train)
  for value in (0, 1):
    share = (LABELS[val] == value).sum() / (LABELS[train] == value).sum()
    assert 0.15 < share < 0.25
  assert np.array_equal(val, splits.validation_split(train, LABELS, 0.2, seed=1)[1])
  with pytest.raises(ValueError, match="fraction"):
    splits.validation_split(train, LABELS, fraction=1.0)


def test_patient_kfold_groups_patients_and_stratifies():
  folds = splits.patient_kfold(LABELS, PATIENTS, k=5, seed=3)
  assert len(folds) == 5
  tests = np.concatenate([test for _, test in folds])
  assert np.array_equal(np.sort(tests), np.arange(LABELS.size))  # every embryo tested once
  for train, test in folds:
    assert np.intersect1d(train, test).size == 0
    assert not set(PATIENTS[train]) & set(PATIENTS[test])
    assert abs(LABELS[test].mean() - LABELS.mean()) < 0.2
  again = splits.patient_kfold(LABELS, PATIENTS, k=5, seed=3)
  assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))


def test_split_errors_are_clear():
  with pytest.raises(ValueError, match="k=30"):
    splits.patient_kfold(LABELS, PATIENTS, k=30)
  with pytest.raises(ValueError, match="differ in length"):
    splits.patient_kfold(LABELS, PATIENTS[:-1], k=3)
  with pytest.raises(ValueError, match="at least 2"):
    splits.paper_split([1])


def test_patient_split_groups_patients_half_half_and_reproducible():
  train, test = splits.patient_split(LABELS, PATIENTS, seed=2)
  assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(LABELS.size))
  assert not set(PATIENTS[train]) & set(PATIENTS[test])
  assert abs(train.size - test.size) < 0.2 * LABELS.size
  assert abs(LABELS[test].mean() - LABELS.mean()) < 0.15
  again = splits.patient_split(LABELS, PATIENTS, seed=2)
  assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
  assert not np.array_equal(test, splits.patient_split(LABELS, PATIENTS, seed=3)[1])
  with pytest.raises(ValueError, match="at least 2 patients, the dataset has 1"):
    splits.patient_split(LABELS, ["P0"] * LABELS.size)


def test_patient_validation_split_is_grouped_subset_of_train():
  train, _ = splits.patient_split(LABELS, PATIENTS, seed=0)
  fit, val = splits.patient_validation_split(train, LABELS, PATIENTS, fraction=0.25, seed=1)
  assert np.array_equal(np.sort(np.concatenate([fit, val])), train)
  assert val.size > 0 and fit.size > 0
  assert not set(PATIENTS[fit]) & set(PATIENTS[val])
  assert 0.1 < val.size / train.size < 0.4
  # Two large patients: the greedy fills train first; validation still gets one patient.
  labels, patients = np.asarray([0, 1] * 10), np.asarray(["A"] * 10 + ["B"] * 8 + ["C"] * 2)
  fit, val = splits.patient_validation_split(np.arange(20), labels, patients, fraction=0.1)
  assert set(patients[val]) == {"C"} and set(patients[fit]) == {"A", "B"}


def test_dataset_split_reads_the_split_column():
  names = ["train", "Test", "val", "validation", "valid", "train ", "test"]
  train, test, val = splits.dataset_split(names)
  assert train.tolist() == [0, 5] and test.tolist() == [1, 6] and val.tolist() == [2, 3, 4]
  train, test, val = splits.dataset_split(["train", "test"])
  assert val.size == 0


@pytest.mark.parametrize("names,message", [
    (["", ""], "no split column"),
    (["train", "dev", "test"], "split value 'dev' of embryo E1"),
    (["train", "", "test"], "split value '' of embryo E1"),
    (["train", "validation"], "no embryo has split 'test'"),
    (["test", "val"], "no embryo has split 'train'"),
])
def test_dataset_split_errors_name_the_value(names, message):
  with pytest.raises(ValueError, match=message):
    splits.dataset_split(names, [f"E{i}" for i in range(len(names))])


def test_shared_patients():
  patients = np.asarray(["A", "A", "B", "C", ""], dtype=object)
  assert splits.shared_patients(patients, [0, 2, 4], [1, 3, 4]).tolist() == ["A"]
