"""Feature batches for 'features' models: padding, early-prediction masking, resume."""

import numpy as np
import pytest

from blastjax.data import pipeline


class FakeFeatures:
  """The FeatureSource interface over in-memory sequences of lengths 1..5."""

  max_steps = 5

  def __init__(self, n=10, dim=3):
    self.items = [{"features": np.full((1 + i % 5, dim), i + 1.0, np.float32),
                   "hours": 10.0 * np.arange(1, 2 + i % 5, dtype=np.float32),
                   "label": i % 2, "embryo_id": f"e{i}", "patient_id": f"p{i // 2}"} for i in range(n)]

  def __len__(self):
    return len(self.items)

  def __getitem__(self, index):
    return self.items[index]


def _rows(loader):
  out = {}
  for batch in loader:
    lead = batch["label"].ndim  # 2 when split over devices
    flat = {k: v.reshape((-1,) + v.shape[lead:]) for k, v in batch.items()}
    for row in range(flat["label"].shape[0]):
      if flat["valid"][row]:
        out[int(flat["example_index"][row])] = {k: v[row] for k, v in flat.items()}
  return out


def test_rows_are_padded_masked_and_cut_at_observe_hours():
  source = FakeFeatures()
  rows = _rows(pipeline.make_feature_loader(source, batch_size=4, num_devices=2))
  assert sorted(rows) == list(range(10))
  row = rows[3]  # 4 steps at 10..40 h
  assert row["features"].shape == (5, 3) and row["mask"].tolist() == [False] * 4 + [True]
  assert row["features"][:4].min() == 4.0 and row["features"][4].max() == 0.0
  early = _rows(pipeline.make_feature_loader(source, batch_size=4, observe_hours=25.0))
  assert early[3]["mask"].tolist() == [False, False, True, True, True]
  assert early[3]["features"][2:].max() == 0.0 and early[3]["hours"].tolist() == [10.0, 20.0, 0.0, 0.0, 0.0]


def test_training_order_resumes_exactly():
  loader = pipeline.make_feature_loader(FakeFeatures(), batch_size=4, shuffle=True, seed=3,
                                                num_epochs=None, drop_remainder=True)
  iterator = iter(loader)
  for _ in range(3):
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator)["example_index"].tolist() for _ in range(4)]
  resumed = iter(loader)
  resumed.set_state(state)
  assert [next(resumed)["example_index"].tolist() for _ in range(4)] == expected


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="divisible by num_devices=3"):
    pipeline.make_feature_loader(FakeFeatures(), batch_size=4, num_devices=3)
  with pytest.raises(ValueError, match=r"indices must lie in \[0, 10\)"):
    pipeline.make_feature_loader(FakeFeatures(), indices=[11], batch_size=2)
