"""config.split through the training data path: the dataset's own split column
('dataset'), a patient-grouped split ('patient'), the log line about patients on both
sides, and split problems (no column, a training side smaller than one batch) reported
as one line before anything is written."""

import os
import subprocess

import numpy as np
import pytest

from blastjax.testing import tiny as th
from blastjax import main, train_data
from blastjax.data import dataset
from tests.helpers.layouts import make_folder_tree

# embryo, patient, label, split: two embryos marked test, one validation.
ROWS = [("E1", "P1", "blast", "train"), ("E2", "P1", "non_blast", "test"), ("E3", "P2", "blast", "train"),
        ("E4", "P2", "non_blast", "train"), ("E5", "P3", "blast", "test"), ("E6", "P3", "non_blast", "val"),
        ("E7", "P4", "blast", "train"), ("E8", "P4", "non_blast", "train")]


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
  return th.build_small_dataset(str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """A folder dataset with a split column (built once): (manual_dir, data_dir)."""
  root = str(tmp_path_factory.mktemp("folder"))
  manual, data_dir = make_folder_tree(os.path.join(root, "in"), [r[:3] for r in ROWS], frames=2), \
      os.path.join(root, "out")
  with open(os.path.join(manual, "labels.csv"), "w") as f:
    f.write("embryo_id,patient_id,label,split\n" + "".join(",".join(r) + "\n" for r in ROWS))
  dataset.ensure_built("folder", data_dir, manual_dir=manual, verbose=False)
  return manual, data_dir


def folder_config(folder, **overrides):
  manual, data_dir = folder
  config = th.tiny_config("tiny_image", **{"dataset": "folder", "manual_dir": manual, "data_dir": data_dir,
                                           "batch_size": 2, **overrides})
  config.dataset_options = {}  # update() would merge the synthetic options in
  return config


def ids(data, indices):
  return sorted(str(data.embryo_ids[i]) for i in indices)


def test_dataset_split_uses_the_split_column(folder):
  config = folder_config(folder, split="dataset")
  data = train_data.make_data(config, train_data.open_source(config))
  assert ids(data, data.test) == ["E2", "E5"]
  assert ids(data, data.validation) == ["E6"]  # 'val' rows, no carve-out
  assert ids(data, data.train) == ["E1", "E3", "E4", "E7", "E8"]
  notes = train_data.split_notes(config, data)
  assert any("2 patients have embryos in both train and test" in n and "split='patient'" in n for n in notes)


def test_dataset_split_without_validation_rows_carves_from_train(tmp_path, folder):
  manual = str(tmp_path / "in")
  make_folder_tree(manual, [r[:3] for r in ROWS], frames=2)
  with open(os.path.join(manual, "labels.csv"), "w") as f:
    f.write("embryo_id,patient_id,label,split\n"
            + "".join(",".join(r[:3] + ("train" if r[3] == "val" else r[3],)) + "\n" for r in ROWS))
  data_dir = str(tmp_path / "out")
  dataset.ensure_built("folder", data_dir, manual_dir=manual, verbose=False)
  config = folder_config((manual, data_dir), split="dataset", validation_fraction=0.3)
  data = train_data.make_data(config, train_data.open_source(config))
  assert ids(data, data.test) == ["E2", "E5"]
  assert data.validation.size > 0
  assert sorted(ids(data, data.train) + ids(data, data.validation)) == ["E1", "E3", "E4", "E6", "E7", "E8"]


def test_patient_split_puts_no_patient_on_two_sides(synthetic_dir):
  config = th.tiny_config("tiny_image", data_dir=synthetic_dir, split="patient", validation_fraction=0.2)
  data = train_data.make_data(config, train_data.open_source(config))
  sides = [set(data.patient_ids[i]) for i in (data.train, data.validation, data.test)]
  assert all(sides) and not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
  assert data.train.size + data.validation.size + data.test.size == 32
  assert not any("both train and test" in n for n in train_data.split_notes(config, data))
  paper = th.tiny_config("tiny_image", data_dir=synthetic_dir)
  data = train_data.make_data(paper, train_data.open_source(paper))
  assert any(n.startswith("split='paper' is by embryo:") and "patients have embryos in both train and test" in n
             for n in train_data.split_notes(paper, data))


def test_split_problems_are_usage_errors(synthetic_dir, folder):
  config = th.tiny_config("tiny_image", data_dir=synthetic_dir, split="dataset")
  with pytest.raises(main.UsageError, match=r"config.split='dataset': the dataset has no split column"):
    main.checked_source(config, "train")
  with pytest.raises(main.UsageError, match=r"the training split has 5 embryos, fewer than one batch "
                                            r"\(config.batch_size=8\)"):
    main.checked_source(folder_config(folder, split="dataset", batch_size=8, eval_batch_size=8), "train")
  config = th.tiny_config("tiny_image", data_dir=synthetic_dir, num_folds=2, validation_fraction=0.0)
  folds = train_data.cross_validation_folds(config, train_data.open_source(config))
  smallest = int(np.argmin([train.size for train, _ in folds]))
  config.batch_size = int(folds[smallest][0].size)
  main.checked_source(config, "cross_validation")  # every fold holds one batch
  config.batch_size += 1
  with pytest.raises(main.UsageError, match=rf"fold {smallest + 1}/2: the training split has "
                                            rf"{config.batch_size - 1} embryos"):
    main.checked_source(config, "cross_validation")


@pytest.mark.parametrize("overrides,message", [
    ({"batch_size": 64, "eval_batch_size": 4},
     "error: the training split has 12 embryos, fewer than one batch (config.batch_size=64): lower batch_size"),
    ({"split": "dataset"}, "error: config.split='dataset': the dataset has no split column"),
])
def test_cli_split_problem_is_one_line_and_writes_nothing(tmp_path, synthetic_dir, overrides, message):
  config_file = th.write_config_file(str(tmp_path / "config.py"), "tiny_image", data_dir=synthetic_dir,
                                     **overrides)
  workdir = tmp_path / "run"
  done = subprocess.run(th.main_command("--config", config_file, "--workdir", str(workdir)),
                        env=th.subprocess_env(), capture_output=True, text=True, timeout=300, cwd=th.REPO)
  assert done.returncode == 2, done.stderr[-2000:]
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith(message), done.stderr[-2000:]
  assert "Traceback" not in done.stderr
  assert not workdir.exists()
