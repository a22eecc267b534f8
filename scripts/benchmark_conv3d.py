"""The video nets' factorized convolutions: blastjax's Conv3d against XLA's plain 3D
convolution and torch's Conv3d, forward + backward, in the same run.

blastjax.models.video_resnet.Conv3d runs a (k, 1, 1) kernel as a 2D convolution over
(T, H*W) and any other kernel (1x3x3, 3x3x3, the 3x7x7 stem, strided 1x1x1 shortcuts,
grouped) as one 2D convolution over the output frames per temporal tap, summed. This prints, per
shape, the median time of a jitted forward + backward of that module, of the same
convolution as one `lax.conv_general_dilated` over NDHWC (how nn.Conv computes it) and
of torch.nn.Conv3d (channels-last-3d, eager), and the ratios.

  python scripts/benchmark_conv3d.py                 # R3D/MC3/MFNet/R(2+1)D-18 layer shapes, batch 2, 8 frames
  python scripts/benchmark_conv3d.py --batch 8 --frames 16 --size 56 --repeats 20

`--im2col` prints instead the 2D convolutions of blastjax.models.cpu_conv (small ones as
one matrix product of patches and kernel on the CPU) against XLA's convolution and
torch.nn.Conv2d (channels-last), on the stage shapes of ResNet and R(2+1)D:

  python scripts/benchmark_conv3d.py --im2col --batch 8 --frames 8 --size 16 --repeats 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from blastjax.models import cpu_conv
from blastjax.models.video_resnet import Conv3d

# (name, in channels, out channels, kernel, stride, pads, input size as a fraction of
# --size, groups)
SHAPES = [
    ("r3d/mc3 stem 3x7x7 /(1,2,2)", 3, 64, (3, 7, 7), (1, 2, 2), (1, 3, 3), 2, 1),
    ("r3d layer1 3x3x3", 64, 64, (3, 3, 3), (1, 1, 1), (1, 1, 1), 1, 1),
    ("r3d layer2 3x3x3 /2", 64, 128, (3, 3, 3), (2, 2, 2), (1, 1, 1), 1, 1),
    ("r3d downsample 1x1x1 /2", 64, 128, (1, 1, 1), (2, 2, 2), (0, 0, 0), 1, 1),
    ("mfnet grouped 3x3x3, 16 groups", 96, 96, (3, 3, 3), (1, 1, 1), (1, 1, 1), 1, 16),
    ("layer1 spatial 1x3x3", 64, 144, (1, 3, 3), (1, 1, 1), (0, 1, 1), 1, 1),
    ("layer1 temporal 3x1x1", 144, 64, (3, 1, 1), (1, 1, 1), (1, 0, 0), 1, 1),
    ("layer2 spatial 1x3x3", 128, 288, (1, 3, 3), (1, 1, 1), (0, 1, 1), 1 / 2, 1),
    ("layer2 temporal 3x1x1", 288, 128, (3, 1, 1), (1, 1, 1), (1, 0, 0), 1 / 2, 1),
    ("layer3 spatial 1x3x3", 256, 576, (1, 3, 3), (1, 1, 1), (0, 1, 1), 1 / 4, 1),
    ("layer3 temporal 3x1x1", 576, 256, (3, 1, 1), (1, 1, 1), (1, 0, 0), 1 / 4, 1),
    ("layer4 spatial 1x3x3 /(1,2,2)", 256, 1152, (1, 3, 3), (1, 2, 2), (0, 1, 1), 1 / 4, 1),
    ("layer4 spatial 1x3x3", 512, 1152, (1, 3, 3), (1, 1, 1), (0, 1, 1), 1 / 8, 1),
]

# The --im2col table: 2D convolutions (name, in, out, kernel, stride, input size as a
# fraction of --size, batch multiplier): ResNet / R(2+1)D stage shapes, whose late stages
# have the small maps on which XLA's CPU convolution is slow.
SHAPES_2D = [
    ("stage1 3x3", 64, 144, 3, 1, 1, 8),
    ("stage2 3x3", 128, 288, 3, 1, 1 / 2, 4),
    ("stage3 3x3", 256, 576, 3, 1, 1 / 4, 2),
    ("stage4 3x3 /2", 256, 1152, 3, 2, 1 / 4, 1),
    ("stage4 3x3", 512, 1152, 3, 1, 1 / 8, 1),
    ("stage4 1x1 /2 shortcut", 256, 512, 1, 2, 1 / 4, 1),
    ("stage4 1x1", 1152, 512, 1, 1, 1 / 8, 1),
]


def median_ms(fn, repeats: int) -> float:
  fn()  # compile / warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times)


def jax_timings(x, cin, cout, kernel, stride, pads, groups, repeats):
  module = Conv3d(cout, kernel, stride, pads, groups=groups)
  variables = module.init(jax.random.PRNGKey(0), x)

  def loss_factorized(v, x):
    return jnp.sum(module.apply(v, x) ** 2)

  def loss_plain(v, x):
    y = jax.lax.conv_general_dilated(x, v["params"]["kernel"], stride, tuple((p, p) for p in pads),
                                     dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), feature_group_count=groups)
    return jnp.sum(y ** 2)

  out = {}
  for name, loss in (("factorized", loss_factorized), ("plain", loss_plain)):
    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    out[name] = median_ms(lambda: jax.block_until_ready(step(variables, x)), repeats)
  factorized = jax.grad(loss_factorized, argnums=(0, 1))(variables, x)
  plain = jax.grad(loss_plain, argnums=(0, 1))(variables, x)
  out["max_grad_diff"] = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in
                             zip(jax.tree.leaves(factorized), jax.tree.leaves(plain)))
  return out


def conv2d_timings(x, kernel, stride, repeats):
  pad = kernel.shape[0] // 2
  args = ((stride, stride), ((pad, pad), (pad, pad)))

  def loss(conv):
    return lambda x, k: jnp.sum(conv(x, k, *args, dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)

  out = {}
  for name, conv in (("blastjax", cpu_conv.conv_general_dilated), ("xla", jax.lax.conv_general_dilated)):
    step = jax.jit(jax.grad(loss(conv), argnums=(0, 1)))
    out[name] = median_ms(lambda: jax.block_until_ready(step(x, kernel)), repeats)
    out[name + "_grads"] = step(x, kernel)
  out["max_grad_diff"] = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                             for a, b in zip(out["blastjax_grads"], out["xla_grads"]))
  out["im2col"] = cpu_conv.uses_im2col(x.shape, kernel.shape, (stride, stride), args[1])
  return out


def torch_conv2d_ms(x, kernel, stride, repeats):
  import torch

  cin, cout, k = kernel.shape[2], kernel.shape[3], kernel.shape[0]
  conv = torch.nn.Conv2d(cin, cout, k, stride, k // 2, bias=False).to(memory_format=torch.channels_last)
  data = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous(
      memory_format=torch.channels_last).requires_grad_(True)

  def step():
    conv.zero_grad()
    data.grad = None
    conv(data).pow(2).sum().backward()

  return median_ms(step, repeats)


def print_conv2d_table(args) -> None:
  print(f"2D convolutions: batch {args.batch} x {args.frames} frames (x the shape's multiplier), stage1 "
        f"{args.size}x{args.size}; jitted forward + backward, median of {args.repeats}")
  columns = ["convolution", "input", "route", "blastjax cpu_conv ms", "XLA conv ms", "torch ms",
             "cpu_conv / XLA speed-up", "cpu_conv / torch speed-up", "max grad diff / max |grad|"]
  print("| " + " | ".join(columns) + " |")
  print("|" + "---|" * len(columns))
  rng = np.random.default_rng(0)
  for name, cin, cout, k, stride, fraction, multiplier in SHAPES_2D:
    size = max(1, int(args.size * fraction))
    x = jnp.asarray(rng.standard_normal((args.batch * args.frames * multiplier // 8 or 1, size, size, cin)),
                    jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, cin, cout)) * 0.05, jnp.float32)
    timings = conv2d_timings(x, kernel, stride, args.repeats)
    reference = None if args.no_torch else torch_conv2d_ms(x, kernel, stride, args.repeats)
    row = [name, "x".join(map(str, x.shape)), "im2col" if timings["im2col"] else "XLA conv",
           f"{timings['blastjax']:.2f}", f"{timings['xla']:.2f}", "-" if reference is None else f"{reference:.2f}",
           f"{timings['xla'] / timings['blastjax']:.2f}x",
           "-" if reference is None else f"{reference / timings['blastjax']:.2f}x", f"{timings['max_grad_diff']:.1e}"]
    print("| " + " | ".join(row) + " |", flush=True)


def torch_ms(x, cin, cout, kernel, stride, pads, groups, repeats):
  import torch

  conv = torch.nn.Conv3d(cin, cout, kernel, stride, pads, groups=groups, bias=False).to(memory_format=torch.channels_last_3d)
  data = torch.from_numpy(np.array(x)).permute(0, 4, 1, 2, 3).contiguous(
      memory_format=torch.channels_last_3d).requires_grad_(True)

  def step():
    conv.zero_grad()
    data.grad = None
    conv(data).pow(2).sum().backward()

  return median_ms(step, repeats)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--batch", type=int, default=2, help="batch size")
  parser.add_argument("--frames", type=int, default=8, help="frames per clip")
  parser.add_argument("--size", type=int, default=28, help="layer1 height = width")
  parser.add_argument("--repeats", type=int, default=10, help="timed repeats (the median is printed)")
  parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch reference")
  parser.add_argument("--im2col", action="store_true",
                      help="time the 2D convolutions of blastjax.models.cpu_conv instead of Conv3d")
  args = parser.parse_args(argv)
  if min(args.batch, args.frames, args.size, args.repeats) < 1:
    parser.error("--batch, --frames, --size and --repeats must be positive")
  header = f"device: {jax.devices()[0].device_kind} | jax {jax.__version__} | python {platform.python_version()}"
  if not args.no_torch:
    import torch
    header += f" | torch {torch.__version__} ({torch.get_num_threads()} threads)"
  print(header)
  if args.im2col:
    print_conv2d_table(args)
    return 0
  print(f"batch {args.batch}, {args.frames} frames, layer1 {args.size}x{args.size}; jitted forward + backward, "
        f"median of {args.repeats}")
  columns = ["convolution", "input", "blastjax Conv3d ms", "XLA conv3d ms", "torch ms",
             "Conv3d / XLA conv3d speed-up", "Conv3d / torch speed-up", "max grad diff / max |grad|"]
  print("| " + " | ".join(columns) + " |")
  print("|" + "---|" * len(columns))
  rng = np.random.default_rng(0)
  for name, cin, cout, kernel, stride, pads, fraction, groups in SHAPES:
    size = max(1, int(args.size * fraction))
    x = jnp.asarray(rng.standard_normal((args.batch, args.frames, size, size, cin)), jnp.float32)
    timings = jax_timings(x, cin, cout, kernel, stride, pads, groups, args.repeats)
    reference = None if args.no_torch else torch_ms(x, cin, cout, kernel, stride, pads, groups, args.repeats)
    row = [name, "x".join(map(str, x.shape)), f"{timings['factorized']:.2f}", f"{timings['plain']:.2f}",
           "-" if reference is None else f"{reference:.2f}",
           f"{timings['plain'] / timings['factorized']:.2f}x",
           "-" if reference is None else f"{reference / timings['factorized']:.2f}x",
           f"{timings['max_grad_diff']:.1e}"]
    print("| " + " | ".join(row) + " |", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
