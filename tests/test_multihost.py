"""Two processes x two CPU devices on localhost train one run together and end with
identical parameters (each process reads its own shard; only process 0 writes)."""

import os
import re
import socket
import subprocess

from blastjax.testing import tiny as th


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_end_with_identical_parameters(tmp_path):
  data_dir = th.build_small_dataset(str(tmp_path / "data"))
  config_path = th.write_config_file(str(tmp_path / "config.py"), "tiny_image", data_dir=data_dir, num_steps=6,
                                     eval_every_steps=3, checkpoint_every_steps=3, early_hours=(40.0,))
  workdir = str(tmp_path / "run")
  port = _free_port()
  env = th.subprocess_env(devices=2)
  processes = [subprocess.Popen(th.main_command("--config", config_path, "--workdir", workdir,
                                                "--coordinator_address", f"localhost:{port}",
                                                "--num_processes", "2", "--process_id", str(i)),
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
  outputs = [p.communicate(timeout=400) for p in processes]
  for process, (out, err) in zip(processes, outputs):
    assert process.returncode == 0, err[-3000:]
  checksums = [re.search(r"process (\d): parameter checksum (\w+)", out).groups() for out, _ in outputs]
  assert sorted(c[0] for c in checksums) == ["0", "1"]
  assert checksums[0][1] == checksums[1][1]
  assert "test (" in outputs[0][0]
  assert os.path.exists(os.path.join(workdir, "metrics.json"))
  assert os.listdir(os.path.join(workdir, "checkpoints"))
