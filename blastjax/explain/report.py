"""`python -m blastjax.predict ... --explain`: the saliency of one embryo folder, on disk.

Writes into the output folder (default <workdir>/explain/<embryo_id>):
  frames.csv        position, hours, IG attribution and share of every frame the model saw
  explain.json      the same with the method, layer, baseline, scores and completeness
  frame_<i>_<h>h.png  the key frames (largest |IG|) with the Grad-CAM (conv nets) or
                    attention-rollout (ViT) map over them, and the IG pixel map beside
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from blastjax.explain.gradcam import grad_cam
from blastjax.explain.integrated import frame_shares, integrated_gradients
from blastjax.explain.rollout import attention_rollout
from blastjax.explain.scores import eval_variables
from blastjax.models.vit import VisionTransformer

DISPLAY_SIZE = 192  # overlay side in pixels (nearest-neighbour upsampling of small inputs)


def spatial_map(model, variables: dict, spec, x, mask, layer=None):
  """(method, layer, [T, H, W] maps or None) of the first example: rollout for ViTs,
  Grad-CAM for conv nets, none for features models (IG per frame only)."""
  if spec.input_kind == "features":
    return "none", "", None
  if isinstance(model, VisionTransformer):
    return "attention_rollout", "", attention_rollout(model, variables, x)[:1]
  cam = grad_cam(model, variables, spec, x, mask, layer=layer)
  maps = cam.maps[0] if cam.maps.ndim == 4 else cam.maps[:1]
  return "grad_cam", cam.layer, maps


def display_frames(x, input_kind: str) -> np.ndarray:
  """[T, H, W] gray frames in [0, 1] of the first example (channels averaged, the middle
  focal plane), stretched to the frame's range."""
  frames = np.asarray(x[0], np.float32)
  if input_kind == "image":
    frames = frames[None]
  if input_kind == "video_focal":
    frames = frames[:, frames.shape[1] // 2]
  frames = frames.mean(-1)
  low = frames.min(axis=(1, 2), keepdims=True)
  high = frames.max(axis=(1, 2), keepdims=True)
  return (frames - low) / np.maximum(high - low, 1e-6)


def overlay(gray: np.ndarray, heat: np.ndarray) -> Image.Image:
  """A gray frame with a red-to-yellow heat map blended where the map is high."""
  heat = np.clip(heat, 0.0, 1.0)
  base = np.repeat(gray[..., None], 3, -1)
  colour = np.stack([np.ones_like(heat), heat, np.zeros_like(heat)], -1)
  alpha = 0.6 * heat[..., None]
  image = Image.fromarray(np.uint8(255 * ((1 - alpha) * base + alpha * colour)))
  return image.resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.NEAREST)


def _normalised(values: np.ndarray) -> np.ndarray:
  peak = np.abs(values).max()
  return np.abs(values) / peak if peak > 0 else np.zeros_like(values)


def write_key_frames(out_dir: str, frames, hours, maps, ig_pixels, keys) -> list:
  """One PNG per key frame: [spatial map | |IG| map] side by side; returns the paths."""
  paths = []
  for t in keys:
    panels = []
    if maps is not None:
      panels.append(overlay(frames[t], maps[min(t, len(maps) - 1)]))
    if ig_pixels is not None:
      panels.append(overlay(frames[t], _normalised(ig_pixels[t])))
    if not panels:
      continue
    sheet = Image.new("RGB", (DISPLAY_SIZE * len(panels), DISPLAY_SIZE))
    for i, panel in enumerate(panels):
      sheet.paste(panel, (i * DISPLAY_SIZE, 0))
    path = os.path.join(out_dir, f"frame_{t:03d}_{hours[t]:.1f}h.png")
    sheet.save(path)
    paths.append(path)
  return paths


