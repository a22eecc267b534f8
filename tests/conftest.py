"""Test set-up: CPU only, four fake devices for the multi-device tests.

The flags must be set before jax is imported anywhere, hence here.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import fcntl  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _one_large_model_at_a_time(request, tmp_path_factory):
  """Tests marked `large_model` (5-11 GB each) hold an exclusive file lock shared by all
  xdist workers, so two never run at once on CI's 24 GB (an overlap crashed a worker)."""
  if request.node.get_closest_marker("large_model") is None:
    yield
    return
  lock_path = tmp_path_factory.getbasetemp().parent / "large_model.lock"  # shared by workers
  with open(lock_path, "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session", autouse=True)
def tiny_models():
  """The training-system tests' tiny models (blastjax.testing.tiny), registered for the
  session only: importing a helper registers nothing, and the test over every registered
  model (collected before this runs) sees the library's models alone."""
  from blastjax.testing import tiny  # after the XLA flags above

  tiny.register_tiny_models()
  yield tiny.TINY_MODELS
  tiny.unregister_tiny_models()
