"""Training throughput of blastjax against the PyTorch reference, in the same run.

For each model and shape it times steady-state training steps of blastjax's own train
step (`blastjax.train_step.make_train_step` wrapped by `blastjax.parallel.Runner`, pmap by
default: what `python -m blastjax.main` runs), compilation excluded and reported
separately: samples/s, step time median and interquartile range, peak device memory
(XLA's buffer estimate where the device reports none, as on CPU), and achieved FLOP/s
from XLA's cost analysis (MFU on a GPU whose peak is known). In the same run it times
the PyTorch reference (torchvision) on the same shapes with AdamW, eager (channels-last,
bf16 autocast when --dtypes has bfloat16) and `torch.compile`d, and prints the ratio
blastjax / PyTorch. Last, the input pipeline: clips (or images) per second from the
synthetic TFDS dataset through the real grain pipeline with N workers, so a reader sees
whether the accelerator would starve.

  python scripts/benchmark.py                                    # the paper's shapes (GPU)
  python scripts/benchmark.py --scale 0.125 --steps 3 --dtypes float32,bfloat16 \\
      --compile_models resnet50                                   # CPU, minutes

Both sides use AdamW(lr=1e-3, weight_decay=1e-2, eps=1e-8) on softmax cross-entropy,
BatchNorm in training mode, 3-channel inputs. torch and torchvision are benchmark
extras (`pip install -e '.[test]'`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import platform
import statistics
import sys
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from blastjax import models
from blastjax import parallel as parallel_lib
from blastjax import train_step

# Peak dense bf16 FLOP/s of GPUs we know (SXM parts), for MFU.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}
LEARNING_RATE, WEIGHT_DECAY = 1e-3, 1e-2  # torch.optim.AdamW's default weight decay
WARMUP_STEPS = 2  # run after compilation, not timed (first-touch allocations, caches)


@dataclasses.dataclass(frozen=True)
class Case:
  """One benchmark shape: model, batch, square image size and (video) frames."""
  model: str
  batch: int
  image_size: int
  num_frames: Optional[int] = None  # None: single-frame model
  focal_planes: Optional[int] = None  # AMSNet's focal axis
  torch_ref: Optional[str] = None  # torchvision constructor path, if one exists

  def scaled(self, scale: float, min_size: int, batch_multiple: int = 1) -> "Case":
    """Smaller (or larger) shape: image size to a multiple of 16, batch to a multiple of
    the device count, frames at least 4."""
    size = max(min_size, int(round(self.image_size * scale / 16)) * 16)
    batch = max(1, int(round(self.batch * scale)))
    batch = max(batch_multiple, batch // batch_multiple * batch_multiple)
    frames = None if self.num_frames is None else max(4, int(round(self.num_frames * scale)))
    return dataclasses.replace(self, batch=batch, image_size=size, num_frames=frames)

  def input_shape(self, channels: int = 3) -> tuple:
    spatial = (self.image_size, self.image_size, channels)
    if self.num_frames is None:
      return (self.batch,) + spatial
    if self.focal_planes:
      return (self.batch, self.num_frames, self.focal_planes) + spatial
    return (self.batch, self.num_frames) + spatial

  def shape_text(self) -> str:
    return "x".join(map(str, self.input_shape()))


CASES = {
    "resnet50": Case("resnet50", 32, 400, torch_ref="torchvision.models.resnet50"),
    "densenet121": Case("densenet121", 32, 400, torch_ref="torchvision.models.densenet121"),
    "r2plus1d_18": Case("r2plus1d_18", 16, 224, 32, torch_ref="torchvision.models.video.r2plus1d_18"),
    "r3d_18": Case("r3d_18", 16, 224, 32, torch_ref="torchvision.models.video.r3d_18"),
    "mc3_18": Case("mc3_18", 16, 224, 32, torch_ref="torchvision.models.video.mc3_18"),
    "resnet_convlstm": Case("resnet_convlstm", 16, 224, 32),
    "i3d": Case("i3d", 16, 224, 32),
    "amsnet": Case("amsnet", 16, 224, 28, focal_planes=3),
}


@dataclasses.dataclass
class Timing:
  samples_per_s: float
  median_ms: float
  iqr_ms: float  # interquartile range of the step times
  compile_s: float
  peak_mem_gb: Optional[float] = None
  mem_source: str = ""  # 'device' (allocator peak) or 'xla' (compiled buffer estimate)
  tflops: Optional[float] = None
  mfu: Optional[float] = None


def summarise(step_times: Sequence[float], batch: int, compile_s: float) -> Timing:
  q1, q3 = np.percentile(step_times, [25, 75])
  median = statistics.median(step_times)
  return Timing(samples_per_s=batch / median, median_ms=1e3 * median, iqr_ms=1e3 * (q3 - q1),
                compile_s=compile_s)


# ----------------------------------------------------------------------------- JAX


def synthetic_batch(case: Case, num_devices: int, seed: int = 0) -> dict:
  """A pipeline-shaped batch ([devices, per_device, ...]) of random inputs."""
  rng = np.random.default_rng(seed)
  frames = case.num_frames or 1
  batch = {
      "image": rng.standard_normal(case.input_shape(), dtype=np.float32),
      "mask": np.zeros((case.batch, frames), bool),
      "label": rng.integers(0, 2, case.batch).astype(np.int32),
      "valid": np.ones(case.batch, bool),
  }
  return {k: v.reshape((num_devices, case.batch // num_devices) + v.shape[1:]) for k, v in batch.items()}


def time_jax(case: Case, steps: int, dtype: str, parallel: str = "pmap", devices=None) -> Timing:
  """Steady-state steps of blastjax's train step (Runner), compiled ahead of time."""
  devices = list(devices) if devices is not None else jax.local_devices()
  spec = models.get_spec(case.model)
  model = models.create(case.model, num_classes=2, dtype=DTYPES[dtype])
  batch = synthetic_batch(case, len(devices))
  x, mask = spec.inputs({k: v[0, :1] for k, v in batch.items()})
  variables = jax.jit(lambda k: model.init({"params": k, "dropout": k}, x, train=False, mask=mask))(
      jax.random.PRNGKey(0))
  tx = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
  sc = train_step.StepConfig(input_kind=spec.input_kind, per_step=spec.per_step)
  runner = parallel_lib.Runner(train_step.make_train_step(model, tx, sc), train_step.make_eval_step(model, sc),
                             parallel, devices=devices)
  state = runner.put_state(train_step.init_state(model, tx, jax.tree.map(np.asarray, dict(variables)), seed=0))
  del variables
  # AOT: lower and compile the very function Runner.train_step calls, to time compilation
  # apart and to read XLA's cost and memory analyses.
  start = time.perf_counter()
  compiled = runner.compile_train_step(state, batch)
  compile_s = time.perf_counter() - start
  state_shardings, batch_shardings = compiled.input_shardings[0]
  # Prefetched to the device once: the timed loop moves no host data.
  state = jax.device_put(state, state_shardings)
  batch = jax.device_put(runner.put_batch(batch), batch_shardings)
  times = []
  for i in range(WARMUP_STEPS + steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics["loss"])
    if i >= WARMUP_STEPS:
      times.append(time.perf_counter() - start)
  if not np.all(np.isfinite(np.asarray(metrics["loss"]))):
    raise FloatingPointError(f"{case.model} {dtype}: the benchmark loss is not finite")
  timing = summarise(times, case.batch, compile_s)
  timing.peak_mem_gb, timing.mem_source = peak_memory_gb(compiled, devices[0])
  flops = compiled_flops(compiled)
  if flops:
    timing.tflops = flops * len(devices) / (timing.median_ms / 1e3) / 1e12
    peak = device_peak_flops(devices[0])
    if peak:
      timing.mfu = timing.tflops * 1e12 / (peak * len(devices))
  return timing