def explain_batch(model, variables: dict, spec, batch: dict, key_frames: int = 3, steps: int = 32,
                  baseline: str = "zeros", layer=None) -> dict:
  """Attributions of the first row of a loader batch: IG per frame and the spatial maps."""
  x, mask = spec.inputs(batch)
  x, mask = x[:1], None if mask is None else mask[:1]
  ig = integrated_gradients(model, variables, spec, x, mask, baseline=baseline, steps=steps)
  hours = np.asarray(batch["hours"][0], np.float32).reshape(-1)
  valid = np.ones(hours.size, bool) if mask is None else ~np.asarray(mask[0], bool)
  per_frame, shares = ig.per_frame[0], frame_shares(ig.per_frame[0])
  order = [int(t) for t in np.argsort(-np.abs(per_frame), kind="stable") if valid[t]]
  method, layer_name, maps = spatial_map(model, variables, spec, x, mask, layer)
  return {"score": float(ig.score[0]), "baseline_score": float(ig.baseline_score[0]),
          "completeness_error": float(ig.completeness_error[0]), "baseline": ig.baseline, "steps": steps,
          "method": method, "layer": layer_name,
          "frames": [{"position": t, "hours": float(hours[t]), "attribution": float(per_frame[t]),
                      "share": float(shares[t]), "padding": bool(not valid[t])} for t in range(hours.size)],
          "top_frames": order[:key_frames], "_maps": maps,
          "_pixels": None if ig.pixel_maps is None else ig.pixel_maps[0], "_x": x}


def explain_embryo(workdir: str, embryo_dir: str, out_dir: str = "", checkpoint: str = "", key_frames: int = 3,
                   steps: int = 32, baseline: str = "zeros", layer=None) -> dict:
  """Explains a run's prediction of one embryo folder and writes the files (module docstring)."""
  from blastjax import predict  # the command level: predict reads the run and the folder

  workdir, embryo_dir = os.path.expanduser(workdir), os.path.expanduser(embryo_dir)
  predictor = predict.Predictor(workdir, checkpoint)
  example = predict.read_embryo(embryo_dir)
  predict.check_compatible(example, predictor.config, predictor.info, predictor.spec)
  state, _ = predict.restore_variables(workdir, checkpoint or predictor.config.eval_checkpoint)
  batches = list(predictor._loader(example, None))
  result = explain_batch(predictor.model, eval_variables(state), predictor.spec, batches[0], key_frames, steps,
                         baseline, layer)
  result["embryo_id"] = example["embryo_id"]
  result["windows"] = sum(int(np.asarray(b["valid"]).sum()) for b in batches)
  out_dir = os.path.expanduser(out_dir) or os.path.join(workdir, "explain", str(example["embryo_id"]))
  os.makedirs(out_dir, exist_ok=True)
  kind = predictor.spec.input_kind
  frames = None if kind == "features" else display_frames(result.pop("_x"), kind)
  result.pop("_x", None)
  hours = [f["hours"] for f in result["frames"]]
  maps, pixels = result.pop("_maps"), result.pop("_pixels")
  result["images"] = [] if frames is None else write_key_frames(out_dir, frames, hours, maps, pixels,
                                                                result["top_frames"])
  result["out_dir"] = out_dir
  write_tables(out_dir, result)
  return result


def write_tables(out_dir: str, result: dict) -> None:
  with open(os.path.join(out_dir, "frames.csv"), "w") as f:
    f.write("position,hours,attribution,share,padding\n")
    for row in result["frames"]:
      f.write(f"{row['position']},{row['hours']:.4f},{row['attribution']:.6g},{row['share']:.6g},"
              f"{int(row['padding'])}\n")
  with open(os.path.join(out_dir, "explain.json"), "w") as f:
    json.dump(result, f, indent=2)


def format_explanation(result: dict) -> str:
  diff = result["score"] - result["baseline_score"]
  total = sum(f["attribution"] for f in result["frames"])
  lines = [f"explain {result['embryo_id']}: P(blast) logit {result['score']:.4f}; integrated gradients from "
           f"the {result['baseline']!r} baseline ({result['steps']} steps): frames sum to {total:.4f} of "
           f"f(x) - f(baseline) = {diff:.4f}"]
  lines.append("  top frames by |IG|: " + ", ".join(
      f"{result['frames'][t]['hours']:.1f} h (share {result['frames'][t]['share']:.3f}, "
      f"{result['frames'][t]['attribution']:+.4f})" for t in result["top_frames"]))
  if result["method"] != "none":
    lines.append(f"  maps: {result['method']}" + (f" at layer {result['layer']}" if result["layer"] else "")
                 + f", {len(result['images'])} key frames")
  if result["windows"] > 1:
    lines.append(f"  note: explained the first of {result['windows']} windows")
  lines.append(f"  wrote {result['out_dir']}")
  return "\n".join(lines)
