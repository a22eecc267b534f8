"""Metrics, early-prediction curve, fold aggregation and the files of an evaluation."""

import csv
import json
import math
import os

import numpy as np
import pytest

from blastjax import evaluate, results


def _pairwise_auc(labels, probs):
  pos = probs[labels == 1]
  neg = probs[labels == 0]
  wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
  return wins / (pos.size * neg.size)


def test_auc_matches_pairwise_definition_with_ties():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 200)
  probs = np.round(rng.random(200) * 0.5 + 0.3 * labels, 1)  # many ties
  assert evaluate.roc_auc(labels, probs) == pytest.approx(_pairwise_auc(labels, probs), abs=1e-12)


def test_auc_is_nan_with_one_class_and_one_when_perfect():
  assert math.isnan(evaluate.roc_auc([1, 1, 1], [0.2, 0.4, 0.9]))
  assert evaluate.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0


def test_classification_metrics_on_a_known_confusion_matrix():
  labels = [1, 1, 1, 0, 0, 0, 0, 1]
  probs = [0.9, 0.8, 0.3, 0.2, 0.6, 0.1, 0.4, 0.7]
  m = evaluate.classification_metrics(labels, probs)
  # tp=3 (0.9, 0.8, 0.7), fn=1 (0.3), tn=3, fp=1 (0.6)
  assert m["confusion_matrix"] == [[3, 1], [1, 3]]
  assert m["accuracy"] == pytest.approx(6 / 8)
  assert m["sensitivity"] == pytest.approx(3 / 4)
  assert m["specificity"] == pytest.approx(3 / 4)
  assert m["balanced_accuracy"] == pytest.approx(3 / 4)
  assert m["precision_macro"] == pytest.approx(3 / 4)
  assert m["f1_macro"] == pytest.approx(3 / 4)
  assert m["auc"] == pytest.approx(_pairwise_auc(np.array(labels), np.array(probs)))


def test_macro_metrics_count_an_undefined_class_as_zero():
  """A model predicting only non-blast must not win on macro F1 (issue: 0.75 / 0.6)."""
  m = evaluate.classification_metrics([0, 0, 0, 1, 1], [.1, .2, .3, .4, .45])
  assert m["f1_macro"] == pytest.approx(0.375)
  assert m["precision_macro"] == pytest.approx(0.3)
  assert m["recall_macro"] == pytest.approx(0.5)


def _sklearn_metrics(labels, probs, threshold):
  from sklearn import metrics as sk  # a test dependency (setup.cfg extra `test`)
  preds = (np.asarray(probs) >= threshold).astype(int)
  macro = dict(labels=[0, 1], average="macro", zero_division=0)
  expected = {
      "accuracy": sk.accuracy_score(labels, preds),
      "precision_macro": sk.precision_score(labels, preds, **macro),
      "recall_macro": sk.recall_score(labels, preds, **macro),
      "f1_macro": sk.f1_score(labels, preds, **macro),
      "confusion_matrix": sk.confusion_matrix(labels, preds, labels=[0, 1]).tolist(),
  }
  if len(set(labels)) == 2:
    expected["balanced_accuracy"] = sk.balanced_accuracy_score(labels, preds)
    expected["auc"] = sk.roc_auc_score(labels, probs)
    expected["sensitivity"] = sk.recall_score(labels, preds, pos_label=1, zero_division=0)
    expected["specificity"] = sk.recall_score(labels, preds, pos_label=0, zero_division=0)
  return expected


def _metric_cases():
  rng = np.random.default_rng(3)
  cases = []
  for size in (2, 5, 17, 60):
    labels = rng.integers(0, 2, size)
    labels[:2] = [0, 1]
    cases.append((labels, np.round(rng.random(size), 1), 0.5))   # ties at the threshold
  cases += [
      ([0, 0, 0, 1, 1], [.1, .2, .3, .4, .45], 0.5),   # one class predicted
      ([0, 0, 1, 1], [.9, .8, .7, .6], 0.5),           # the other class predicted
      ([0, 1, 0, 1], [.2, .8, .3, .7], 0.5),           # perfect
      ([0, 1, 0, 1], [.8, .2, .7, .3], 0.5),           # always wrong
      ([1, 1, 1], [.2, .6, .9], 0.5),                  # one class present
      ([0, 0, 0], [.2, .6, .9], 0.5),
      ([0, 0, 0], [.1, .1, .1], 0.5),                  # one class present, all correct
      ([0, 1, 1, 0, 1], [.3, .3, .7, .7, .5], 0.7),    # another threshold
  ]
  return cases


