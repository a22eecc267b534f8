"""The registry and the import-cost promise of blastjax.models."""

import subprocess
import sys

import pytest

from blastjax import models


def test_unknown_model_error_lists_known_names():
  with pytest.raises(ValueError, match="unknown model 'no_such_net'"):
    models.create("no_such_net")


def test_register_rejects_bad_input_kind():
  with pytest.raises(ValueError, match="input_kind"):
    models.register("bad_kind_model", input_kind="audio")


def test_importing_models_does_not_import_heavy_packages():
  code = ("import sys, blastjax.models, blastjax.weights; "
          "heavy = [m for m in ('torch', 'torchvision', 'tensorflow', 'tensorflow_datasets', "
          "'grain', 'orbax', 'matplotlib') if m in sys.modules]; "
          "print(','.join(heavy)); sys.exit(1 if heavy else 0)")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  assert result.returncode == 0, f"heavy imports: {result.stdout} {result.stderr[-2000:]}"
