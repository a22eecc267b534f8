"""Reliability of a run: kill -9 at random moments (during saves too) and resume to the
uninterrupted result; determinism; non-finite losses; unwritable workdir / full disk."""

import json
import os
import signal
import subprocess
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from blastjax.testing import tiny as th
from blastjax import rundir, train

STEPS = 40
RUN = dict(num_steps=STEPS, checkpoint_every_steps=5, eval_every_steps=20, log_every_steps=5)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return th.build_small_dataset(str(tmp_path_factory.mktemp("data")))


def _command(config_path, workdir):
  return th.main_command("--config", config_path, "--workdir", workdir)


def _final_params(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                  options=ocp.CheckpointManagerOptions(read_only=True),
                                  item_names=("state", "meta"))
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  return step, restored.state["params"]


def _saving(workdir):
  directory = os.path.join(workdir, "checkpoints")
  return os.path.isdir(directory) and any("tmp" in name for name in os.listdir(directory))


def _trained_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return sum(1 for line in f if '"train"' in line)


def _kill_when(process, condition, timeout=240.0):
  """SIGKILL `process` as soon as `condition()` holds; False if it ended first."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if process.poll() is not None:
      return False
    if condition():
      process.send_signal(signal.SIGKILL)
      process.wait()
      return True
    time.sleep(0.002)
  process.kill()
  raise AssertionError("the run neither reached the kill point nor ended")


def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path, data_dir):
  config_path = th.write_config_file(str(tmp_path / "config.py"), "tiny_image", data_dir=data_dir, **RUN)
  env = th.subprocess_env(devices=4)   # as this pytest process: the reference runs here
  reference = str(tmp_path / "reference")
  train.train_and_evaluate(th.tiny_config("tiny_image", data_dir=data_dir, **RUN), reference)

  killed = str(tmp_path / "killed")
  rng = np.random.default_rng(0)
  kills = []
  # Round 1 dies inside a checkpoint save, round 2 at a random step of training.
  conditions = [lambda: _saving(killed),
                lambda: _trained_steps(killed) >= int(rng.integers(2, 7))]
  for condition in conditions:
    process = subprocess.Popen(_command(config_path, killed), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    kills.append(_kill_when(process, condition))
  assert all(kills), f"a run ended before its kill point: {kills}"
  done = subprocess.run(_command(config_path, killed), env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "resumed from" in done.stdout and "test (" in done.stdout
  assert not _saving(killed), "a half-written checkpoint was left behind"

  step_a, params_a = _final_params(reference)
  step_b, params_b = _final_params(killed)
  assert step_a == step_b == STEPS
  for a, b in zip(_leaves(params_a), _leaves(params_b)):
    np.testing.assert_array_equal(a, b)
  with open(os.path.join(reference, "metrics.json")) as f:
    metrics_a = json.load(f)
  with open(os.path.join(killed, "metrics.json")) as f:
    metrics_b = json.load(f)
  assert metrics_a == metrics_b
  with open(os.path.join(killed, "metrics.jsonl")) as f:
    logged = [json.loads(line)["step"] for line in f if '"train"' in line]
  assert logged == sorted(set(logged)), "the log repeats steps after resuming"


def _leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_same_seed_same_metrics_in_process(tmp_path, data_dir):
  config = th.tiny_config("tiny_image", data_dir=data_dir, num_steps=6, early_hours=())
  first = train.train_and_evaluate(config, str(tmp_path / "a"))
  second = train.train_and_evaluate(config, str(tmp_path / "b"))
  assert first == second


def test_non_finite_loss_stops_naming_step_and_embryos(tmp_path, data_dir):
  config = th.tiny_config("tiny_image", data_dir=data_dir, num_steps=12, checkpoint_every_steps=1,
                          learning_rate=1e38, validation_fraction=0.0, early_hours=())
  workdir = str(tmp_path / "nan")
  with pytest.raises(train.NonFiniteLossError, match=r"step \d+: .*(embryos \S+|parameters)") as error:
    train.train_and_evaluate(config, workdir)
  assert "last good checkpoint" in str(error.value)
  saved = rundir.Checkpoints(workdir, read_only=True)
  step = saved.latest_step()
  saved.close()
  assert step is not None and step < 12
  _, params = _final_params(workdir)
  assert all(np.isfinite(leaf).all() for leaf in _leaves(params))

  config.skip_nonfinite = True
  config.learning_rate = 1e-3
  config.grad_clip_norm = 1.0
  result = train.train_and_evaluate(config, str(tmp_path / "skip"))
  assert result["step"] == 12


def test_full_disk_at_save_keeps_earlier_checkpoints(tmp_path, data_dir, monkeypatch):
  config = th.tiny_config("tiny_image", data_dir=data_dir, num_steps=8, validation_fraction=0.0,
                          early_hours=())
  workdir = str(tmp_path / "full")
  real_save = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step > 4:
      raise OSError(28, "No space left on device")
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  with pytest.raises(rundir.CheckpointError, match=r"could not write checkpoint step 8 .*intact \(steps \[4\]\)"):
    train.train_and_evaluate(config, workdir)
  step, params = _final_params(workdir)
  assert step == 4 and all(np.isfinite(leaf).all() for leaf in _leaves(params))


def test_unwritable_workdir_is_one_clear_error(tmp_path, data_dir):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  config_path = th.write_config_file(str(tmp_path / "config.py"), "tiny_image", data_dir=data_dir)
  done = subprocess.run(_command(config_path, str(blocker / "run")), env=th.subprocess_env(),
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 1
  assert done.stderr.strip().splitlines()[-1].startswith("error: workdir")
  assert "not writable" in done.stderr
