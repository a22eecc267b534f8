"""Fuzzed input for the dataset readers and the builder: random bytes as images, files
cut short, odd sizes and modes, non-UTF-8 names, huge and empty folders. Each must give
a clear error (InvalidEmbryo / LayoutError naming the file) or a reported skip, never a
crash, a hang, or a silently wrong example."""

import io
import os

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from blastjax.data import build, dataset, layouts
from tests.helpers.layouts import encode, jpeg, make_folder_tree, read_all

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


def assert_valid_frame(stored: bytes, size):
  """What check_image returns decodes (tolerantly) as 8-bit grayscale of the given size."""
  from PIL import ImageFile
  previous, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, True
  try:
    with Image.open(io.BytesIO(stored)) as image:
      image.load()
      assert image.mode == "L" and (image.size[1], image.size[0]) == size
  finally:
    ImageFile.LOAD_TRUNCATED_IMAGES = previous


def check_or_invalid(data: bytes):
  report = layouts.Report()
  try:
    stored, size = layouts.check_image(data, "E1", "E1/F0/0001_1h.png", report)
  except layouts.InvalidEmbryo as error:
    assert "E1/F0/0001_1h.png" in str(error)
    return None
  assert_valid_frame(stored, size)
  return report


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_as_images(data):
  check_or_invalid(data)


@FUZZ
@given(st.sampled_from(["PNG", "JPEG", "TIFF", "BMP"]), st.integers(1, 40), st.integers(1, 40),
       st.sampled_from(["L", "RGB", "I;16", "P", "1", "RGBA"]), st.floats(0.0, 1.0))
def test_cut_and_odd_images(fmt, height, width, mode, keep):
  pixels = np.random.default_rng(height * 41 + width).integers(0, 255, (height, width), dtype=np.uint8)
  image = Image.fromarray(pixels)
  if mode == "I;16":
    image = Image.fromarray(pixels.astype(np.uint16) * 257)
  elif mode != "L":
    image = image.convert(mode)
  if fmt == "JPEG" and image.mode not in ("L", "RGB"):
    image = image.convert("L")
  if fmt == "BMP" and image.mode == "I;16":
    fmt = "PNG"  # BMP has no 16-bit grayscale
  buffer = io.BytesIO()
  image.save(buffer, format=fmt)
  data = buffer.getvalue()
  whole = check_or_invalid(data)
  assert whole is not None  # every intact image is accepted
  cut = data[: int(len(data) * keep)]
  report = check_or_invalid(cut)
  if report is not None and cut != data and report.adaptations:
    assert set(report.adaptations) <= {"truncated_jpeg_recovered", f"converted_{image.mode}_to_gray8"}


def test_jpeg_without_end_marker_is_kept_and_counted():
  report = check_or_invalid(jpeg(120, size=(64, 48))[:-2])
  assert report.adaptations["truncated_jpeg_recovered"] == 1


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.sampled_from(["E1", "E2", "E3"]), st.sampled_from(["F0", "F-15"]),
                          st.integers(0, 2), st.sampled_from(["random", "cut", "empty", "rgb", "big"]),
                          st.binary(min_size=1, max_size=64)),
                min_size=1, max_size=4))
def test_folder_layout_under_damage(tmp_path_factory, damages):
  root = make_folder_tree(str(tmp_path_factory.mktemp("fz") / "d"))
  damaged = set()
  for embryo, plane, frame, kind, noise in damages:
    folder = os.path.join(root, embryo, plane)
    path = os.path.join(folder, sorted(os.listdir(folder))[frame])
    data = open(path, "rb").read()
    data = {"random": noise, "cut": data[: len(noise) % max(1, len(data))], "empty": b"",
            "rgb": encode(7, mode="RGB"), "big": encode(7, size=(40, 40))}[kind]
    open(path, "wb").write(data)
    if kind != "rgb":
      damaged.add(embryo)
  try:
    read_all(root)
  except (layouts.InvalidEmbryo, layouts.LayoutError) as error:
    assert root in str(error)
  records, report = read_all(root, skip_invalid=True)
  kept = {r["embryo_id"] for r in records}
  skipped = {s["embryo_id"] for s in report.skipped}
  assert kept | skipped == {"E1", "E2", "E3"} and not kept & skipped
  assert skipped <= damaged  # only damaged embryos are skipped
  for record in records:
    assert record["frames"].shape == (3, 2)
    for data in record["frames"].ravel():
      assert_valid_frame(data, (16, 16))


