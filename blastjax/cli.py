"""The console commands (`blastjax-train`, ... in pyproject.toml's [project.scripts]).

Each is `python -m <module>` with that module's own entry function; what this adds is
the --help of `python -m`. absl's --help lists the flags of the module that sys.argv[0]
names and prints __main__'s docstring, and a console script is neither that module nor
documented, so `blastjax-train --help` listed no flag. Each command here names its
module in sys.argv[0] (as blastjax.testing.tiny's commands do) and lends it the
module's docstring. This module defines no flags: predict and reproduce define some of
the same names as blastjax.main (--workdir), so only one of them may be imported.
Conventions of every command: docs/cli.md.
"""

import importlib
import sys


def run_module(module_name: str, function: str = "entry") -> None:
  """Runs `module_name`'s `function` as `python -m module_name` runs it."""
  module = importlib.import_module(module_name)
  sys.argv[0] = module_name
  script = sys.modules.get("__main__")
  if script is not None and not getattr(script, "__doc__", None):
    script.__doc__ = module.__doc__
  getattr(module, function)()


def train() -> None:
  """`blastjax-train`: python -m blastjax.main (train, then evaluate)."""
  run_module("blastjax.main")


def evaluate() -> None:
  """`blastjax-evaluate`: python -m blastjax.main --mode evaluate (a finished workdir)."""
  run_module("blastjax.main", "evaluate_entry")


def predict() -> None:
  """`blastjax-predict`: python -m blastjax.predict."""
  run_module("blastjax.predict")


def reproduce() -> None:
  """`blastjax-reproduce`: python -m blastjax.reproduce."""
  run_module("blastjax.reproduce")
