"""The evaluator's choice of what the bootstrap resamples."""

import numpy as np

from blastjax.evaluator import Evaluator
from blastjax.train_data import Data


def _data(train, validation, test, patients):
  n = len(patients)
  return Data(source=None, train=np.asarray(train), test=np.asarray(test), validation=np.asarray(validation),
              labels=np.zeros(n, np.int64), embryo_ids=np.asarray([f"E{i}" for i in range(n)]),
              patient_ids=np.asarray(patients))


def test_patients_are_resampled_only_when_the_split_keeps_them_apart():
  patients = ["P0", "P0", "P1", "P1", "P2", "P2"]
  grouped = Evaluator(runner=None, loader=None, data=_data([0, 1], [2, 3], [4, 5], patients))
  np.testing.assert_array_equal(grouped.patient_groups(np.array([4, 5])), ["P2", "P2"])
  by_embryo = Evaluator(runner=None, loader=None, data=_data([0, 2], [4], [1, 3, 5], patients))
  assert by_embryo.patient_groups(np.array([1, 3, 5])) is None