def peak_memory_gb(compiled, device) -> tuple[Optional[float], str]:
  """The allocator's peak where the device keeps one (GPU), else XLA's buffer estimate."""
  stats = device.memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**30, "device"
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None, ""
  total = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
           + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
  return total / 2**30, "xla"


def compiled_flops(compiled) -> Optional[float]:
  """FLOPs of one step of one device from XLA's cost analysis."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  return float(analysis["flops"]) if analysis and analysis.get("flops", 0) > 0 else None


def device_peak_flops(device) -> Optional[float]:
  return next((v for k, v in PEAK_BF16_FLOPS.items() if k in device.device_kind), None)


# --------------------------------------------------------------------------- PyTorch


def torch_model(path: str):
  module, name = path.rsplit(".", 1)
  return getattr(importlib.import_module(module), name)(num_classes=2)


def time_torch(case: Case, steps: int, compiled: bool, bf16: bool) -> Timing:
  """Steady-state AdamW steps of the torchvision model: channels-last, optional bf16
  autocast; `compiled` wraps the model in torch.compile (the optimizer stays eager)."""
  import torch

  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  model = torch_model(case.torch_ref).to(device)
  is_video = case.num_frames is not None
  memory_format = torch.channels_last_3d if is_video else torch.channels_last
  model = model.to(memory_format=memory_format).train()
  shape = ((case.batch, 3, case.num_frames, case.image_size, case.image_size) if is_video
           else (case.batch, 3, case.image_size, case.image_size))
  x = torch.randn(shape, device=device).contiguous(memory_format=memory_format)
  labels = torch.randint(0, 2, (case.batch,), device=device)
  opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
  loss_fn = torch.nn.CrossEntropyLoss()
  forward = torch.compile(model) if compiled else model

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
      loss = loss_fn(forward(x).float(), labels)
    loss.backward()
    opt.step()
    return loss

  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  start = time.perf_counter()
  step().item()  # torch.compile compiles here; eager: first-call allocations
  sync()
  compile_s = time.perf_counter() - start
  times = []
  for i in range(WARMUP_STEPS - 1 + steps):
    start = time.perf_counter()
    loss = step()
    sync()
    if i >= WARMUP_STEPS - 1:
      times.append(time.perf_counter() - start)
  if not np.isfinite(loss.item()):
    raise FloatingPointError(f"torch {case.torch_ref}: the benchmark loss is not finite")
  timing = summarise(times, case.batch, compile_s)
  if device == "cuda":
    timing.peak_mem_gb, timing.mem_source = torch.cuda.max_memory_allocated() / 2**30, "device"
  return timing


# ---------------------------------------------------------------------------- input


def time_pipeline(case: Case, workers: int, batches: int, data_dir: Optional[str] = None,
                  **dataset_options) -> float:
  """Clips (or images) per second through the real grain pipeline on synthetic data:
  uniform sampling of the case's frames (last frame for image models), augmentation,
  resize to the case's size, 3 channels; the first batch (worker start-up) not timed."""
  from blastjax.data import dataset, pipeline

  data_dir = dataset.ensure_built("synthetic", data_dir=data_dir, verbose=False, **dataset_options)
  source = dataset.load_source("synthetic", split="all", data_dir=data_dir, **dataset_options)
  loader = pipeline.make_loader(
      source, sampling="last_frame" if case.num_frames is None else "uniform",
      num_frames=case.num_frames or 1, image_size=case.image_size,
      focal_planes="axis" if case.focal_planes else "center", rgb=True, augment=True,
      batch_size=case.batch, shuffle=True, seed=0, num_epochs=None, worker_count=workers)
  iterator = iter(loader)
  next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * case.batch / (time.perf_counter() - start)


