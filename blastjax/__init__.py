"""blastjax: predict blastocyst formation from embryo time-lapse images with JAX/Flax.

Sub-packages are imported on demand so that `import blastjax.models` pulls in only
jax, flax and numpy:

- `blastjax.models`: Flax model zoo and registry (`create`, `list_models`).
- `blastjax.weights`: PyTorch state_dict -> Flax variables.
- `blastjax.data`: synthetic embryos, TFDS dataset access, splits, grain pipeline.
- `blastjax.train`, `blastjax.evaluate` (metrics), `blastjax.results` (their files), `blastjax.main`: training and evaluation.
"""

__version__ = "0.1.0"
