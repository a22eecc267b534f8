"""Converts a PyTorch checkpoint to blastjax variables (orbax) for `config.init_from`.

  python scripts/convert_weights.py --model resnet50 --pth resnet50.pth --out /tmp/r50 \\
      [--in_channels 1] [--num_classes 2] [--drop_head]

The checkpoint is read with `torch.load(weights_only=True)`; `{'state_dict': ...}` and
`{'model': ...}` wrappers and DataParallel's `module.` prefix are accepted. `--in_channels`
other than 3 adapts the RGB stem (sum of the RGB filters for 1 channel, spread evenly
for N focal planes). An ImageNet checkpoint (1000 classes) for a 2-class model needs
`--drop_head`: the classifier is then left out and initialised fresh by `init_from`.
Writes OUT/variables (orbax) and OUT/meta.json (model, kwargs, source file).
"""

import argparse
import os
import sys

import jax

from blastjax import weights


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", required=True, help="registered model name, e.g. resnet50")
  parser.add_argument("--pth", required=True, help="torch checkpoint (.pth) holding a state_dict")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--in_channels", type=int, default=3)
  parser.add_argument("--num_classes", type=int, default=2)
  parser.add_argument("--drop_head", action="store_true",
                      help="ignore the checkpoint's classifier (left for fresh initialisation)")
  parser.add_argument("--overwrite", action="store_true")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  import torch

  args = parse_args(argv)
  if not os.path.isfile(args.pth):
    print(f"--pth {args.pth}: no such file", file=sys.stderr)
    return 2
  checkpoint = torch.load(args.pth, map_location="cpu", weights_only=True)
  state_dict = weights.unwrap_state_dict(checkpoint)
  kwargs = {"num_classes": args.num_classes}
  if args.in_channels != 3:
    kwargs["in_channels"] = args.in_channels
  try:
    variables = weights.from_torch(args.model, state_dict, adapt_channels=args.in_channels != 3,
                                   drop_head=args.drop_head, **kwargs)
  except weights.ConversionError as error:
    hint = "" if args.drop_head else (
        "\nIf only the classifier differs (e.g. 1000 ImageNet classes), pass --drop_head.")
    print(f"{args.pth} -> {args.model}: {error}{hint}", file=sys.stderr)
    return 1
  meta = {"model": args.model, "kwargs": kwargs, "source": os.path.abspath(args.pth),
          "drop_head": args.drop_head, "adapted_channels": args.in_channels != 3}
  weights.save_variables(args.out, variables, meta, overwrite=args.overwrite)
  count = sum(int(v.size) for v in jax.tree_util.tree_leaves(variables.get("params", {})))
  print(f"wrote {args.out}: {count} parameters of {args.model} ({meta['kwargs']})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