@pytest.mark.parametrize("labels, probs, threshold", _metric_cases())
def test_metrics_equal_scikit_learn(labels, probs, threshold):
  ours = evaluate.classification_metrics(labels, probs, threshold)
  expected = _sklearn_metrics(list(labels), list(probs), threshold)
  assert ours["confusion_matrix"] == expected.pop("confusion_matrix")
  for name, value in expected.items():
    assert ours[name] == pytest.approx(value, abs=1e-12), name
  if len(set(labels)) == 1:
    assert math.isnan(ours["auc"])
    assert ours["balanced_accuracy"] == pytest.approx(ours["accuracy"])


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match="differ in length"):
    evaluate.classification_metrics([0, 1], [0.5])
  with pytest.raises(ValueError, match="must be 0"):
    evaluate.classification_metrics([0, 2], [0.5, 0.5])
  with pytest.raises(ValueError, match="NaN"):
    evaluate.classification_metrics([0, 1], [0.5, float("nan")])


def test_roc_curve_ends_at_corners_and_is_monotone():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 2, 50)
  fpr, tpr, _ = evaluate.roc_curve(labels, rng.random(50))
  assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
  assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_roc_curve_area_equals_auc():
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 2, 80)
  probs = np.round(rng.random(80), 2)
  fpr, tpr, _ = evaluate.roc_curve(labels, probs)
  assert np.trapezoid(tpr, fpr) == pytest.approx(evaluate.roc_auc(labels, probs), abs=1e-12)


def test_early_prediction_curve_and_area():
  labels = np.array([0, 0, 1, 1])
  by_hours = {24: [0.6, 0.4, 0.4, 0.6], 48: [0.4, 0.4, 0.6, 0.6], 72.0: [0.1, 0.2, 0.9, 0.8]}
  early = evaluate.early_prediction(labels, by_hours)
  assert early["hours"] == [24.0, 48.0, 72.0]
  assert early["accuracy"] == [0.5, 1.0, 1.0]
  # trapezoid: (0.5+1)/2*24 + 1*24 = 42 over 48 hours
  assert early["area_under_accuracy_curve"] == pytest.approx(42 / 48)


def test_average_by_example_groups_windows():
  idx, mean = evaluate.average_by_example([3, 1, 3, 1, 3], [0.2, 0.5, 0.4, 0.7, 0.6])
  np.testing.assert_array_equal(idx, [1, 3])
  np.testing.assert_allclose(mean, [0.6, 0.4])


def test_aggregate_folds_mean_std():
  folds = [{"accuracy": 0.7, "auc": 0.8, "confusion_matrix": [[1, 0], [0, 1]]},
           {"accuracy": 0.9, "auc": 0.6, "confusion_matrix": [[1, 0], [0, 1]]}]
  agg = evaluate.aggregate_folds(folds)
  assert set(agg) == {"accuracy", "auc"}
  assert agg["accuracy"]["mean"] == pytest.approx(0.8)
  assert agg["accuracy"]["std"] == pytest.approx(np.std([0.7, 0.9], ddof=1))
  assert "±" in evaluate.format_metrics(agg)


