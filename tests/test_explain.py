"""blastjax.explain: Grad-CAM at a named layer (2D, (2+1)D, per-frame 2D), attention
rollout, integrated gradients over frames, the sanity checks on a trained smoke model,
and `predict --explain`."""

import csv
import os
import subprocess

import jax
import numpy as np
import pytest

from blastjax import explain, main, models, predict, train_data
from blastjax.data import augment as augment_lib
from blastjax.data import pipeline, synthetic
from blastjax.explain.gradcam import activation_and_gradient
from blastjax.models import registry
from blastjax.models.vit import VisionTransformer
from blastjax.testing import tiny as th
from blastjax.train_step import create_model
from tests.helpers.layouts import write_embryo_folder


def _random_model(name, shape, **kwargs):
  spec = registry.get_spec(name)
  model = models.create(name, **kwargs)
  x = np.random.RandomState(0).randn(*shape).astype(np.float32)
  mask = None if spec.input_kind == "image" else np.zeros(shape[:2], bool)
  variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False, mask=mask))(x)
  return model, spec, dict(variables), x, mask


def _head_gradient(variables, positions):
  """d (z_blast - z_other) / d feature map of a net ending mean-pool -> fc."""
  kernel = np.asarray(variables["params"]["fc"]["kernel"])
  return (kernel[:, 1] - kernel[:, 0]) / positions


# ---------------------------------------------------------------------------- Grad-CAM


def test_grad_cam_resnet18_takes_the_activation_and_gradient_of_the_named_layer():
  model, spec, variables, x, mask = _random_model("resnet18", (2, 64, 64, 3))
  assert explain.default_layer(model, variables, x) == "layer4_1"
  cam = explain.grad_cam(model, variables, spec, x)
  feature_map = model.apply(variables, x, train=False, return_feature_map=True)
  np.testing.assert_allclose(cam.activation, feature_map, rtol=1e-5, atol=1e-5)
  expected = np.broadcast_to(_head_gradient(variables, 4), cam.gradient.shape)
  np.testing.assert_allclose(cam.gradient, expected, rtol=1e-4, atol=1e-7)
  logits = model.apply(variables, x, train=False)
  np.testing.assert_allclose(cam.score, logits[:, 1] - logits[:, 0], rtol=1e-5, atol=1e-6)
  assert cam.maps.shape == (2, 64, 64) and cam.raw.shape == (2, 1, 2, 2)
  assert np.allclose(cam.maps.reshape(2, -1).max(1), 1.0) and cam.maps.min() >= 0.0
  with pytest.raises(ValueError, match="not found"):
    explain.grad_cam(model, variables, spec, x, layer="layer9_0")


def test_grad_cam_r2plus1d_keeps_the_time_axis():
  model, spec, variables, x, mask = _random_model("r2plus1d_18", (1, 8, 16, 16, 3))
  assert explain.default_layer(model, variables, x, mask) == "layer3"  # layer4 is 1x1 at 16 px
  _, act, grad = activation_and_gradient(model, variables, spec, x, mask, "layer4")
  assert act.shape == (1, 1, 1, 1, 512)
  np.testing.assert_allclose(grad, np.broadcast_to(_head_gradient(variables, 1), grad.shape), rtol=1e-4, atol=1e-7)
  cam = explain.grad_cam(model, variables, spec, x, mask)  # layer3: T' = 2 time positions
  assert cam.raw.shape == (1, 2, 2, 2) and cam.maps.shape == (1, 8, 16, 16)
  assert not np.allclose(cam.maps[0, 0], cam.maps[0, -1])  # a map per frame, not one for all


# ---------------------------------------------------------------------------- attention rollout


def _small_vit():
  model = VisionTransformer(num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, image_size=32)
  x = np.random.RandomState(1).randn(2, 32, 32, 3).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), x)
  return model, jax.tree.map(np.array, dict(variables)), x


def test_rollout_averages_heads_adds_identity_and_multiplies_over_layers():
  rng = np.random.RandomState(0)
  attentions = rng.rand(2, 1, 3, 5, 5)
  attentions /= attentions.sum(-1, keepdims=True)
  mixed = [(a[0].mean(0) + np.eye(5)) / 2.0 for a in attentions]  # rows of mean + I sum to 2
  np.testing.assert_allclose(explain.rollout_matrix(attentions)[0], mixed[1] @ mixed[0], rtol=1e-12)
  model, variables, x = _small_vit()
  captured = explain.attention_maps(model, variables, x)
  assert captured.shape == (2, 2, 4, 5, 5)
  np.testing.assert_allclose(np.asarray(captured).sum(-1), 1.0, rtol=1e-5)
  maps = explain.attention_rollout(model, variables, x)
  assert maps.shape == (2, 32, 32) and np.allclose(maps.reshape(2, -1).max(1), 1.0)