# ----------------------------------------------------------------------------- table

COLUMNS = ("model", "dtype", "shape", "jax samp/s", "jax ms median (IQR)", "compile s", "mem GB",
           "TFLOP/s", "MFU", "torch eager samp/s", "jax/eager", "torch.compile samp/s", "jax/compile",
           "pipeline samp/s")


def fmt(value, spec: str) -> str:
  return "—" if value is None else format(value, spec)


def table_row(cells: Sequence[str]) -> str:
  return "| " + " | ".join(cells) + " |"


def jax_cells(timing: Timing) -> list:
  mem = fmt(timing.peak_mem_gb, ".2f") + (" (xla)" if timing.mem_source == "xla" else "")
  return [f"{timing.samples_per_s:.2f}", f"{timing.median_ms:.0f} ({timing.iqr_ms:.0f})",
          f"{timing.compile_s:.1f}", mem, fmt(timing.tflops, ".3f"), fmt(timing.mfu, ".1%")]


def torch_cells(jax_timing: Timing, torch_timing: Optional[Timing]) -> list:
  if torch_timing is None:
    return ["—", "—"]
  return [f"{torch_timing.samples_per_s:.2f}",
          f"{jax_timing.samples_per_s / torch_timing.samples_per_s:.2f}x"]


def benchmark_rows(name: str, case: Case, args, devices) -> list:
  """The table rows of one model: one per dtype, or one 'not registered' row."""
  if name not in models.list_models():
    return [[name, "—", case.shape_text(), "not registered in blastjax.models"] + ["—"] * (len(COLUMNS) - 4)]
  case = case.scaled(args.scale, models.get_spec(name).min_image_size, len(devices))
  pipeline_cell = "—"
  rows = []
  for dtype in args.dtypes:
    jt = time_jax(case, args.steps, dtype, args.parallel, devices)
    row = [name, dtype, case.shape_text()] + jax_cells(jt)
    for compiled in (False, True):
      wanted = not args.no_torch and case.torch_ref is not None
      if compiled:
        wanted = wanted and (args.compile_models == "all" or name in args.compile_models.split(","))
      tt = time_torch(case, args.steps, compiled, bf16=dtype == "bfloat16") if wanted else None
      row += torch_cells(jt, tt)
      if tt is not None and compiled:
        print(f"  {name} {dtype}: torch.compile first step (compilation) {tt.compile_s:.1f} s", flush=True)
    if args.pipeline_workers >= 0 and pipeline_cell == "—":
      clips_per_s = time_pipeline(case, args.pipeline_workers, args.pipeline_batches, args.data_dir,
                                  num_embryos=args.pipeline_embryos, image_size=args.pipeline_source_size)
      pipeline_cell = f"{clips_per_s:.1f}"
    rows.append(row + [pipeline_cell])
  return rows


