"""blastjax as an installed library: the built-in configs found by name from any
directory and shipped in the wheel, the console commands (their entry points and a
--help that shows defaults), and constraints.txt pinning the versions installed."""

import glob
import importlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from blastjax import config_presets
from blastjax.testing import tiny as th

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PYPROJECT = os.path.join(th.REPO, "pyproject.toml")
CONSTRAINTS = os.path.join(th.REPO, "constraints.txt")


def project() -> dict:
  with open(PYPROJECT, "rb") as f:
    return tomllib.load(f)["project"]


def requirement_name(text: str) -> str:
  """The normalised distribution name of a requirement (`jax[cuda12]>=0.8` -> `jax`)."""
  return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", text).group(0)).lower()


def pins() -> dict:
  """constraints.txt as {normalised name: version}."""
  found = {}
  with open(CONSTRAINTS) as f:
    for line in f:
      line = line.split("#", 1)[0].strip()
      if line:
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt: {line!r} is not name==version"
        found[requirement_name(name)] = version.strip()
  return found


# ------------------------------------------------------------------ built-in configs


def test_configs_are_found_by_name_from_another_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  package_dir = os.path.dirname(config_presets.__file__)
  assert os.path.dirname(config_presets.CONFIGS_DIR) == package_dir  # inside the package, not the checkout
  path = os.path.join(config_presets.CONFIGS_DIR, "r2p1d.py")
  assert config_presets.config_file("r2p1d.py") == path and config_presets.config_file("r2p1d") == path
  assert config_presets.load_config("r2p1d:smoke").model == "r2plus1d_18"
  assert "r2p1d.py" in config_presets.config_names() and "__init__.py" not in config_presets.config_names()
  with pytest.raises(FileNotFoundError, match="built-in name: .*r2p1d.py"):
    config_presets.config_file("no_such_config")
  with pytest.raises(FileNotFoundError):
    config_presets.config_file("__init__")  # the package's own module is no config


def test_the_checkout_configs_path_is_the_package_folder():
  """`configs/` of a checkout (a symlink) is the packaged folder, and ml_collections'
  config_flags loads a config through it, as `--config configs/r2p1d.py` does."""
  from absl import flags
  from ml_collections import config_flags

  link = os.path.join(th.REPO, "configs")
  assert os.path.realpath(link) == os.path.realpath(config_presets.CONFIGS_DIR)
  values = flags.FlagValues()
  argv = ["prog", "--config", os.path.relpath(os.path.join(link, "r2p1d.py"), os.getcwd()) + ":smoke"]
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
  values(argv)
  assert values.config.model == "r2plus1d_18" and values.config.dataset == "synthetic"


def test_main_takes_a_bare_config_name_from_another_directory(tmp_path):
  """`--config r2p1d:smoke` from a directory without configs/: past config loading (the
  model override is then refused by validation, before any work)."""
  done = subprocess.run(th.main_command("--config", "r2p1d:smoke", "--config.model=no_such_model",
                                        "--workdir", str(tmp_path / "run")),
                        env=th.subprocess_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert done.returncode == 2 and errors, done.stderr[-2000:]
  assert errors[0].startswith("error: config.model: unknown model 'no_such_model'"), done.stderr[-2000:]
  assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
  """The wheel of a copy of the package sources (built without touching the checkout)."""
  pytest.importorskip("setuptools", minversion="64")  # --no-build-isolation builds with this env's
  base = tmp_path_factory.mktemp("wheel")
  source = base / "src"
  ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
  for name in ("blastjax", "tfds_builders"):
    shutil.copytree(os.path.join(th.REPO, name), source / name, ignore=ignore)
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(th.REPO, name), source / name)
  done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                         "--wheel-dir", str(base / "dist"), str(source)],
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
  (path,) = glob.glob(str(base / "dist" / "blastjax-*.whl"))
  return zipfile.ZipFile(path)


