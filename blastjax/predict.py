"""Blast probability of one embryo folder from disk, with a trained workdir.

    python -m blastjax.predict --workdir runs/r2p1d --embryo_dir /data/E001

The folder is the dataset's `folder` layout for one embryo (blastjax/data/layouts.py):
one sub-folder per focal plane (F0, F-15, ...) of frame images named
<frame>_<hours>h.<ext>, or <frame>.<ext> with a times.csv (frame,hours). Prints
P(blast) with every frame, then for each hours-observed cut-off of the run's config
(or --hours).

Input that does not match the training data is refused with a clear error (focal
planes the model needs are missing, another number of planes for models that take them
all, no frame before a cut-off). Two adaptations are made and printed, never silent:
frames of another size are centre-cropped and resized to the model's image size, as in
training; fewer frames than the model takes are repeated (uniform sampling) or looped
(clips), as the evaluation of short training embryos does.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Optional

import flax
import jax
import numpy as np
from absl import app, flags

from blastjax import compilation_cache, feature_cache, rundir, train_data
from blastjax.data import frames as frames_lib
from blastjax.data import layouts, pipeline
from blastjax.evaluator import Evaluator
from blastjax.parallel import Runner
from blastjax.train_step import StepConfig, create_model, make_eval_step

def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "The workdir of a training run (config.json, checkpoints).")
  flags.DEFINE_string("embryo_dir", None, "One embryo's folder (F<offset> plane sub-folders).")
  flags.DEFINE_list("hours", None, "Hours-observed cut-offs (default: the config's early_hours).")
  flags.DEFINE_enum("checkpoint", "", ["", "best", "last"],
                    "Which checkpoint (default: the config's eval_checkpoint).")
  flags.DEFINE_bool("explain", False, "Also explain the prediction (docs/explain.md): integrated gradients "
                    "per frame, Grad-CAM or attention-rollout maps of the key frames.")
  flags.DEFINE_string("explain_dir", "", "Where --explain writes (default <workdir>/explain/<embryo_id>).")
  compilation_cache.define_flag()
  flags.DEFINE_integer("explain_frames", 3, "Key frames (largest attribution) --explain draws.")
  flags.DEFINE_list("report", None, "Write the embryo's report (docs/report.md) to these paths: .html "
                    "(self-contained) and/or .png, e.g. --report out.html,out.png.")
  flags.DEFINE_string("embryos_dir", None, "Batch: every sub-folder is one embryo; writes --out (docs/report.md).")
  flags.DEFINE_string("out", None, "Batch: the CSV of --embryos_dir, one row per embryo.")


class PredictError(ValueError):
  """The embryo cannot be predicted by this model; the message says why."""


def read_embryo(embryo_dir: str) -> dict:
  """The embryo folder as a dataset example (label unknown: -1)."""
  if not os.path.isdir(embryo_dir):
    raise PredictError(f"--embryo_dir {embryo_dir!r} is not a directory")
  embryo_id = os.path.basename(os.path.normpath(embryo_dir))
  try:
    return layouts.read_embryo_folder(embryo_dir, embryo_id)  # label unknown: -1
  except layouts.InvalidEmbryo as error:
    raise PredictError(str(error)) from error


def check_compatible(example: dict, config, info: dict, spec) -> list:
  """Errors for input the model cannot take; returns the adaptations it makes."""
  planes = [int(p) for p in example["focal_planes"]]
  trained = info.get("focal_planes", [0])
  if config.focal_planes == "center" and 0 not in planes:
    raise PredictError(f"embryo {example['embryo_id']!r} has focal planes {planes} but no central plane F0, "
                       "which this model reads")
  if config.focal_planes in ("axis", "channels") and len(planes) != len(trained):
    raise PredictError(f"embryo {example['embryo_id']!r} has {len(planes)} focal planes {planes}; the model was "
                       f"trained on {len(trained)} {trained} (focal_planes={config.focal_planes!r})")
  adaptations = []
  if config.focal_planes in ("axis", "channels") and planes != trained:
    adaptations.append(f"plane offsets {planes} used in place of the trained {trained} (same count, same order)")
  width, height = frames_lib.size(example["frames"][0, 0])
  if [width, height] != info.get("frame_size", [width, height]):
    adaptations.append(f"frames of {width}x{height} (training data: {info['frame_size'][0]}x"
                       f"{info['frame_size'][1]}) centre-cropped and resized to {config.image_size}")
  return adaptations


def frames_note(config, spec, count: int) -> str:
  needed = config.clip_length or config.num_frames
  if spec.input_kind != "image" and config.sampling in ("uniform", "clip") and count < needed:
    how = "repeated" if config.sampling == "uniform" else "looped"
    return f"only {count} frames observed; the model takes {needed}: frames {how}"
  return ""


class Predictor:
  """A trained model of a workdir, applied to one embryo at a time (one device)."""

  def __init__(self, workdir: str, checkpoint: str = ""):
    self.workdir = workdir
    try:
      self.config = rundir.read_config(workdir, "blastjax.predict")
    except rundir.RunDirError as error:
      raise PredictError(str(error)) from error
    self.info = rundir.read_data_info(workdir)
    self.model, self.spec = create_model(self.config)
    state, self.step = restore_variables(workdir, checkpoint or self.config.eval_checkpoint)
    calibration = rundir.read_calibration(workdir, self.step)
    self.temperature = calibration["temperature"] if calibration else 1.0
    sc = StepConfig(input_kind=self.spec.input_kind, per_step=self.spec.per_step)
    # The eval step of training, on this process's first device: the same probabilities.
    self.runner = Runner(None, make_eval_step(self.model, sc), devices=jax.local_devices()[:1])
    self.state = self.runner.put_state(state)
    self._features = None
    self.num_steps = None
    if self.spec.input_kind == "features":
      manifest = feature_cache.read_manifest(train_data.feature_cache_dir(self.config, workdir))
      if manifest is None:
        raise PredictError(f"the feature cache of {workdir} ({train_data.feature_cache_dir(self.config, workdir)}) "
                           "is missing: it fixes the sequence length the model was trained with")
      self.num_steps = int(manifest["max_steps"])

  def _feature_row(self, example: dict) -> dict:
    """The embryo as a cached-features row (features models), extracted as in training."""
    key = (example["embryo_id"], len(example["hours"]))
    if self._features is None or self._features[0] != key:
      settings = train_data.extraction_settings(self.config)
      variables = train_data.extractor_variables(self.config, settings)
      (features, hours), = feature_cache.extract_features(
          [example], variables=variables, model_name=self.config.feature_extractor, settings=settings,
          progress=False)
      self._features = (key, {"features": features, "hours": hours, "label": -1,
                              "embryo_id": example["embryo_id"], "patient_id": ""})
    return self._features[1]

  def _loader(self, example: dict, observe_hours):
    common = dict(indices=[0], batch_size=1, shuffle=False, num_epochs=1, observe_hours=observe_hours,
                  shard_by_process=False)
    if self.spec.input_kind == "features":
      return pipeline.make_feature_loader([self._feature_row(example)], num_steps=self.num_steps, **common)
    options = train_data.loader_options(self.config, train=False)
    options["worker_count"] = 0
    return pipeline.make_loader([example], augment=False, **common, **options)

  def probability(self, example: dict, observe_hours=None) -> float:
    """P(blast) of `example` (frames up to `observe_hours`), by the run's evaluator."""

    def loader(indices, hours):  # one embryo, on one device: [1, 1, ...] batches
      return ({k: np.asarray(v)[None] for k, v in batch.items()} for batch in self._loader(example, hours))

    evaluator = Evaluator(self.runner, loader, gather=False, temperature=self.temperature)
    try:
      _, probs = evaluator.probabilities(self.state, [0], observe_hours)
    except (flax.errors.ScopeParamShapeError, flax.errors.ScopeParamNotFoundError) as error:
      raise PredictError(f"{self.workdir}/config.json builds model {self.config.model!r}, whose parameters do "
                         f"not fit the checkpoint ({str(error).splitlines()[0][:200]}): that config.json is "
                         "not this run's; restore it (config_history.jsonl keeps every config the run was "
                         "started with)") from None
    return float(probs[0])