def test_write_evaluation_files(tmp_path):
  labels = [0, 1, 0, 1]
  probs = [0.2, 0.9, 0.6, 0.7]
  rows = [{"embryo_id": f"e{i}", "patient_id": "p0", "label": l, "prob_blast": p}
          for i, (l, p) in enumerate(zip(labels, probs))]
  metrics = evaluate.classification_metrics(labels, probs)
  early = evaluate.early_prediction(labels, {24: probs, 48: probs})
  paths = results.write_evaluation(str(tmp_path), metrics, rows, early)
  assert {"confusion_matrix", "calibration", "roc", "early_prediction"} <= set(paths)
  for path in paths.values():
    assert os.path.getsize(path) > 0
  with open(paths["metrics"]) as f:
    saved = json.load(f)
  assert saved["accuracy"] == metrics["accuracy"]
  assert saved["early_prediction"]["hours"] == [24.0, 48.0]
  with open(paths["predictions"]) as f:
    read = list(csv.DictReader(f))
  assert [r["embryo_id"] for r in read] == ["e0", "e1", "e2", "e3"]
  with open(paths["roc"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_metrics_json_turns_nan_into_null(tmp_path):
  path = str(tmp_path / "m.json")
  results.write_json(path, {"auc": float("nan"), "nested": [float("inf"), 1.0]})
  with open(path) as f:
    assert json.load(f) == {"auc": None, "nested": [None, 1.0]}


def test_brier_score_equals_scikit_learn():
  from sklearn import metrics as sk
  rng = np.random.default_rng(4)
  labels, probs = rng.integers(0, 2, 40), rng.random(40)
  assert evaluate.brier_score(labels, probs) == pytest.approx(sk.brier_score_loss(labels, probs), abs=1e-12)


def test_expected_calibration_error_on_known_bins():
  # bins 0, 1, 8, 9 with one example each: gaps .05, .15, .15, .05
  assert evaluate.expected_calibration_error([0, 0, 1, 1], [.05, .15, .85, .95]) == pytest.approx(0.1)
  rng = np.random.default_rng(5)
  probs = rng.random(20000)
  calibrated = (rng.random(20000) < probs).astype(int)
  assert evaluate.expected_calibration_error(calibrated, probs) < 0.02
  assert evaluate.expected_calibration_error(1 - calibrated, probs) > 0.4


def _example(n=48, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n)
  return labels, np.clip(0.35 * labels + 0.65 * rng.random(n), 0, 1)


def test_bootstrap_intervals_are_seeded_and_hold_the_estimate():
  labels, probs = _example()
  first = evaluate.bootstrap_intervals(labels, probs, num_resamples=300, seed=1)
  assert first == evaluate.bootstrap_intervals(labels, probs, num_resamples=300, seed=1)
  assert first != evaluate.bootstrap_intervals(labels, probs, num_resamples=300, seed=2)
  point = evaluate.classification_metrics(labels, probs)
  for name, (low, high) in first.items():
    assert low <= point[name] <= high, name
    assert high - low > 0.02, name       # 48 embryos: the interval is not a point


def test_bootstrap_over_groups_moves_a_group_together():
  """Each embryo twice, the copies in one group: resampling the groups is resampling the
  original embryos (same draws, metrics are ratios), so the intervals are equal."""
  labels, probs = _example()
  pairs = evaluate.bootstrap_intervals(np.repeat(labels, 2), np.repeat(probs, 2),
                                       groups=np.repeat(np.arange(labels.size), 2), num_resamples=200)
  single = evaluate.bootstrap_intervals(labels, probs, num_resamples=200)
  for name in single:
    np.testing.assert_allclose(pairs[name], single[name], atol=1e-12, err_msg=name)
  # Resampling the copies one by one instead gives narrower (over-confident) intervals.
  naive = evaluate.bootstrap_intervals(np.repeat(labels, 2), np.repeat(probs, 2), num_resamples=200)
  assert naive["accuracy"][1] - naive["accuracy"][0] < single["accuracy"][1] - single["accuracy"][0]


def test_evaluation_metrics_say_what_they_are():
  labels, probs = _example()
  m = evaluate.evaluation_metrics(labels, probs, groups=np.arange(48) // 3, group_name="patients")
  assert set(m["ci95"]) == set(evaluate.INTERVAL_METRICS)
  assert m["ci95_resampled"] == "patients"
  assert m["threshold"] == 0.5 and "0.5" in m["threshold_rule"]
  assert m["brier"] == pytest.approx(evaluate.brier_score(labels, probs))
  assert evaluate.evaluation_metrics(labels, probs)["ci95_resampled"] == "embryos"


def test_temperature_scaling_recovers_a_known_temperature_and_keeps_decisions():
  rng = np.random.default_rng(6)
  true_logits = rng.normal(0, 2, 4000)
  labels = (rng.random(4000) < 1 / (1 + np.exp(-true_logits))).astype(int)
  overconfident = 1 / (1 + np.exp(-3.0 * true_logits))      # logits 3x too large
  temperature = evaluate.fit_temperature(labels, overconfident)
  assert temperature == pytest.approx(3.0, rel=0.1)
  calibrated = evaluate.apply_temperature(overconfident, temperature)
  assert evaluate.expected_calibration_error(labels, calibrated) < evaluate.expected_calibration_error(labels, overconfident)
  before = evaluate.classification_metrics(labels, overconfident)
  after = evaluate.classification_metrics(labels, calibrated)
  for name in ("accuracy", "sensitivity", "specificity", "auc"):
    assert after[name] == pytest.approx(before[name], abs=1e-12), name
  np.testing.assert_allclose(evaluate.apply_temperature(overconfident, 1.0), overconfident)


def test_evaluation_metrics_without_intervals_skip_only_the_bootstrap():
  labels, probs = _example()
  full, light = evaluate.evaluation_metrics(labels, probs), evaluate.evaluation_metrics(labels, probs, intervals=False)
  assert set(full) - set(light) == {"ci95", "ci95_resampled"}
  assert all(light[k] == full[k] for k in light)