def test_rollout_of_uniform_attention_is_uniform():
  model, variables, x = _small_vit()
  for i in range(2):
    projection = variables["params"]["encoder"][f"encoder_layer_{i}"]["self_attention"]["in_proj"]
    projection["kernel"][:, :64] = 0.0  # q and k: every logit 0, attention uniform
    projection["bias"][:64] = 0.0
  np.testing.assert_allclose(explain.attention_rollout(model, variables, x), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match="VisionTransformer"):
    explain.attention_maps(th.TinyCNN(), {}, x)


# ---------------------------------------------------------------------------- integrated gradients


def test_integrated_gradients_complete_and_per_frame():
  model = th.TinyCNN(features=4, dropout=0.0)
  spec = registry.get_spec("tiny_video")
  x = np.random.RandomState(2).randn(2, 5, 16, 16, 1).astype(np.float32)
  mask = np.zeros((2, 5), bool)
  mask[1, 3:] = True
  variables = dict(model.init(jax.random.PRNGKey(0), x, mask=mask))
  errors = {}
  for steps in (1, 64):
    ig = explain.integrated_gradients(model, variables, spec, x, mask, steps=steps, score="probability")
    errors[steps] = ig.completeness_error
  difference = np.abs(ig.score - ig.baseline_score)
  assert np.all(errors[64] <= 1e-3 * difference + 1e-6), (errors, difference)
  assert np.all(errors[64] < errors[1])
  np.testing.assert_allclose(ig.per_frame.sum(1), ig.attributions.reshape(2, -1).sum(1), rtol=1e-5)
  assert ig.per_frame.shape == (2, 5) and ig.pixel_maps.shape == (2, 5, 16, 16)
  assert np.all(ig.per_frame[1, 3:] == 0.0)  # padding frames take the input as baseline
  np.testing.assert_allclose(explain.frame_shares(ig.per_frame).sum(1), 1.0, rtol=1e-6)
  mean = explain.integrated_gradients(model, variables, spec, x, mask, baseline="mean", steps=32)
  assert np.all(mean.completeness_error <= 1e-2 * np.abs(mean.score - mean.baseline_score) + 1e-5)


def test_integrated_gradients_of_an_image_model_and_one_output_heads():
  model, spec, variables, x, _ = _random_model("resnet18", (1, 32, 32, 3))
  ig = explain.integrated_gradients(model, variables, spec, x, steps=4, chunk=4)
  assert ig.per_frame.shape == (1, 1) and ig.pixel_maps.shape == (1, 1, 32, 32)
  assert ig.completeness_error[0] <= 1e-3 * abs(ig.score[0] - ig.baseline_score[0]) + 1e-5
  with pytest.raises(ValueError, match="no time axis"):
    explain.integrated_gradients(model, variables, spec, x, baseline="mean")
  one = th.TinyCNN(num_classes=1, per_step=True, dropout=0.0)
  clips = np.random.RandomState(3).randn(1, 3, 16, 16, 1).astype(np.float32)
  mask = np.array([[False, False, True]])
  one_vars = one.init(jax.random.PRNGKey(0), clips, mask=mask)
  logits = one.apply(one_vars, clips, mask=mask)
  score = explain.blast_score(registry.get_spec("tiny_per_step"), logits, mask)
  np.testing.assert_allclose(score, logits[:, 1, 0])  # the last valid step's one logit


# ---------------------------------------------------------------------------- sanity checks


def test_synthetic_masks_cover_the_rendered_embryo():
  sim = synthetic.SimulatorConfig(image_size=128, num_embryos=4, num_patients=2)
  plan = synthetic.plan_embryos(sim)[0]
  frame = synthetic.render_planes(plan, 30.0, (0,), 128, 0)[0].astype(np.float32)
  mask = explain.synthetic_embryo_masks(plan.embryo_id, [30.0], sim, 128)[0]
  ring = frame >= np.quantile(frame, 0.97)  # the bright zona ring
  assert ring[mask].sum() / ring.sum() > 0.97
  assert 0.5 < mask.mean() < 0.6  # pi * 0.42^2


def test_saliency_in_mask_is_the_area_share_for_blind_maps():
  mask = np.zeros((4, 16, 16), bool)
  mask[:, 4:12, 4:12] = True
  constant = explain.saliency_in_mask(np.ones((4, 16, 16)), mask)
  assert constant["share"] == pytest.approx(constant["baseline"]) and constant["ratio"] == pytest.approx(1.0)
  noise = explain.saliency_in_mask(np.random.RandomState(0).rand(4, 16, 16), mask)
  assert noise["ratio"] == pytest.approx(1.0, abs=0.1)
  assert explain.saliency_in_mask(mask * 1.0, mask)["share"] == 1.0
  with pytest.raises(ValueError, match="zero"):
    explain.saliency_in_mask(np.zeros((16, 16)), mask[0])


