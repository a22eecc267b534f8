"""JAX's persistent compilation cache, on by default for blastjax's commands.

A run compiles its train and eval steps before the first step (tens of seconds for a
video net on a CPU); with the cache, a second run of the same programs (a rerun, the next
seed of a table, a resumed run) loads them instead. The commands (`blastjax.main`,
`blastjax.reproduce`, `blastjax.predict`) take `--compilation_cache_dir`: by default
`$BLASTJAX_COMPILATION_CACHE_DIR`, else `$XDG_CACHE_HOME/blastjax/jax_compilation`
(`~/.cache/blastjax/jax_compilation`); an empty value turns the cache off. From Python,
call `enable(path)` before the first compilation.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

logger = logging.getLogger(__name__)

FLAG = "compilation_cache_dir"
ENV = "BLASTJAX_COMPILATION_CACHE_DIR"
# Programs that compile faster than this are not worth a file (JAX's own default: 1 s).
MIN_COMPILE_SECONDS = 1.0


def default_dir() -> str:
  """$BLASTJAX_COMPILATION_CACHE_DIR when set (an empty value: off), else the user's cache folder."""
  if ENV in os.environ:
    return os.environ[ENV]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "blastjax", "jax_compilation")


def define_flag() -> None:
  """Defines --compilation_cache_dir (once, whichever command asks first)."""
  from absl import flags

  if FLAG not in flags.FLAGS:
    flags.DEFINE_string(FLAG, default_dir(), "JAX's persistent compilation cache (compiled steps reused by "
                        f"later runs); empty: off. Default: ${ENV}, else ~/.cache/blastjax/jax_compilation.")


def enable(path: str) -> Optional[str]:
  """Turns the cache on in `path` (created if missing) and returns it; None when `path`
  is empty, or when the folder cannot be created (a warning names it: the run goes on
  uncached, since caching only saves time)."""
  if not path:
    return None
  import jax

  path = os.path.abspath(os.path.expanduser(path))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as error:
    logger.warning("compilation cache %s unusable (%s): compiling without it; set --%s to a writable "
                   "folder or to '' to turn it off", path, error.strerror or error, FLAG)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return path


def enable_from_flags() -> Optional[str]:
  """`enable` with the command's --compilation_cache_dir."""
  from absl import flags

  return enable(flags.FLAGS[FLAG].value)