def test_non_utf8_names_and_empty_and_huge_folders(tmp_path):
  root = make_folder_tree(str(tmp_path / "d"))
  os.makedirs(os.path.join(root.encode(), b"E\xff9", b"F0"))  # a folder name that is not UTF-8
  bad_file = os.path.join(root.encode(), b"E1", b"F0", b"0005_\xfe.png")
  open(bad_file, "wb").write(encode(1))
  os.makedirs(os.path.join(root, "E2", "F0", "empty_subfolder_is_ignored"), exist_ok=True)
  huge = os.path.join(root, "E3")
  for plane in ("F0", "F-15"):
    for t in range(3, 600):
      open(os.path.join(huge, plane, f"{t:04d}_{1.5 + t * 0.25:g}h.png"), "wb").write(encode(t % 200))
  try:
    read_all(root)
    raise AssertionError("expected an error for the folder without a label row")
  except layouts.InvalidEmbryo as error:
    assert "E\\xff9" in str(error) and str(error).encode("utf-8")  # printable
  records, report = read_all(root, skip_invalid=True)
  problems = {s["embryo_id"]: s for s in report.skipped}
  assert "E\\xff9" in problems and "no row in labels.csv" in problems["E\\xff9"]["problem"]
  assert "E1" in problems and "\\xfe" in problems["E1"]["path"]
  assert [r["embryo_id"] for r in records] == ["E2", "E3"]
  assert records[1]["frames"].shape == (600, 2) and np.all(np.diff(records[1]["hours"]) > 0)
  os.makedirs(os.path.join(root, "E4"))
  with open(os.path.join(root, "labels.csv"), "a") as f:
    f.write("E4,P9,0\n")
  _, report = read_all(root, skip_invalid=True)
  assert {s["embryo_id"]: s["problem"] for s in report.skipped}["E4"].startswith("no frames")


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=1, max_size=300), st.booleans())
def test_cli_build_never_crashes(tmp_path_factory, noise, skip_invalid):
  base = tmp_path_factory.mktemp("cli")
  root = make_folder_tree(str(base / "in"))
  open(os.path.join(root, "E2", "F-15", "0001_1.75h.png"), "wb").write(noise)
  (base / "labels_extra").write_bytes(noise)
  with open(os.path.join(root, "labels.csv"), "ab") as f:
    f.write(b"E5,P1," + noise.replace(b"\n", b" ").replace(b"\r", b" ").replace(b"\x00", b" ") + b"\n")
  args = ["--config", "folder", "--manual_dir", root, "--data_dir", str(base / "out")]
  code = build.main(args + (["--skip_invalid"] if skip_invalid else []))
  assert code in (0, 2)
  if code == 0:
    source = dataset.load_source("folder", data_dir=str(base / "out"))
    assert {source[i]["embryo_id"] for i in range(len(source))} <= {"E1", "E2", "E3"}


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(max_size=80), st.text(max_size=80), st.binary(max_size=40))
def test_gomez_csv_files_under_fuzz(tmp_path_factory, times_text, phases_text, raw):
  from tests.helpers.layouts import make_gomez_tree
  root = make_gomez_tree(str(tmp_path_factory.mktemp("gz") / "g"))
  with open(os.path.join(root, "embryo_dataset_time_elapsed", "AA83-8_timeElapsed.csv"), "w",
            encoding="utf-8", errors="surrogateescape") as f:
    f.write(times_text)
  with open(os.path.join(root, "embryo_dataset_annotations", "AA83-8_phases.csv"), "w",
            encoding="utf-8", errors="surrogateescape") as f:
    f.write(phases_text)
  with open(os.path.join(root, "embryo_dataset_time_elapsed", "GS490-_6_timeElapsed.csv"), "wb") as f:
    f.write(b"frame_index,time\n" + raw)
  try:
    read_all(root, reader=layouts.read_gomez2022)
  except layouts.InvalidEmbryo as error:
    assert error.embryo_id in ("AA83-8", "GS490-_6")
    str(error).encode("utf-8")  # printable
  records, report = read_all(root, skip_invalid=True, reader=layouts.read_gomez2022)
  assert "AA83-7" in {r["embryo_id"] for r in records}
  for record in records:
    assert record["frames"].shape[0] == record["hours"].size > 0
    assert np.all(np.diff(record["hours"]) > 0)
    assert all(0 <= v < record["hours"].size for v in record["events"].values())
