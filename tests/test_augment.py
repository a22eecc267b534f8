"""Decoding and augmentation of single frames (the per-sequence behaviour is tested in
test_pipeline.py)."""

import io

import numpy as np
import pytest
from PIL import Image

from blastjax.data import augment


def _encode(array, fmt="PNG", **kw):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt, **kw)
  return buffer.getvalue()


def _gradient(height=60, width=80):
  yy, xx = np.mgrid[:height, :width]
  return (xx * 2 + yy).astype(np.uint8)  # 0..217, no wrap-around


def test_as_config_from_dict_and_errors():
  config = augment.as_config({"crop": "multiscale", "scales": [1.0, 0.5], "rotation_degrees": 0})
  assert config.crop == "multiscale" and config.scales == (1.0, 0.5)
  assert augment.as_config(None) == augment.AugmentConfig()
  with pytest.raises(ValueError, match="unknown field.*'rotate'"):
    augment.as_config({"rotate": 3})
  with pytest.raises(ValueError, match="crop='zoom'"):
    augment.AugmentConfig(crop="zoom")
  with pytest.raises(ValueError, match="random_scale"):
    augment.AugmentConfig(random_scale=1.5)


def test_draw_without_rng_is_center_view():
  params = augment.draw(None, augment.AugmentConfig(center_scale=0.9))
  assert params == augment.Params(scale=0.9)


def test_multiscale_and_corner_draws_follow_hara():
  rng = np.random.default_rng(0)
  multiscale = [augment.draw(rng, augment.AugmentConfig(crop="multiscale")) for _ in range(200)]
  assert {round(p.scale, 6) for p in multiscale} == {round(s, 6) for s in augment.HARA_SCALES}
  corner = [augment.draw(rng, augment.AugmentConfig(crop="corner")) for _ in range(200)]
  assert {p.offset for p in corner} == {(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5)}
  angles = [p.angle for p in multiscale]
  assert min(angles) < -90 and max(angles) > 90
  assert 0.3 < np.mean([p.hflip for p in multiscale]) < 0.7


def test_crop_box():
  assert augment.crop_box(80, 60, augment.Params()) == (10.0, 0.0, 70.0, 60.0)
  assert augment.crop_box(80, 60, augment.Params(scale=0.5, offset=(0.0, 1.0))) == (0.0, 30.0, 30.0, 60.0)
  assert augment.crop_box(80, 60, augment.Params(scale=0.5, offset=(1.0, 0.0))) == (50.0, 0.0, 80.0, 30.0)


def test_render_center_crop_resizes_short_side_square():
  frame = _gradient()
  out = augment.render(_encode(frame), augment.Params(), 30)
  assert out.shape == (30, 30) and out.dtype == np.float32
  expected = np.asarray(Image.fromarray(frame[:, 10:70]).resize((30, 30), Image.BILINEAR), np.float32) / 255
  np.testing.assert_allclose(out, expected, atol=1.5 / 255)


def test_render_flip_and_photometric():
  data = _encode(_gradient())
  plain = augment.render(data, augment.Params(), 24)
  np.testing.assert_array_equal(augment.render(data, augment.Params(hflip=True), 24), plain[:, ::-1])
  np.testing.assert_array_equal(augment.render(data, augment.Params(vflip=True), 24), plain[::-1])
  brighter = augment.render(data, augment.Params(brightness=1.2), 24)
  np.testing.assert_allclose(brighter, np.clip(plain * 1.2, 0, 1), atol=1e-6)
  flat = augment.render(data, augment.Params(contrast=0.5), 24)
  assert flat.std() == pytest.approx(0.5 * plain.std(), rel=0.02)


def test_render_rotation_keeps_size_and_fills_with_mean():
  frame = np.zeros((40, 40), np.uint8)
  frame[:, 20:] = 200
  out = augment.render(_encode(frame), augment.Params(angle=45.0), 40)
  assert out.shape == (40, 40)
  corner = out[0, 0]
  assert 0.2 < corner < 0.6  # filled with the mean, not black or white


def test_render_16_bit_rgb_and_float_frames():
  sixteen = np.full((32, 32), 65535, np.uint16)
  sixteen[:16] = 0
  out = augment.render(_encode(sixteen), augment.Params(), 16)
  assert out.max() == pytest.approx(1.0) and out.min() == pytest.approx(0.0)
  rgb = np.zeros((32, 32, 3), np.uint8)
  rgb[..., 1] = 255
  out = augment.render(_encode(rgb), augment.Params(), 16)
  np.testing.assert_allclose(out, 150 / 255, atol=1 / 255)  # ITU-R 601-2 luma of pure green


def test_truncated_jpeg_decodes():
  frame = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
  data = _encode(frame, "JPEG", quality=90)
  cut = data[: int(len(data) * 0.7)]
  out = augment.render(cut, augment.Params(), 32)
  assert out.shape == (32, 32) and np.isfinite(out).all()
  assert not Image.open(io.BytesIO(cut)).format is None
  from PIL import ImageFile
  assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupt_bytes_raise():
  with pytest.raises(OSError):
    augment.render(b"not an image at all", augment.Params(), 8)


def test_jpeg_draft_matches_full_decode():
  yy, xx = np.mgrid[:500, :500]
  frame = (127 + 100 * np.sin(xx / 25.0) * np.cos(yy / 31.0)).astype(np.uint8)
  data = _encode(frame, "JPEG", quality=95)
  drafted = augment.render(data, augment.Params(), 112)
  assert augment.decode(data, augment.Params(), 112).size == (125, 125)  # 1/4-scale DCT
  full = np.asarray(Image.open(io.BytesIO(data)).convert("L").resize((112, 112), Image.BILINEAR),
                    np.float32) / 255
  assert np.abs(drafted - full).mean() < 0.01


def test_rotated_crop_matches_resize_and_rot90():
  yy, xx = np.mgrid[:100, :120]
  frame = Image.fromarray((60 + 40 * np.sin(xx / 9.0) * np.cos(yy / 13.0)).astype(np.uint8))
  plain = np.asarray(frame.resize((96, 96), Image.BILINEAR, box=(20, 10, 100, 90)), np.float32)
  straight = np.asarray(augment._rotated_crop(frame, (20, 10, 80), 0.0, 96), np.float32)
  assert np.abs(straight - plain).mean() < 1.0
  quarter = np.asarray(augment._rotated_crop(frame, (20, 10, 80), 90.0, 96), np.float32)
  assert min(np.abs(quarter - np.rot90(plain, k)).mean() for k in (1, 3)) < 1.0


def test_png_frames_are_box_reduced_before_resampling():
  frame = np.zeros((500, 500), np.uint8)
  frame[::2] = 255  # stripes finer than the output: must average, not alias
  out = augment.render(_encode(frame), augment.Params(angle=10.0), 112)
  assert abs(float(out[30:80, 30:80].mean()) - 0.5) < 0.05
  assert out[30:80, 30:80].std() < 0.1


def test_rotation_step_gives_exact_quarter_turns():
  config = augment.AugmentConfig(rotation_step=90.0)
  rng = np.random.default_rng(0)
  assert {augment.draw(rng, config).angle for _ in range(100)} == {-180.0, -90.0, 0.0, 90.0, 180.0}
  data = _encode(_gradient())
  plain = augment.render(data, augment.Params(), 24)
  np.testing.assert_array_equal(augment.render(data, augment.Params(angle=90.0), 24), np.rot90(plain))
  np.testing.assert_array_equal(augment.render(data, augment.Params(angle=-180.0), 24), np.rot90(plain, 2))
