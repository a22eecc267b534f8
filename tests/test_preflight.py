"""Settings that used to fail only after work started (a traceback mid-run, or a
silently different run) are refused up front in one line (issue 14, "Everything
checked before work starts"), and `--mode evaluate` treats the paths of a workdir's
config.json as data: it builds and writes nothing outside the workdir."""

import json
import os
import shutil

import pytest

from blastjax import config_validation, main, predict, train_data
from blastjax.testing import tiny as th
from tests.helpers.layouts import write_embryo_folder


def _problems(**overrides):
  config = th.tiny_config("tiny_image", **overrides)
  return config_validation.validate(config, num_devices=1)


def test_unknown_model_kwargs_are_one_line():
  problems = _problems(model_kwargs={"featurez": 8})
  assert len(problems) == 1 and problems[0].startswith("config.model_kwargs={'featurez': 8}: model 'tiny_image'")
  assert "featurez" in problems[0]
  assert _problems(model_kwargs={"features": 8}) == []


@pytest.mark.parametrize("options, message", [
    ({"num_embryos": -3}, "config.dataset_options.num_embryos=-3: must be a positive number"),
    ({"interval_minutes": 0.0}, "config.dataset_options.interval_minutes=0.0: must be a positive number"),
    ({"num_embryos": 8, "num_patients": 12}, "config.dataset_options.num_patients=12 > num_embryos=8"),
])
def test_bad_simulator_options_are_one_line(options, message):
  problems = _problems(dataset_options={**th.SMALL_DATASET, **options})
  assert len(problems) == 1 and problems[0].startswith(message), problems


def test_an_input_batch_larger_than_memory_is_refused():
  problems = _problems(image_size=200_000, batch_size=8, eval_batch_size=8)
  assert len(problems) == 1 and problems[0].startswith("config.image_size=200000 with batch_size=8"), problems
  assert "GiB" in problems[0] and "lower image_size" in problems[0]


@pytest.mark.parametrize("values, message", [
    (["abc"], "'abc' is not a number of hours"),
    (["30", "nan"], "'nan' must be a positive, finite number"),
    (["-5"], "'-5' must be a positive"),
    (["inf"], "'inf' must be a positive, finite"),
])
def test_predict_hours_are_checked(values, message):
  with pytest.raises(ValueError, match=message):
    predict.parse_hours(values)
  assert predict.parse_hours(["30", "50.5"]) == [30.0, 50.5]
  assert predict.parse_hours(None) is None


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  data_dir = th.build_small_dataset(str(tmp_path_factory.mktemp("data")))
  config = th.tiny_config("tiny_video", data_dir=data_dir, num_steps=4, validation_fraction=0.0)
  workdir = str(tmp_path_factory.mktemp("run"))
  main.run(config, workdir, "train")
  return config, workdir


def _copy_with_config(workdir: str, target: str, **changes) -> str:
  shutil.copytree(workdir, target)
  path = os.path.join(target, "config.json")
  with open(path) as f:
    saved = json.load(f)
  saved.update(changes)
  with open(path, "w") as f:
    json.dump(saved, f)
  return target


def test_evaluate_does_not_build_where_config_json_points(run, tmp_path):
  config, workdir = run
  elsewhere = str(tmp_path / "not_here")
  copy = _copy_with_config(workdir, str(tmp_path / "copy"), data_dir=elsewhere)
  with pytest.raises(main.UsageError, match="is not built in .*not_here.*does not build datasets"):
    main.run(None, copy, "evaluate")
  assert not os.path.exists(elsewhere)  # nothing was built or written there
  assert main.run(None, workdir, "evaluate")["num_embryos"] > 0  # the run's own data: evaluates


def test_predict_with_a_config_json_of_another_model_is_one_error(run, tmp_path):
  config, workdir = run
  copy = _copy_with_config(workdir, str(tmp_path / "copy"), model_kwargs={"features": 8})
  source = train_data.open_source(config)
  folder = write_embryo_folder(str(tmp_path), source[0])
  with pytest.raises(predict.PredictError, match="parameters do not fit the checkpoint.*config_history.jsonl"):
    predict.predict_embryo(copy, folder)


def test_early_hours_before_the_first_frame_is_refused_before_training(run, tmp_path):
  config, _ = run
  config = th.tiny_config("tiny_video", data_dir=config.data_dir, num_steps=4, early_hours=(0.5, 40.0))
  workdir = str(tmp_path / "new_run")
  with pytest.raises(main.UsageError, match=r"cut-off 0.5 h is before the first frame of test embryo \S+ "
                                            r"\(at [\d.]+ h\); every cut-off must be >="):
    main.run(config, workdir, "train")
  assert not os.path.exists(workdir)  # refused before the workdir was touched