def header(args, devices) -> str:
  text = (f"device: {devices[0].device_kind} ({devices[0].platform}) x{len(devices)}, {args.parallel} | "
          f"jax {jax.__version__} | python {platform.python_version()} | scale {args.scale} | "
          f"steps {args.steps} (+{WARMUP_STEPS} warm-up)")
  if not args.no_torch:
    import torch
    text += (f" | torch {torch.__version__} ({'cuda' if torch.cuda.is_available() else 'cpu'}, "
             f"{torch.get_num_threads()} threads)")
  return text


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--models", default=",".join(CASES), help="comma-separated, from: " + ", ".join(CASES))
  parser.add_argument("--scale", type=float, default=1.0,
                      help="scales batch, image size and frames (CPU: 0.125)")
  parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
  parser.add_argument("--dtypes", default="bfloat16",
                      help="compute dtypes, comma-separated: bfloat16 (torch: bf16 autocast), float32")
  parser.add_argument("--parallel", default="pmap", choices=["pmap", "shard_map"], help="the train step's wrapper")
  parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch reference")
  parser.add_argument("--compile_models", default="all",
                      help="models to time with torch.compile: 'all', 'none' or comma-separated "
                           "(it takes minutes per model to build on CPU)")
  parser.add_argument("--pipeline_workers", type=int, default=2, help="grain workers; -1 skips the pipeline")
  parser.add_argument("--pipeline_batches", type=int, default=5, help="timed input-pipeline batches")
  parser.add_argument("--data_dir", default=None, help="where the synthetic dataset is (built if absent)")
  parser.add_argument("--pipeline_embryos", type=int, default=100, help="synthetic dataset: number of embryos")
  parser.add_argument("--pipeline_source_size", type=int, default=128,
                      help="synthetic dataset: stored frame size in pixels (frames are resized to the case's)")
  args = parser.parse_args(argv)
  args.models = [n.strip() for n in args.models.split(",") if n.strip()]
  unknown = [n for n in args.models if n not in CASES]
  if unknown:
    parser.error(f"--models: unknown benchmark model(s) {unknown}; choose from {list(CASES)}")
  args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
  bad = [d for d in args.dtypes if d not in DTYPES]
  if bad or not args.dtypes:
    parser.error(f"--dtypes: {bad or args.dtypes} not among {list(DTYPES)}")
  if args.steps < 1:
    parser.error(f"--steps={args.steps}: must be at least 1")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  devices = jax.local_devices()
  print(header(args, devices), flush=True)
  print(table_row(COLUMNS))
  print(table_row(["---"] * len(COLUMNS)), flush=True)
  for name in args.models:
    for row in benchmark_rows(name, CASES[name], args, devices):
      print(table_row(row), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
