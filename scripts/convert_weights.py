"""Converts a PyTorch checkpoint to blastjax variables (orbax) for `config.init_from`.

  python scripts/convert_weights.py --model resnet50 --pth resnet50.pth --out /tmp/r50 \\
      [--in_channels 1] [--num_classes 2] [--drop_head] [--model_kwargs '{"key": value}']
  # a checkpoint of a model that another one embeds (its backbone):
  python scripts/convert_weights.py --model amsnet --source resnet50 --pth resnet50.pth --out DIR
  python scripts/convert_weights.py --model yowo_cfam --source resnet18 --pth r18.pth \\
      --source r3d_18 --pth r3d_18.pth --out DIR

The checkpoint is read with `torch.load(weights_only=True)`; `{'state_dict': ...}` and
`{'model': ...}` wrappers and DataParallel's `module.` prefix are accepted. `--in_channels`
other than 3 adapts the RGB stem (sum of the RGB filters for 1 channel, spread evenly
for N focal planes). An ImageNet checkpoint (1000 classes) for a 2-class model needs
`--drop_head`: the classifier is then left out and initialised fresh by `init_from`.

`--source NAME` (repeatable, one `--pth` each, in order): the checkpoint is one of model
NAME (e.g. an ImageNet resnet50), loaded into every place where `--model` embeds NAME
(AMSNet's front and back, a recurrent model's frame encoder, TSM's base model, a
`yowo_cfam` branch); every leaf there must load. The rest of the model is left for
fresh initialisation.

Writes OUT/variables (orbax) and OUT/meta.json: model, kwargs, source file(s),
source_model (with --source), drop_head, adapted_channels, in_channels and `init_skip`,
the glob patterns of the leaves the conversion left out on purpose (the head, or
everything outside the embedded backbones), which `config.init_from` keeps fresh
without repeating them in `config.init_skip`.
"""

import argparse
import json
import os
import sys

import jax
from flax import traverse_util

from blastjax import models, weights


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--model", required=True, help="registered model name, e.g. resnet50")
  parser.add_argument("--pth", required=True, action="append",
                      help="torch checkpoint (.pth) holding a state_dict (one per --source)")
  parser.add_argument("--source", action="append", default=[],
                      help="registered model the checkpoint is of, embedded in --model "
                           "(e.g. resnet50 for amsnet); repeat with one --pth each")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--in_channels", type=int, default=3, help="input channels of --model")
  parser.add_argument("--num_classes", type=int, default=2, help="classes of --model's head")
  parser.add_argument("--model_kwargs", default="{}",
                      help="JSON dict of further model kwargs, e.g. '{\"backbone\": \"resnet18\"}'")
  parser.add_argument("--drop_head", action="store_true",
                      help="ignore the checkpoint's classifier (left for fresh initialisation)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  return parser.parse_args(argv)


def usage_problem(args):
  """A line saying what is wrong with the arguments, or None."""
  if args.source and len(args.source) != len(args.pth):
    return (f"--source given {len(args.source)} times and --pth {len(args.pth)} times: "
            "give one --pth per --source, in the same order")
  if not args.source and len(args.pth) != 1:
    return "several --pth need one --source each (the model each checkpoint is of)"
  for pth in args.pth:
    if not os.path.isfile(pth):
      return f"--pth {pth}: no such file"
  for source in args.source:
    if source not in models.list_models():
      return f"--source {source}: not a registered model (blastjax.models.list_models())"
  return None


def model_kwargs(args) -> dict:
  kwargs = json.loads(args.model_kwargs)
  if not isinstance(kwargs, dict):
    raise ValueError(f"--model_kwargs {args.model_kwargs!r}: expected a JSON object")
  return {"num_classes": args.num_classes, **kwargs}


def read_state_dict(pth: str) -> dict:
  import torch

  return weights.unwrap_state_dict(torch.load(pth, map_location="cpu", weights_only=True))


def convert(args, kwargs: dict, example_input) -> dict:
  """The converted variables: one checkpoint of --model, or one per --source, joined."""
  adapt = args.in_channels != 3
  if not args.source:
    return weights.from_torch(args.model, read_state_dict(args.pth[0]), adapt_channels=adapt,
                              drop_head=args.drop_head, example_input=example_input, **kwargs)
  flat = {}
  for source, pth in zip(args.source, args.pth):
    loaded = weights.from_torch(args.model, read_state_dict(pth), source=source,
                                adapt_channels=adapt, example_input=example_input, **kwargs)
    flat.update(traverse_util.flatten_dict(loaded))
  return traverse_util.unflatten_dict(flat)


def main(argv=None) -> int:
  args = parse_args(argv)
  problem = usage_problem(args)
  if problem:
    print(problem, file=sys.stderr)
    return 2
  try:
    kwargs = model_kwargs(args)
  except ValueError as error:
    print(f"--model_kwargs: {error}", file=sys.stderr)
    return 2
  example_input = None
  if args.in_channels != 3:
    if args.source:  # composite models take their channels from the input
      example_input = weights.dummy_input(models.get_spec(args.model),
                                          {**kwargs, "in_channels": args.in_channels})
    else:
      kwargs["in_channels"] = args.in_channels
  try:
    variables = convert(args, kwargs, example_input)
  except weights.ConversionError as error:
    hint = "" if args.drop_head or args.source else (
        "\nIf only the classifier differs (e.g. 1000 ImageNet classes), pass --drop_head.")
    print(f"{', '.join(args.pth)} -> {args.model}: {error}{hint}", file=sys.stderr)
    return 1
  template = weights.model_template(args.model, example_input, **kwargs)
  sources = [os.path.abspath(p) for p in args.pth]
  meta = {"model": args.model, "kwargs": kwargs, "source": sources[0] if len(sources) == 1 else sources,
          "drop_head": args.drop_head, "adapted_channels": args.in_channels != 3,
          "in_channels": args.in_channels, "init_skip": weights.left_out_patterns(template, variables)}
  if args.source:
    meta["source_model"] = args.source[0] if len(args.source) == 1 else args.source
  weights.save_variables(args.out, variables, meta, overwrite=args.overwrite)
  count = sum(int(v.size) for v in jax.tree_util.tree_leaves(variables.get("params", {})))
  left = f"; left fresh: {', '.join(meta['init_skip'])}" if meta["init_skip"] else ""
  print(f"wrote {args.out}: {count} parameters of {args.model} ({kwargs}){left}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
