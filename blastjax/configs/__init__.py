"""The built-in config files: one ml_collections file per model or paper recipe.

A config file is data with `get_config(arg=None)`; it is loaded by path
(`--config configs/r2p1d.py` in a checkout, where `configs` is a symlink to this
folder) or by name from any directory (`--config r2p1d.py`, `--config r2p1d`:
`blastjax.config_presets.config_file`). Being modules of this package, the files ship
with every install of blastjax. Shared code lives in blastjax/config_presets.py.
"""