def restore_variables(workdir: str, which: str) -> tuple[dict, int]:
  """({'params', 'batch_stats'}, step) of the checkpoint a run evaluates (rundir's choice)."""
  checkpoints = rundir.Checkpoints(workdir, read_only=True)
  try:
    state, meta = checkpoints.restore_for_evaluation(None, which)
  except rundir.CheckpointError as error:
    raise PredictError(str(error)) from error
  finally:
    checkpoints.close()
  return {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}, int(meta["step"])


def predict_embryo(workdir: str, embryo_dir: str, hours=None, checkpoint: str = "") -> dict:
  """{'embryo_id', 'prob_blast', 'by_hours': {h: prob or None}, 'notes': [...]}."""
  workdir, embryo_dir = os.path.expanduser(workdir), os.path.expanduser(embryo_dir)
  return predict_example(Predictor(workdir, checkpoint), read_embryo(embryo_dir), hours)


def predict_example(predictor: Predictor, example: dict, hours=None) -> dict:
  """predict_embryo's result for an embryo already read, by a Predictor already built (one
  restore and compile serve many embryos: the batch form)."""
  notes = check_compatible(example, predictor.config, predictor.info, predictor.spec)
  hours_all = np.asarray(example["hours"])
  note = frames_note(predictor.config, predictor.spec, hours_all.size)
  notes += [note] if note else []
  result = {"embryo_id": example["embryo_id"], "step": predictor.step, "temperature": predictor.temperature,
            "prob_blast": predictor.probability(example), "observed_hours": float(hours_all[-1]),
            "by_hours": {}, "notes": notes}
  cutoffs = hours if hours is not None else predictor.config.early_hours
  for cutoff in sorted(float(h) for h in cutoffs):
    count = int(np.searchsorted(hours_all, cutoff, side="right"))
    if count == 0:
      result["by_hours"][cutoff] = None
      notes.append(f"{cutoff:g} h: no frame at or before it (first frame at {hours_all[0]:.2f} h)")
      continue
    note = frames_note(predictor.config, predictor.spec, count)
    if note:
      notes.append(f"{cutoff:g} h: {note}")
    result["by_hours"][cutoff] = predictor.probability(example, observe_hours=cutoff)
  return result


