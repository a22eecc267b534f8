"""predict on an embryo folder: the same probability as the run's evaluation, clear
errors for input the model cannot take, printed adaptations otherwise."""

import csv
import os
import shutil
import subprocess

import numpy as np
import pytest

from blastjax.testing import tiny as th
from tests.helpers.layouts import write_embryo_folder
from blastjax import main, predict, train_data


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  data_dir = th.build_small_dataset(str(tmp_path_factory.mktemp("data")))
  config = th.tiny_config("tiny_video", data_dir=data_dir, num_steps=4, validation_fraction=0.0)
  workdir = str(tmp_path_factory.mktemp("run"))
  main.run(config, workdir, "train")
  source = train_data.open_source(config)
  with open(os.path.join(workdir, "predictions.csv")) as f:
    row = next(csv.DictReader(f))
  index = list(source.metadata()["embryo_ids"]).index(row["embryo_id"])
  return workdir, source[index], row


def test_same_probability_as_the_evaluation(run, tmp_path):
  workdir, example, row = run
  folder = write_embryo_folder(str(tmp_path), example)
  result = predict.predict_embryo(workdir, folder)
  assert result["prob_blast"] == pytest.approx(float(row["prob_blast"]), abs=2e-6)
  assert result["by_hours"][40.0] == pytest.approx(float(row["prob_blast_40h"]), abs=2e-6)
  assert result["notes"] == []
  done = subprocess.run(th.predict_command("--workdir", workdir, "--embryo_dir", folder),
                        env=th.subprocess_env(), capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert f"embryo {example['embryo_id']}: P(blast) = {result['prob_blast']:.4f}" in done.stdout
  assert "first 40 h: P(blast)" in done.stdout


def test_mismatched_input_is_refused_or_adapted_visibly(run, tmp_path):
  workdir, example, _ = run
  no_center = write_embryo_folder(str(tmp_path / "a"), example, planes=[-15, 15])
  with pytest.raises(predict.PredictError, match="no central plane F0"):
    predict.predict_embryo(workdir, no_center)
  bigger = write_embryo_folder(str(tmp_path / "b"), example, resize=48)
  result = predict.predict_embryo(workdir, bigger)
  assert any("48x48" in note and "resized to 16" in note for note in result["notes"])
  short = write_embryo_folder(str(tmp_path / "c"), example, frames=2)
  result = predict.predict_embryo(workdir, short, hours=[1.0, 200.0])
  assert any("only 2 frames observed; the model takes 4: frames repeated" in n for n in result["notes"])
  assert 0.0 <= result["prob_blast"] <= 1.0
  shutil.rmtree(os.path.join(workdir, "best"), ignore_errors=True)
  with pytest.raises(predict.PredictError, match="not a directory"):
    predict.predict_embryo(workdir, str(tmp_path / "missing"))


def test_no_frame_before_a_cutoff_is_not_a_number(run, tmp_path):
  workdir, example, _ = run
  folder = write_embryo_folder(str(tmp_path), example)
  first = float(example["hours"][0])
  result = predict.predict_embryo(workdir, folder, hours=[first / 2 if first > 0 else -1.0])
  assert list(result["by_hours"].values()) == [None]
  assert np.isfinite(result["prob_blast"])