def test_the_wheel_ships_every_config_and_the_console_scripts(wheel):
  names = set(wheel.namelist())
  configs = config_presets.config_names()
  assert len(configs) > 20
  missing = [n for n in configs + ["__init__.py"] if f"blastjax/configs/{n}" not in names]
  assert not missing, f"config files left out of the wheel: {missing}"
  assert "tfds_builders/embryo_timelapse/embryo_timelapse.py" in names
  (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
  text = wheel.read(entry_points).decode()
  for script, target in project()["scripts"].items():
    assert f"{script} = {target}" in text, text


# ------------------------------------------------------------------ console commands


def test_every_command_is_declared_and_importable():
  scripts = project()["scripts"]
  assert set(scripts) == {"blastjax-train", "blastjax-evaluate", "blastjax-predict", "blastjax-build",
                          "blastjax-reproduce"}
  for target in scripts.values():
    module, _, function = target.partition(":")
    assert callable(getattr(importlib.import_module(module), function)), target


# (command, a default its --help must show). absl's --help exits with status 1, argparse's 0.
HELP = [("blastjax-train", "(default: 'train')"), ("blastjax-evaluate", "(default: 'evaluate')"),
        ("blastjax-predict", "(default: '3')"), ("blastjax-reproduce", "(default: '0')"),
        ("blastjax-build", "(default: synthetic)")]


@pytest.mark.parametrize("script,expected", HELP)
def test_each_command_help_shows_the_defaults(script, expected):
  """Runs the entry function as the console script does (sys.argv[0] the script's path)."""
  module, _, function = project()["scripts"][script].partition(":")
  code = (f"import sys; sys.argv[0] = {os.path.join('/venv/bin', script)!r}; "
          f"from {module} import {function}; {function}()")
  done = subprocess.run([sys.executable, "-c", code, "--help"], env=th.subprocess_env(),
                        capture_output=True, text=True, timeout=300, cwd=th.REPO)
  assert done.returncode in (0, 1) and expected in done.stdout, (done.stdout + done.stderr)[-3000:]
  assert done.stdout.count("(default: ") >= 3, done.stdout[-3000:]


def argparse_scripts() -> list:
  """The scripts/*.py with an argparse command line."""
  found = []
  for path in sorted(glob.glob(os.path.join(th.REPO, "scripts", "*.py"))):
    with open(path) as f:
      if "argparse.ArgumentParser(" in f.read():
        found.append(os.path.basename(path))
  return found


@pytest.mark.parametrize("script", argparse_scripts())
def test_each_script_help_shows_the_defaults(script):
  done = subprocess.run([sys.executable, os.path.join("scripts", script), "--help"], env=th.subprocess_env(),
                        capture_output=True, text=True, timeout=300, cwd=th.REPO)
  assert done.returncode == 0, done.stderr[-3000:]
  options = [line for line in done.stdout.splitlines() if line.lstrip().startswith("--")]
  assert "(default: " in done.stdout and options, done.stdout


# ------------------------------------------------------------------ constraints.txt


def test_constraints_pin_every_direct_dependency_within_its_bounds():
  packaging = pytest.importorskip("packaging.requirements")
  meta, pinned = project(), pins()
  requirements = meta["dependencies"] + meta["optional-dependencies"]["test"]
  unpinned = [r for r in requirements if requirement_name(r) not in pinned]
  assert not unpinned, f"constraints.txt: no pin for {unpinned}; add name==version (pip freeze)"
  for text in requirements:
    requirement = packaging.Requirement(text)
    version = pinned[requirement_name(text)]
    assert requirement.specifier.contains(version, prereleases=True), \
        f"constraints.txt pins {requirement.name}=={version}, outside pyproject.toml's {text!r}"


def test_constraints_pin_the_versions_installed():
  """The suite runs with the pinned versions (README: `pip install -c constraints.txt`);
  refresh the file from `pip freeze` when the environment moves on."""
  wrong = {}
  for name, version in pins().items():
    try:
      installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      installed = None
    if installed != version:
      wrong[name] = (version, installed)
  assert not wrong, f"constraints.txt (pinned, installed): {wrong}; install with -c constraints.txt or refresh it"
