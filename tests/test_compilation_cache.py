"""The persistent compilation cache of blastjax's commands: where it lives, off when
empty, a bad folder is a warning (not an error), and compiled programs land in it."""

import logging
import os
import subprocess
import sys

from blastjax import compilation_cache
from blastjax.testing import tiny as th


def test_default_dir_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.delenv(compilation_cache.ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compilation_cache.default_dir() == str(tmp_path / "blastjax" / "jax_compilation")
  monkeypatch.setenv(compilation_cache.ENV, "")
  assert compilation_cache.default_dir() == ""  # off
  monkeypatch.setenv(compilation_cache.ENV, str(tmp_path / "mine"))
  assert compilation_cache.default_dir() == str(tmp_path / "mine")


def test_empty_is_off_and_an_unusable_folder_warns(tmp_path, caplog):
  assert compilation_cache.enable("") is None
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  with caplog.at_level(logging.WARNING, logger="blastjax"):
    assert compilation_cache.enable(str(blocker / "cache")) is None
  assert f"compilation cache {blocker / 'cache'} unusable" in caplog.text and "--compilation_cache_dir" in caplog.text


def test_define_flag_is_idempotent():
  from absl import flags

  compilation_cache.define_flag()
  compilation_cache.define_flag()
  assert flags.FLAGS[compilation_cache.FLAG].default == compilation_cache.default_dir()


def test_compiled_programs_are_written_and_read_back(tmp_path):
  """In a child process (the cache is process-wide): a jitted program compiled with the
  cache on is written to the folder; a second process finds it there (a cache hit)."""
  script = (
      "import sys, jax, jax.numpy as jnp\n"
      "from blastjax import compilation_cache\n"
      "compilation_cache.enable(sys.argv[1])\n"
      "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
      "from jax._src import monitoring\n"
      "hits = []\n"
      "monitoring.register_event_listener(lambda name, **kw: hits.append(name) if 'cache_hits' in name else None)\n"
      "f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T + 1.0)\n"
      "f(jnp.ones((8, 8))).block_until_ready()\n"
      "print('hits', len(hits))\n")
  cache = tmp_path / "cache"
  runs = [subprocess.run([sys.executable, "-c", script, str(cache)], env=th.subprocess_env(), capture_output=True,
                         text=True, timeout=120) for _ in range(2)]
  for done in runs:
    assert done.returncode == 0, done.stderr[-2000:]
  assert os.listdir(cache)
  assert "hits 0" in runs[0].stdout and "hits 0" not in runs[1].stdout, (runs[0].stdout, runs[1].stdout)
