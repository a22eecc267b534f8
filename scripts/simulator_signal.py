"""How much the synthetic simulator's label is told by time, with perfect perception.

A model that reads every frame perfectly sees, per frame, the embryo's state: its cell
count, whether it has compacted, how far it has degenerated (synthetic._stage). This
prints the 5-fold cross-validated accuracy of a logistic regression on that state at
the last frame alone (what a single-frame model can know) and at K uniformly sampled
frames (what a multi-frame model can know), on a large simulated population with the
smoke dataset's timing (2 h interval, 80 h horizon). The gap is the temporal signal the
simulator offers; whether a model at smoke sizes learns to use it is another question
(docs/reproduce.md). The benchmark paper's gap: 77.74% (R(2+1)D) vs 74.72% (best
single-frame model).

  python scripts/simulator_signal.py
  python scripts/simulator_signal.py --embryos 4000 --frames 1,4,8,16 --horizon 80
"""

from __future__ import annotations

import argparse

import numpy as np

from blastjax.data import synthetic


def frame_states(plan, hours) -> list:
  """[cells, compacted, degeneration] of each of `hours`, concatenated."""
  out = []
  for h in hours:
    cells, compacted, degeneration = synthetic._stage(plan, float(h))
    out += [cells, float(compacted), degeneration]
  return out


def signal(num_embryos: int = 2000, frames=(1, 2, 4, 8, 16), interval_minutes: float = 120.0,
           horizon_hours: float = 80.0, seed: int = 0) -> dict:
  """{"last frame": accuracy, "K uniform frames": accuracy, ..., "blast fraction": ...}."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.model_selection import cross_val_score

  config = synthetic.SimulatorConfig(num_embryos=num_embryos, num_patients=max(1, num_embryos // 10),
                                     interval_minutes=interval_minutes, horizon_hours=horizon_hours, seed=seed)
  plans = synthetic.plan_embryos(config)
  labels = np.array([p.label for p in plans])
  hours = config.hours
  result = {"blast fraction": float(labels.mean())}
  for k in frames:
    chosen = hours[np.linspace(0, hours.size - 1, k).round().astype(int)] if k > 1 else hours[-1:]
    states = np.array([frame_states(p, chosen) for p in plans])
    name = "last frame" if k == 1 else f"{k} uniform frames"
    result[name] = float(cross_val_score(LogisticRegression(max_iter=5000), states, labels, cv=5).mean())
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--embryos", type=int, default=2000, help="simulated embryos")
  parser.add_argument("--frames", default="1,2,4,8,16", help="frame counts (1 = the last frame)")
  parser.add_argument("--interval", type=float, default=120.0, help="minutes between frames")
  parser.add_argument("--horizon", type=float, default=80.0, help="hours observed")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  try:
    frames = tuple(int(f) for f in args.frames.split(","))
  except ValueError:
    parser.error(f"--frames {args.frames!r}: comma-separated positive integers, e.g. 1,4,8")
  if args.embryos < 20 or min(frames) < 1:
    parser.error("--embryos must be at least 20 and every --frames value at least 1")
  result = signal(args.embryos, frames, args.interval, args.horizon, args.seed)
  print(f"{args.embryos} simulated embryos ({result.pop('blast fraction'):.1%} blast), {args.interval:g}-minute "
        f"interval, {args.horizon:g} h; logistic regression on the perfectly perceived state, 5-fold CV")
  print("| frames seen | accuracy |\n|---|---|")
  for name, accuracy in result.items():
    print(f"| {name} | {accuracy:.1%} |")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
