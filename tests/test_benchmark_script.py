"""Smoke test of scripts/benchmark.py on a tiny model and shape (no timing assertions)."""

import importlib.util
import os
import sys
import types

import jax
import numpy as np
import pytest

_SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "benchmark.py")


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location("blastjax_benchmark_script", _SCRIPT)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def tiny(bench):
  return bench.Case("resnet18", batch=2, image_size=32, torch_ref="torchvision.models.resnet18")


def _args(bench, tmp_path, **overrides):
  args = bench.parse_args(["--models", "resnet50", "--steps", "1", "--dtypes", "float32",
                           "--compile_models", "none", "--pipeline_workers", "0",
                           "--pipeline_batches", "1", "--pipeline_embryos", "4",
                           "--pipeline_source_size", "32", "--data_dir", str(tmp_path)])
  return types.SimpleNamespace(**{**vars(args), **overrides})


def _check_row(bench, row):
  assert len(row) == len(bench.COLUMNS)
  line = bench.table_row(row)
  assert line.startswith("| ") and line.endswith(" |") and line.count(" | ") == len(bench.COLUMNS) - 1


def test_scaled_shapes(bench):
  case = bench.CASES["r2plus1d_18"].scaled(0.125, min_size=16, batch_multiple=1)
  assert case.input_shape() == (2, 4, 32, 32, 3)
  amsnet = bench.CASES["amsnet"].scaled(0.125, min_size=32, batch_multiple=4)
  assert amsnet.input_shape() == (4, 4, 3, 32, 32, 3)
  assert bench.CASES["resnet50"].scaled(1.0, 32).shape_text() == "32x400x400x3"


def test_benchmark_row_end_to_end(bench, tiny, tmp_path):
  """One JAX step through Runner, one eager torch step and one pipeline batch."""
  args = _args(bench, tmp_path, scale=1.0)
  rows = bench.benchmark_rows("resnet18", tiny, args, jax.devices()[:1])
  assert len(rows) == 1
  row = rows[0]
  _check_row(bench, row)
  assert row[:3] == ["resnet18", "float32", "2x32x32x3"]
  assert float(row[3]) > 0  # jax samples/s
  assert float(row[5]) >= 0  # compile seconds
  assert row[6].endswith("(xla)")  # CPU: XLA's buffer estimate
  assert float(row[7]) > 0  # TFLOP/s from the cost analysis
  assert row[8] == "—"  # no MFU on CPU
  assert float(row[9]) > 0 and row[10].endswith("x")  # torch eager and its ratio
  assert row[11:13] == ["—", "—"]  # torch.compile not asked for
  assert float(row[13]) > 0  # pipeline clips/s


def test_multi_device_step_and_shard_map(bench, tiny):
  timing = bench.time_jax(bench.dataclasses.replace(tiny, batch=4), steps=1, dtype="bfloat16",
                          parallel="shard_map", devices=jax.devices()[:2])
  assert timing.samples_per_s > 0 and np.isfinite(timing.median_ms) and timing.tflops > 0


def test_unregistered_model_gets_a_row(bench, tmp_path):
  args = _args(bench, tmp_path, scale=0.125)
  rows = bench.benchmark_rows("no_such_model", bench.Case("no_such_model", 32, 400), args, jax.devices()[:1])
  assert len(rows) == 1
  _check_row(bench, rows[0])
  assert "not registered" in rows[0][3]


def test_bad_arguments_are_named(bench, capsys):
  with pytest.raises(SystemExit):
    bench.parse_args(["--models", "resnet9000"])
  assert "resnet9000" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    bench.parse_args(["--dtypes", "float16"])
  assert "float16" in capsys.readouterr().err
