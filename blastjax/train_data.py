"""What a run reads: the dataset (or its feature cache), its splits, the devices used,
and the loaders of training and evaluation batches. Running a model over a split is
blastjax.evaluator's job; the workdir's files are blastjax.rundir's.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import numpy as np

from blastjax import feature_cache, models, weights
from blastjax.data import dataset, pipeline, splits
from blastjax.data import frames as frames_lib

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- data


@dataclasses.dataclass
class Data:
  """The source of a run and its splits (indices into the source)."""

  source: Any
  train: np.ndarray
  test: np.ndarray
  validation: np.ndarray
  labels: np.ndarray
  embryo_ids: np.ndarray
  patient_ids: np.ndarray


class NotBuiltError(ValueError):
  """A command that must not build (--mode evaluate) found the dataset or cache missing."""


def open_source(config, build: bool = True):
  """Builds the dataset on first use (process 0) and opens it.

  build=False (--mode evaluate, whose config comes from the workdir's config.json and
  so is data, not the user's instruction) never builds or writes: a missing dataset is
  a NotBuiltError naming where it was looked for."""
  data_dir = config.data_dir or None
  options = dict(config.dataset_options)
  if not build:
    if not dataset.is_built(config.dataset, data_dir, **options):
      raise NotBuiltError(
          f"dataset {config.dataset!r} (options {options}) is not built in {data_dir or dataset.default_data_dir()}, "
          "where the run's config.json says it is; --mode evaluate does not build datasets: build it with "
          "python -m blastjax.data.build (same config and options), or pass the data_dir that holds it")
    return dataset.load_source(config.dataset, "all", data_dir, **options)
  if jax.process_index() == 0:
    dataset.ensure_built(config.dataset, data_dir, manual_dir=config.manual_dir or None, **options)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("blastjax_dataset_built")
  return dataset.load_source(config.dataset, "all", data_dir, **options)


class SplitError(ValueError):
  """The dataset cannot give the split `config.split` asks for (a user error)."""


def run_split(config, meta) -> tuple[np.ndarray, np.ndarray, Any]:
  """(train, test, validation or None) of `config.split`; None: carve validation out of train."""
  labels, split = meta["labels"], config.split
  try:
    if split == "paper":
      return (*splits.paper_split(labels, config.split_seed), None)
    if split == "patient":
      return (*splits.patient_split(labels, meta["patient_ids"], config.split_seed), None)
    if split == "dataset":
      train, test, validation = splits.dataset_split(meta["splits"], meta["embryo_ids"])
      return train, test, (validation if validation.size else None)
  except ValueError as error:
    raise SplitError(f"config.split={split!r}: {error}") from error
  raise SplitError(f"config.split={split!r}: choose one of paper, dataset, patient")


def carve_validation(config, train_idx, labels, patient_ids) -> tuple[np.ndarray, np.ndarray]:
  """(train, validation): `validation_fraction` of train, by patient under split='patient'."""
  if config.validation_fraction <= 0:
    return np.asarray(train_idx, np.int64), np.zeros(0, np.int64)
  try:
    if config.split == "patient":
      return splits.patient_validation_split(train_idx, labels, patient_ids, config.validation_fraction,
                                             config.split_seed)
    return splits.validation_split(train_idx, labels, config.validation_fraction, config.split_seed)
  except ValueError as error:
    raise SplitError(f"config.validation_fraction={config.validation_fraction}: {error}; "
                     "set validation_fraction=0 or use more data") from error


def make_data(config, source, train_idx=None, test_idx=None) -> Data:
  """The split `config.split` (or the given train/test indices) plus a validation split:
  the dataset's own validation rows under split='dataset', else carved out of train."""
  meta = source.metadata()
  labels = meta["labels"]
  validation = None
  if train_idx is None:
    train_idx, test_idx, validation = run_split(config, meta)
  if validation is None:
    train_idx, validation = carve_validation(config, train_idx, labels, meta["patient_ids"])
  return Data(source, np.asarray(train_idx), np.asarray(test_idx), np.asarray(validation, np.int64), labels,
              meta["embryo_ids"], meta["patient_ids"])


def split_notes(config, data: Data) -> list:
  """Log lines about the run's split: its sizes, and the patients with embryos on both
  sides when the split is not patient-grouped."""
  name = f"split={config.split!r}"
  notes = [f"{name}: {data.train.size} train, {data.validation.size} validation, {data.test.size} test embryos"]
  shared = splits.shared_patients(data.patient_ids, np.concatenate([data.train, data.validation]), data.test)
  if shared.size:
    how = {"paper": " is by embryo", "dataset": " (the dataset's split column)"}.get(config.split, "")
    notes.append(f"{name}{how}: {shared.size} patients have embryos in both train and test "
                 f"(e.g. {', '.join(map(str, shared[:3]))}); use config.split='patient' for a patient-grouped split")
  return notes


def cross_validation_folds(config, source) -> list:
  """The (train, test) indices of every fold of --mode cross_validation (patient-grouped)."""
  meta = source.metadata()
  try:
    return splits.patient_kfold(meta["labels"], meta["patient_ids"], config.num_folds, config.split_seed)
  except ValueError as error:
    raise SplitError(f"config.num_folds={config.num_folds}: {error}") from error


def batch_problem(config, num_train: int) -> str:
  """'' when the training split holds at least one batch per process, else what to do."""
  if pipeline.batches_per_epoch(num_train, per_process_batch(config.batch_size), True, jax.process_count()):
    return ""
  return (f"the training split has {num_train} embryos, fewer than one batch (config.batch_size="
          f"{config.batch_size}): lower batch_size or use more data")


def check_splits(config, source, cross_validation: bool = False) -> None:
  """Raises SplitError for a split the run cannot use (asked of a dataset without it, a
  training side smaller than one batch, an early_hours cut-off before a test embryo's
  first frame), before anything is written."""
  folds = cross_validation_folds(config, source) if cross_validation else [(None, None)]
  for fold, (train_idx, test_idx) in enumerate(folds):
    data = make_data(config, source, train_idx, test_idx)
    problem = batch_problem(config, data.train.size) or early_hours_problem(config, source, data.test)
    if problem:
      raise SplitError(problem if not cross_validation else f"fold {fold + 1}/{len(folds)}: {problem}")


def early_hours_problem(config, source, test) -> str:
  """'' or why config.early_hours cannot be evaluated on `test`: a cut-off before some test
  embryo's first frame leaves it nothing to see (today: a traceback after training).
  Read from the build's index; builds indexed before first frames were kept: unchecked."""
  if not config.early_hours or test.size == 0:
    return ""
  meta = source.metadata()
  first = meta.get("first_hours")
  if first is None or np.isnan(first[test]).any():
    return ""
  latest = int(test[np.argmax(first[test])])
  earliest_cutoff = min(float(h) for h in config.early_hours)
  if earliest_cutoff >= first[latest]:
    return ""
  return (f"config.early_hours={tuple(config.early_hours)}: the cut-off {earliest_cutoff:g} h is before the first "
          f"frame of test embryo {meta['embryo_ids'][latest]} (at {first[latest]:.2f} h); every cut-off must be "
          f">= {first[latest]:.2f} h")


def loader_options(config, train: bool) -> dict:
  """pipeline.make_loader's arguments from the config (all but the order and `augment`).

  `augment_config` is `config.augmentation` resolved (its preset, fields that are not
  None overriding it; preset 'none' when config.augment is False): training draws from
  it, evaluation takes its centre crop (center_scale)."""
  from blastjax.data import augment as augment_lib

  sampling = config.sampling
  if not train:
    sampling = config.eval_sampling or ("uniform" if sampling == "clip" else sampling)
  augment_config = augment_lib.resolve(config.get("augmentation"), preset="" if config.augment else "none")
  return dict(sampling=sampling, num_frames=config.num_frames, image_size=config.image_size,
              focal_planes=config.focal_planes, rgb=config.rgb, segment_hours=config.segment_hours,
              clip_length=config.clip_length or None, window_stride=config.window_stride or None,
              normalization=config.normalization, worker_count=config.worker_count,
              augment_config=augment_config)


def local_device_count(config) -> int:
  """Devices of this process the run uses (the leading axis of every batch)."""
  return config.get("num_devices", 0) or jax.local_device_count()


def per_process_batch(global_batch: int) -> int:
  return global_batch // jax.process_count()


def reads_features(config) -> bool:
  return models.get_spec(config.model).input_kind == "features"


def extraction_settings(config):
  """How the feature cache of a 'features' model samples and prepares frames."""
  return feature_cache.ExtractionSettings(
      mode=config.sampling, num_frames=config.num_frames, clip_length=config.clip_length or config.num_frames,
      window_stride=config.window_stride or None, image_size=config.image_size,
      in_channels=3 if config.rgb else 1, batch_size=max(1, config.eval_batch_size))


def feature_cache_dir(config, workdir: str) -> str:
  return config.feature_cache_dir or os.path.join(workdir, "features")


def extractor_variables(config, settings):
  """The feature extractor's converted weights, or a seeded random init (smoke runs)."""
  if config.feature_weights:
    variables, _ = weights.load_variables(config.feature_weights)
    return variables
  logger.info("config.feature_weights is empty: %s features from a random init (seed %s); fine for a "
              "smoke test, not for results", config.feature_extractor, config.seed)
  return feature_cache.init_extractor_variables(config.feature_extractor, {}, settings, config.seed)


def _inside(path: str, folder: str) -> bool:
  path, folder = os.path.realpath(path), os.path.realpath(folder)
  return os.path.commonpath([path, folder]) == folder


def open_features(config, workdir: str, source, build: bool = True):
  """The feature cache of `source` (built by process 0 on first use, rebuilt when the
  extractor, its weights, the settings or the data changed). build=False (--mode
  evaluate) builds or rebuilds only inside the workdir the user named; a cache elsewhere
  must exist and match, or it is a NotBuiltError."""
  cache_dir = feature_cache_dir(config, workdir)
  if not build and not _inside(cache_dir, workdir) and feature_cache.read_manifest(cache_dir) is None:
    raise NotBuiltError(f"the feature cache {cache_dir} named by the run's config.json is missing; --mode "
                        "evaluate writes only inside the workdir: rerun the training command to rebuild it, "
                        f"or set feature_cache_dir to a folder inside {workdir}")
  settings = extraction_settings(config)
  variables = extractor_variables(config, settings)
  if jax.process_index() == 0:
    feature_cache.ensure_cache(source, cache_dir, variables=variables, model_name=config.feature_extractor,
                               settings=settings, progress=config.progress)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("blastjax_features_built")
  features = feature_cache.FeatureSource(cache_dir)
  if len(features) != len(source):
    raise ValueError(f"feature cache {cache_dir} holds {len(features)} embryos, the dataset {len(source)}: "
                     "delete the cache so that it is rebuilt")
  return features


def with_features(config, workdir: str, data: Data, build: bool = True) -> Data:
  """`data` reading cached features instead of frames when the model takes features."""
  if not reads_features(config):
    return data
  return dataclasses.replace(data, source=open_features(config, workdir, data.source, build))


def make_loader(config, data: Data, indices, train: bool, observe_hours=None):
  """Training batches (shuffled, endless) or evaluation batches (one pass) of `indices`."""
  options = dict(indices=indices, batch_size=per_process_batch(config.batch_size if train else config.eval_batch_size),
                 shuffle=train, seed=config.seed, num_epochs=None if train else 1, drop_remainder=train,
                 observe_hours=observe_hours, num_devices=local_device_count(config))
  if reads_features(config):
    return pipeline.make_feature_loader(data.source, worker_count=config.worker_count, **options)
  pipeline_options = loader_options(config, train=train)
  augment = config.augment and train and not pipeline_options["augment_config"].identity
  return pipeline.make_loader(data.source, augment=augment, **options, **pipeline_options)


def train_loader(config, data: Data):
  return make_loader(config, data, data.train, train=True)


def steps_per_epoch(config, data: Data) -> int:
  problem = batch_problem(config, data.train.size)
  if problem:
    raise SplitError(problem)
  return pipeline.batches_per_epoch(data.train.size, per_process_batch(config.batch_size), True,
                                    jax.process_count())


def data_info(source, data: Data) -> dict:
  """What the model was trained on (focal planes, frame size, frames per embryo), so
  that predict can refuse input that does not match instead of answering wrongly
  (blastjax.rundir writes it as data_info.json)."""
  example = source[int(data.train[0])]
  width, height = frames_lib.size(example["frames"][0, 0])
  frames = [int(source.raw(int(i))["hours"].shape[0]) for i in data.train[:64]]
  info = {"focal_planes": [int(p) for p in np.asarray(example["focal_planes"]).reshape(-1)],
          "frame_size": [int(width), int(height)], "min_frames": int(min(frames)),
          "max_frames": int(max(frames)), "num_train": int(data.train.size)}
  return info
