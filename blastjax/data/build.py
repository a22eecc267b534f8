"""Builds the embryo_timelapse dataset without TensorFlow (the stock `tfds build` needs it).

    python -m blastjax.data.build --config folder --manual_dir /data/my_export \\
        --data_dir ~/tensorflow_datasets [--skip_invalid] [--resize 256]
    python -m blastjax.data.build --config synthetic --num_embryos 200 --image_size 128

Prints a progress bar and a final summary (embryos per class, patients, frames,
skipped embryos, adaptations); writes build_report.json beside the dataset. Bad input
stops the build with one line naming the embryo, the file and the problem (exit code
2) unless --skip_invalid, which skips that embryo and lists it in the report.
"""

from __future__ import annotations

import argparse
import sys

from blastjax.data import dataset, layouts

# Builder options settable from the command line (name -> type).
OPTIONS = {"num_embryos": int, "num_patients": int, "image_size": int, "interval_minutes": float,
           "horizon_hours": float, "simulator_seed": int, "resize": int}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m blastjax.data.build", description=__doc__.split("\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--config", default="synthetic", choices=("synthetic", "folder", "gomez2022"),
                      help="the dataset to build: the simulator or a layout on disk (docs/data.md)")
  parser.add_argument("--data_dir", default=None,
                      help="where to write it; None: $TFDS_DATA_DIR or ~/tensorflow_datasets")
  parser.add_argument("--manual_dir", default=None, help="the folder read by the folder/gomez2022 configs")
  parser.add_argument("--skip_invalid", action="store_true",
                      help="skip (and report) invalid embryos instead of stopping")
  parser.add_argument("--check_jpeg_scans", action="store_true",
                      help="decode every JPEG's compressed data to find damage PIL repairs silently (slow)")
  parser.add_argument("--overwrite", action="store_true",
                      help="rebuild even if built; the old build is replaced only once the new one is complete")
  for name, kind in OPTIONS.items():
    parser.add_argument(f"--{name}", type=kind, default=None,
                        help="synthetic only; None: the simulator's default" if name not in ("resize",)
                        else "resize frames to NxN at build time; None: keep their size")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  options = {name: getattr(args, name) for name in OPTIONS if getattr(args, name) is not None}
  if args.skip_invalid:
    options["skip_invalid"] = True
  if args.check_jpeg_scans:
    options["check_jpeg_scans"] = True
  if args.config != "synthetic":
    synthetic_only = sorted(set(options) - {"resize", "skip_invalid", "check_jpeg_scans"})
    if synthetic_only:
      print(f"error: option(s) {synthetic_only} apply to --config synthetic only", file=sys.stderr)
      return 2
  try:
    builder, _ = dataset.build(args.config, args.data_dir, manual_dir=args.manual_dir,
                               overwrite=args.overwrite, verbose=True, **options)
  except (layouts.InvalidEmbryo, layouts.LayoutError, ValueError) as error:
    hint = " (or pass --skip_invalid to skip and report such embryos)" if isinstance(error, layouts.InvalidEmbryo) else ""
    print(f"error: {error}{hint}\nNothing was written; earlier complete builds are unchanged.", file=sys.stderr)
    return 2
  print(f"built: {builder.data_dir}")
  return 0


def entry() -> None:
  """The `blastjax-build` console command."""
  sys.exit(main())


if __name__ == "__main__":
  entry()