def test_rank_correlation():
  a = np.arange(10.0)
  assert explain.rank_correlation(a, a ** 3) == pytest.approx(1.0)
  assert explain.rank_correlation(a, -a) == pytest.approx(-1.0)
  assert np.isnan(explain.rank_correlation(a, np.ones(10)))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  """tiny_video (8 features) trained 36 steps on the small synthetic dataset, and 16 of
  its embryos as one evaluation batch with their embryo masks."""
  data_dir = th.build_small_dataset(str(tmp_path_factory.mktemp("data")))
  config = th.tiny_config("tiny_video", data_dir=data_dir, num_steps=36, validation_fraction=0.0,
                          eval_every_steps=1000, checkpoint_every_steps=1000, early_hours=(),
                          model_kwargs={"features": 8}, learning_rate=3e-3)
  workdir = str(tmp_path_factory.mktemp("run"))
  main.run(config, workdir, "train")  # writes config.json, which predict reads
  state, _ = predict.restore_variables(workdir, "last")
  model, spec = create_model(config)
  source = train_data.open_source(config)
  options = dict(train_data.loader_options(config, train=False), worker_count=0)
  loader = pipeline.make_loader(source, indices=list(range(16)), batch_size=16, num_epochs=1,
                                shard_by_process=False, **options)
  batch = next(iter(loader))
  x, mask = spec.inputs(batch)
  sim = synthetic.SimulatorConfig(**th.SMALL_DATASET)
  center_scale = augment_lib.as_config(options["augment_config"]).center_scale
  masks = np.stack([explain.synthetic_embryo_masks(str(source[int(i)]["embryo_id"]), hours, sim,
                                                   config.image_size, center_scale)
                    for i, hours in zip(batch["example_index"], batch["hours"])])
  variables = explain.eval_variables(state)
  randomised = explain.randomised_variables(model, x, mask, seed=1)
  return dict(workdir=workdir, source=source, model=model, spec=spec, variables=variables,
              randomised=randomised, x=x, mask=mask, masks=masks)


def test_trained_saliency_sits_on_the_embryo(smoke):
  cam = explain.grad_cam(smoke["model"], smoke["variables"], smoke["spec"], smoke["x"], smoke["mask"])
  assert cam.layer == "bn1" and cam.maps.shape == smoke["masks"].shape
  trained = explain.saliency_in_mask(cam.maps, smoke["masks"])
  blank = explain.grad_cam(smoke["model"], smoke["randomised"], smoke["spec"], smoke["x"], smoke["mask"])
  untrained = explain.saliency_in_mask(blank.maps, smoke["masks"])
  print(f"in-mask share: trained {trained['share']:.3f}, randomised {untrained['share']:.3f}, "
        f"area {trained['baseline']:.3f}")
  assert trained["share"] > trained["baseline"] + 0.03
  assert trained["share"] > untrained["share"]


def test_randomisation_check_separates_model_saliency_from_input_echo(smoke):
  model, spec, x, mask = smoke["model"], smoke["spec"], smoke["x"], smoke["mask"]
  cam = lambda variables: explain.grad_cam(model, variables, spec, x, mask).maps
  result = explain.randomisation_check(cam, smoke["variables"], smoke["randomised"])
  print(f"randomisation: Grad-CAM rank correlation {result['rank_correlation']:.3f}")
  assert result["passes"]
  echo = explain.randomisation_check(lambda variables: np.abs(x), smoke["variables"], smoke["randomised"])
  assert echo["rank_correlation"] == pytest.approx(1.0) and not echo["passes"]
  constant = explain.randomisation_check(lambda variables: np.ones(3), smoke["variables"], smoke["randomised"])
  assert not constant["passes"]


def test_predict_explain_writes_frames_and_maps(smoke, tmp_path):
  example = smoke["source"][0]
  folder = write_embryo_folder(str(tmp_path), example)
  out_dir = str(tmp_path / "explained")
  done = subprocess.run(th.predict_command("--workdir", smoke["workdir"], "--embryo_dir", folder, "--explain",
                                           "--explain_dir", out_dir, "--explain_frames", "2"),
                        env=th.subprocess_env(), capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert f"embryo {example['embryo_id']}: P(blast) = " in done.stdout
  assert "top frames by |IG|: " in done.stdout and "grad_cam at layer bn1" in done.stdout
  with open(os.path.join(out_dir, "frames.csv")) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 4 and sum(float(r["share"]) for r in rows) == pytest.approx(1.0, abs=1e-4)
  assert len([n for n in os.listdir(out_dir) if n.endswith(".png")]) == 2
  assert os.path.exists(os.path.join(out_dir, "explain.json"))
