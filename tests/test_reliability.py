"""Fault injection against the run directory's guarantees (issue 14): bit flips and
truncation in checkpoints, a resume with another config, two trainings on one workdir,
a full disk while writing results, a cut-off metrics line, formula-like embryo ids.

Each test reproduces a failure that blastjax before these guarantees let through
silently (or with a traceback); docs/reliability.md lists them with their tests.
"""

import errno
import glob
import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from blastjax import main, results, rundir, train
from blastjax.testing import tiny as th

RUN = dict(num_steps=12, checkpoint_every_steps=4, eval_every_steps=12, keep_checkpoints=3)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return th.build_small_dataset(str(tmp_path_factory.mktemp("data")))


def _state(scale: float) -> dict:
  return {"step": np.asarray(int(scale), np.int32),
          "params": {"dense": {"kernel": np.arange(2048, dtype=np.float32).reshape(64, 32) * scale,
                               "bias": np.full(32, scale, np.float32)}}}


def _data_files(step_dir: str) -> list:
  return sorted(f for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
                if os.path.isfile(f))


def _flip(path: str, position: int) -> None:
  with open(path, "r+b") as f:
    f.seek(position)
    byte = f.read(1)[0]
    f.seek(position)
    f.write(bytes([byte ^ 0x10]))


def _equal(a: dict, b: dict) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b)))


def _leaves(tree):
  import jax
  return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def test_no_bit_flip_in_a_checkpoint_restores_silently(tmp_path):
  """Orbax's files carry no checksum: a flipped bit used to restore as another value."""
  workdir = str(tmp_path)
  checkpoints = rundir.Checkpoints(workdir, keep=2)
  checkpoints.save(1, _state(1.0), {"step": 1})
  checkpoints.close()
  step_dir = os.path.join(workdir, "checkpoints", "1")
  pristine = {f: open(f, "rb").read() for f in _data_files(step_dir)}
  rng = np.random.default_rng(0)
  outcomes = {"detected": 0, "unchanged": 0}
  for trial in range(24):
    path = list(pristine)[trial % len(pristine)]
    _flip(path, int(rng.integers(len(pristine[path]))))
    reader = rundir.Checkpoints(workdir, read_only=True)
    try:
      restored, _ = reader.restore_latest(_state(0.0))
      assert _equal(restored, _state(1.0)), f"a flip in {path} restored other values without an error"
      outcomes["unchanged"] += 1
    except rundir.DamagedCheckpointError as error:
      assert step_dir in str(error)
      outcomes["detected"] += 1
    finally:
      reader.close()
    with open(path, "wb") as f:
      f.write(pristine[path])
  # Flips in bytes no value is read from (padding, unused manifest fields) change nothing;
  # the rest (11 of these 24) must be detected, none restored as other values.
  assert outcomes["detected"] >= 8, outcomes


def _corrupt_latest(workdir: str) -> int:
  steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
  files = _data_files(os.path.join(workdir, "checkpoints", str(steps[-1])))
  biggest = max(files, key=os.path.getsize)
  _flip(biggest, os.path.getsize(biggest) // 2)
  return steps[-1]


def _trained_workdir(tmp_path, data_dir, **overrides):
  workdir = str(tmp_path / "run")
  config = th.tiny_config("tiny_image", data_dir=data_dir, **{**RUN, **overrides})
  main.run(config, workdir, "train")
  return config, workdir


def test_training_falls_back_to_the_newest_intact_checkpoint(tmp_path, data_dir, caplog):
  config, workdir = _trained_workdir(tmp_path, data_dir)
  damaged = _corrupt_latest(workdir)
  config.num_steps = 16
  with caplog.at_level(logging.WARNING, logger="blastjax"):
    metrics = main.run(config, workdir, "train")
  assert metrics["step"] == 16
  assert os.path.isdir(os.path.join(workdir, "checkpoints", f"damaged-{damaged}"))  # kept, renamed
  lines = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
  assert len(lines) == 1 and f"checkpoints/{damaged}" in lines[0] and "\n" not in lines[0]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f if '"train"' in line]
  assert steps == sorted(steps) and len(steps) == len(set(steps))  # one log line per step