def format_result(result: dict) -> str:
  lines = [f"embryo {result['embryo_id']}: P(blast) = {result['prob_blast']:.4f} "
           f"(all frames, up to {result['observed_hours']:.1f} h; checkpoint step {result['step']}; "
           + (f"calibrated, temperature {result['temperature']:.3f})" if result.get("temperature", 1.0) != 1.0
              else "uncalibrated)")]
  for cutoff, prob in result["by_hours"].items():
    lines.append(f"  first {cutoff:g} h: " + ("n/a" if prob is None else f"P(blast) = {prob:.4f}"))
  lines += [f"  note: {n}" for n in result["notes"]]
  return "\n".join(lines)


def parse_hours(values) -> Optional[list]:
  """--hours as positive finite numbers (None when not given); ValueError naming the bad one."""
  if not values:
    return None
  hours = []
  for value in values:
    try:
      number = float(value)
    except ValueError:
      raise ValueError(f"--hours={','.join(values)}: {value!r} is not a number of hours (e.g. --hours 30,50,70)") from None
    if not math.isfinite(number) or number <= 0:
      raise ValueError(f"--hours={','.join(values)}: {value!r} must be a positive, finite number of hours")
    hours.append(number)
  return hours


def main(argv) -> None:
  del argv
  FLAGS = flags.FLAGS
  from blastjax import launch  # light: config checks and the console logger

  launch.quiet_libraries()  # orbax's INFO lines about restoring
  compilation_cache.enable_from_flags()
  if FLAGS.report or FLAGS.embryos_dir or FLAGS.out:
    from blastjax import embryo_report  # only with these flags: predict's output is otherwise unchanged
    try:
      sys.exit(embryo_report.run_from_flags(FLAGS))
    except PredictError as error:
      print(f"error: {error}", file=sys.stderr)
      sys.exit(1)
  if not FLAGS.workdir or not FLAGS.embryo_dir:
    print("error: --workdir and --embryo_dir are required", file=sys.stderr)
    sys.exit(2)
  try:
    hours = parse_hours(FLAGS.hours)
  except ValueError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  try:
    print(format_result(predict_embryo(FLAGS.workdir, FLAGS.embryo_dir, hours, FLAGS.checkpoint)))
    if FLAGS.explain:
      from blastjax.explain import report  # only with --explain: predict's output is otherwise unchanged
      print(report.format_explanation(report.explain_embryo(
          FLAGS.workdir, FLAGS.embryo_dir, FLAGS.explain_dir, FLAGS.checkpoint, FLAGS.explain_frames)))
  except PredictError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)


def entry() -> None:
  define_flags()
  app.run(main)


if __name__ == "__main__":
  entry()
