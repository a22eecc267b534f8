"""Throughput of the grain input pipeline: decoded, augmented frames per second.

    python scripts/benchmark_pipeline.py                 # JPEG and PNG, workers 0, 1, 2
    python scripts/benchmark_pipeline.py --formats JPEG --workers 0 --batches 4

Source frames are synthetic embryos rendered at 500x500 (blastjax.data.synthetic),
encoded as JPEG (quality 90, like EmbryoScope exports) or PNG, three focal planes of
which the central one is decoded. Each row is a 32-frame clip sampled uniformly,
augmented (random crop, rotation, flip, brightness/contrast) and resized to 224x224.
Frames per second per worker = frames per second / max(1, workers); the first batch
(worker start-up) is not timed. frames/CPU-s divides by the CPU time of the loader's
processes (this one and its grain workers), the per-core throughput on a shared machine.
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import platform
import time

import numpy as np
from PIL import Image

from blastjax.data import augment, frames, pipeline, synthetic


class BenchmarkSource:
  """Random-access examples (the dataset's format) with pre-encoded frames."""

  def __init__(self, fmt: str, num_examples: int, num_frames: int, distinct: int, size: int):
    config = synthetic.SimulatorConfig(image_size=size, num_embryos=max(2, num_examples),
                                       num_patients=1)
    plans = synthetic.plan_embryos(config)
    self.examples = []
    for i in range(num_examples):
      plan = plans[i % len(plans)]
      encoded = []
      for k in range(distinct):
        hours = 10.0 + 70.0 * k / max(1, distinct - 1)
        planes = synthetic.render_planes(plan, hours, config.focal_planes, size, k)
        encoded.append([_encode(p, fmt) for p in planes])
      frames = np.empty((num_frames, len(config.focal_planes)), object)
      for t in range(num_frames):
        for p in range(len(config.focal_planes)):
          frames[t, p] = encoded[t * distinct // num_frames][p]
      self.examples.append({
          "embryo_id": f"B{i}", "patient_id": "P0", "label": plan.label, "frames": frames,
          "hours": np.arange(1, num_frames + 1, dtype=np.float32) * (80.0 / num_frames),
          "focal_planes": np.asarray(config.focal_planes, np.int32), "events": {},
          "source": "benchmark"})

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, index):
    return self.examples[index]


def _encode(frame: np.ndarray, fmt: str) -> bytes:
  buffer = io.BytesIO()
  if fmt == "JPEG":
    Image.fromarray(frame).save(buffer, format="JPEG", quality=90)
  else:
    Image.fromarray(frame).save(buffer, format="PNG", compress_level=1)
  return buffer.getvalue()


def _descendants(pid: int) -> list:
  children = []
  for task in glob.glob(f"/proc/{pid}/task/*/children"):
    with open(task) as f:
      children += [int(c) for c in f.read().split()]
  return children + [d for c in children for d in _descendants(c)]


def cpu_seconds() -> float:
  """CPU time of this process and its live descendants (grain workers), from /proc.

  On a shared machine wall-clock throughput depends on the other load; frames per CPU
  second does not (much), and is the per-core figure."""
  ticks = os.sysconf("SC_CLK_TCK")
  total = time.process_time()
  for pid in _descendants(os.getpid()):
    try:
      with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      total += (int(fields[11]) + int(fields[12])) / ticks
    except OSError:
      pass
  return total


def measure(source, workers: int, batches: int, batch_size: int, augment_on: bool,
            augment_config: dict) -> tuple:
  """(frames per wall second, frames per CPU second) over `batches` batches after the first."""
  loader = pipeline.make_loader(source, sampling="uniform", num_frames=32, image_size=224,
                                augment=augment_on, augment_config=augment_config,
                                batch_size=batch_size, shuffle=True,
                                num_epochs=None, worker_count=workers, prefetch=2)
  iterator = iter(loader)
  next(iterator)
  start, start_cpu = time.perf_counter(), cpu_seconds()
  for _ in range(batches):
    batch = next(iterator)
  elapsed, elapsed_cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
  assert batch["image"].shape == (batch_size, 32, 224, 224, 1)
  num_frames = batches * batch_size * 32
  return num_frames / elapsed, num_frames / elapsed_cpu


def frame_profile(source, repeats: int = 40) -> dict:
  """Milliseconds per frame of the single-frame steps, in this process."""
  data = source[0]["frames"][0, 1]
  params = augment.draw(np.random.default_rng(0), augment.AugmentConfig())
  steps = {
      "decode, full size": lambda: frames.decode(data),
      "decode, drafted": lambda: augment.decode(data, params, 224),
      "decode + crop/resize + augment": lambda: augment.render(data, params, 224),
  }
  timings = {}
  for name, step in steps.items():
    start = time.perf_counter()
    for _ in range(repeats):
      step()
    timings[name] = 1000 * (time.perf_counter() - start) / repeats
  return timings


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--formats", nargs="+", default=["JPEG", "PNG"], help="frame encodings to time")
  parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2], help="grain worker counts to time")
  parser.add_argument("--batches", type=int, default=6, help="timed batches per row")
  parser.add_argument("--batch_size", type=int, default=4, help="clips per batch")
  parser.add_argument("--examples", type=int, default=8, help="embryos in the in-memory source")
  parser.add_argument("--no_augment", action="store_true", help="time decoding and sampling only")
  parser.add_argument("--rotation_degrees", type=float, default=180.0,
                      help="0 replaces the affine rotation pass by a box resize")
  args = parser.parse_args()

  import grain
  import PIL

  print(f"machine: {platform.processor() or platform.machine()}, {_cpu_count()} CPU cores; "
        f"python {platform.python_version()}, grain {grain.__version__}, Pillow {PIL.__version__}, "
        f"numpy {np.__version__}")
  print(f"rows: 32 x 224 x 224 x 1 clips (uniform sampling, augment={not args.no_augment}, "
        f"rotation_degrees={args.rotation_degrees}) "
        f"from 500 x 500 frames; batch {args.batch_size}, {args.batches} timed batches\n")
  print(f"{'format':6} {'bytes/frame':>11} {'workers':>7} {'frames/s':>9} {'frames/s/worker':>15} "
        f"{'frames/CPU-s':>12}")
  for fmt in args.formats:
    source = BenchmarkSource(fmt, args.examples, 96, 8, 500)
    size = np.mean([len(b) for b in source[0]["frames"][:, 1]])
    for workers in args.workers:
      fps, per_cpu = measure(source, workers, args.batches, args.batch_size, not args.no_augment,
                             {"rotation_degrees": args.rotation_degrees})
      print(f"{fmt:6} {size:11.0f} {workers:7d} {fps:9.0f} {fps / max(1, workers):15.0f} "
            f"{per_cpu:12.0f}", flush=True)
    profile = frame_profile(source)
    print("  per frame (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in profile.items()))


def _cpu_count() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
  main()