def test_evaluate_names_the_damaged_checkpoint_in_one_line(tmp_path, data_dir):
  config, workdir = _trained_workdir(tmp_path, data_dir, validation_fraction=0.0)
  damaged = _corrupt_latest(workdir)
  done = subprocess.run(th.main_command("--workdir", workdir, "--mode", "evaluate"), env=th.subprocess_env(),
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 1, done.stderr[-2000:]
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and f"checkpoints/{damaged}" in errors[0] and "Rerun the training" in errors[0]
  assert "Traceback" not in done.stderr and "Event loop is closed" not in done.stderr


def test_a_resume_with_another_config_is_refused_before_anything_is_written(tmp_path, data_dir):
  config, workdir = _trained_workdir(tmp_path, data_dir)
  before = {name: open(os.path.join(workdir, name), "rb").read()
            for name in ("config.json", "config_history.jsonl", "metrics.jsonl")}
  other = th.tiny_config("tiny_video", data_dir=data_dir, **{**RUN, "image_size": 24})
  with pytest.raises(main.UsageError) as raised:
    main.run(other, workdir, "train")
  message = str(raised.value)
  assert "\n" not in message and "model:" in message and "image_size: 16 -> 24" in message
  assert all(open(os.path.join(workdir, name), "rb").read() == data for name, data in before.items())
  allowed = th.tiny_config("tiny_image", data_dir=data_dir, **{**RUN, "num_steps": 14})
  assert rundir.resume_problems(workdir, allowed) == []  # more steps: a resume may change that


def test_config_history_keeps_every_start(tmp_path, data_dir):
  workdir = str(tmp_path / "run")
  config = th.tiny_config("tiny_image", data_dir=data_dir, **RUN)
  main.run(config, workdir, "train")
  config.num_steps = 14
  main.run(config, workdir, "train")
  with open(os.path.join(workdir, "config_history.jsonl")) as f:
    history = [json.loads(line) for line in f]
  assert [h["resumed"] for h in history] == [False, True]
  assert [h["config"]["num_steps"] for h in history] == [12, 14]


def test_a_second_training_on_the_same_workdir_is_refused_and_kill_9_frees_it(tmp_path, data_dir):
  workdir = str(tmp_path / "run")
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from blastjax import rundir\n"
       "with rundir.training_lock(sys.argv[1]):\n  print('locked', flush=True); time.sleep(600)", workdir],
      env=th.subprocess_env(), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    config = th.tiny_config("tiny_image", data_dir=data_dir, **RUN)
    with pytest.raises(main.UsageError, match=f"in use by another training \\(pid {holder.pid} "):
      main.run(config, workdir, "train")
    assert not os.path.exists(os.path.join(workdir, "config.json"))  # refused before writing
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with rundir.training_lock(workdir):  # the kernel released the lock of the killed process
    pass


def test_a_cut_off_last_metrics_line_is_repaired_on_resume(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 2, "kind": "train", "loss": 0.7}\n{"step": 4, "kind": "train", "loss": 0.6}\n'
                  '{"step": 6, "kind": "tra')
  with caplog.at_level(logging.WARNING, logger="blastjax"):
    train.MetricLog(str(tmp_path), start_step=4).close()
  assert path.read_text().splitlines() == ['{"step": 2, "kind": "train", "loss": 0.7}',
                                           '{"step": 4, "kind": "train", "loss": 0.6}']
  assert any("cut-off last line" in r.getMessage() for r in caplog.records)
  path.write_text('{"step": 2}\n{"ste\n{"step": 4}\n')
  with pytest.raises(rundir.RunDirError, match="line 2 is not JSON"):
    train.MetricLog(str(tmp_path), start_step=4)


def _full_disk(*args, **kwargs):
  raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_leaves_the_previous_results_whole(tmp_path, monkeypatch):
  metrics_path, csv_path = str(tmp_path / "metrics.json"), str(tmp_path / "predictions.csv")
  results.write_json(metrics_path, {"accuracy": 0.5})
  results.write_predictions(csv_path, [{"embryo_id": "E1", "prob_blast": 0.25}])
  before = {p: open(p, "rb").read() for p in (metrics_path, csv_path)}
  monkeypatch.setattr(json, "dump", _full_disk)
  with pytest.raises(OSError):
    results.write_json(metrics_path, {"accuracy": 0.9})
  monkeypatch.setattr(results.csv.DictWriter, "writerow", _full_disk)
  with pytest.raises(OSError):
    results.write_predictions(csv_path, [{"embryo_id": "E1", "prob_blast": 0.75}])
  assert {p: open(p, "rb").read() for p in before} == before
  assert sorted(os.listdir(tmp_path)) == ["metrics.json", "predictions.csv"]  # no .tmp left


def test_formula_like_embryo_ids_stay_text_in_csv(tmp_path):
  path = str(tmp_path / "predictions.csv")
  results.write_predictions(path, [{"embryo_id": '=HYPERLINK("http://x")', "prob_blast": 0.5},
                                    {"embryo_id": "@SUM(A1)", "prob_blast": 0.5},
                                    {"embryo_id": "E-3", "prob_blast": 0.5}])
  with open(path) as f:
    ids = [line.split(",")[0] for line in f.read().splitlines()[1:]]
  assert ids == ['"\'=HYPERLINK(""http://x"")"', "'@SUM(A1)", "E-3"]


def test_lock_holder_is_named_and_released_when_the_block_ends(tmp_path):
  workdir = str(tmp_path)
  with rundir.training_lock(workdir):
    with open(os.path.join(workdir, rundir.LOCK_FILE)) as f:
      assert f.read().startswith(f"pid {os.getpid()} ")
  started = time.monotonic()
  with rundir.training_lock(workdir):
    pass
  assert time.monotonic() - started < 1.0
