"""Helpers shared by several test files: fake layouts on disk, in-memory sources,
the torch references of the parity tests, the video models' padding checks.

The tiny models and configs of the training-system tests are `blastjax.testing.tiny`
(registered for the session by tests/conftest.py)."""

import pytest

# Tests whose process peaks at 5-11 GB (ViT-L, the 100+-layer ResNets): conftest.py makes
# them take turns across xdist workers, so two never overlap on CI's 24 GB.
LARGE_MODEL = pytest.mark.large_model
