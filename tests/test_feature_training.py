"""'features' models (feature_lstm) through the trainer: the cache is extracted on first
use and reused, evaluation (early prediction included) and predict agree."""

import csv
import json
import os

import pytest

from tests.helpers.layouts import write_embryo_folder
from blastjax.testing import tiny as th
from blastjax import config_validation, main, predict, train_data
from blastjax import feature_cache


def _config(data_dir, **overrides):
  # tiny_per_step in feature mode returns 4 features per frame; windows of 2 frames.
  settings = dict(data_dir=data_dir, feature_extractor="tiny_per_step", sampling="sliding_windows",
                  clip_length=2, num_steps=4, validation_fraction=0.0)
  return th.tiny_config("feature_lstm", **{**settings, **overrides})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  data_dir = th.build_small_dataset(str(tmp_path_factory.mktemp("data")))
  config = _config(data_dir)
  workdir = str(tmp_path_factory.mktemp("run"))
  main.preflight(config)
  main.run(config, workdir, "train")
  return config, workdir


def test_cache_is_built_in_the_workdir_and_reused(run):
  config, workdir = run
  manifest = feature_cache.read_manifest(os.path.join(workdir, "features"))
  assert manifest["model"] == "tiny_per_step" and manifest["feature_dim"] == 4
  assert manifest["settings"]["mode"] == "sliding_windows" and manifest["settings"]["clip_length"] == 2
  features = feature_cache.FeatureSource(os.path.join(workdir, "features"))
  assert len(features) == 32 and 5 <= features.max_steps <= 11  # up to 21 frames (every 4 h), 2 per window
  stamp = os.path.getmtime(os.path.join(workdir, "features", "features.npy"))
  with open(os.path.join(workdir, "metrics.json")) as f:
    trained = json.load(f)
  assert trained["early_prediction"]["hours"] == [40.0, 80.0]
  os.remove(os.path.join(workdir, "metrics.json"))
  main.run(main.load_workdir_config(workdir), workdir, "evaluate")
  with open(os.path.join(workdir, "metrics.json")) as f:
    assert json.load(f) == trained
  assert os.path.getmtime(os.path.join(workdir, "features", "features.npy")) == stamp  # not re-extracted


def test_predict_matches_the_evaluation(run, tmp_path):
  config, workdir = run
  source = train_data.open_source(config)
  with open(os.path.join(workdir, "predictions.csv")) as f:
    row = next(csv.DictReader(f))
  example = source[list(source.metadata()["embryo_ids"]).index(row["embryo_id"])]
  folder = write_embryo_folder(str(tmp_path), example)
  result = predict.predict_embryo(workdir, folder)
  assert result["prob_blast"] == pytest.approx(float(row["prob_blast"]), abs=2e-6)
  assert result["by_hours"][40.0] == pytest.approx(float(row["prob_blast_40h"]), abs=2e-6)


def test_feature_config_problems_are_named():
  problems = "\n".join(config_validation.validate(
      _config("", sampling="segments", feature_extractor="tiny_image", eval_sampling="uniform")))
  assert "config.sampling='segments'" in problems
  assert "config.eval_sampling='uniform'" in problems
  assert "config.feature_extractor='tiny_image': not a video model" in problems
