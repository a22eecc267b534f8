"""Readers of the on-disk layouts: the folder layout, Gomez 2022 and its quirks, bad input.

Also home of the fabricators of tiny trees that test_dataset_builder and test_data_fuzz use.
"""

import io
import os

import numpy as np
import pytest
from PIL import Image

from blastjax.data import layouts
from tests.helpers.layouts import encode, jpeg, make_folder_tree, make_gomez_tree, read_all


# ------------------------------------------------------------------- folder layout


def test_folder_round_trip_keeps_bytes_and_times(tmp_path):
  root = make_folder_tree(str(tmp_path / "d"), split=True)
  records, report = read_all(root)
  assert [r["embryo_id"] for r in records] == ["E1", "E2", "E3"]
  assert [r["label"] for r in records] == [1, 0, 1] and records[2]["patient_id"] == "P2"
  first = records[0]
  assert first["frames"].shape == (3, 2) and first["focal_planes"].tolist() == [-15, 0]
  np.testing.assert_allclose(first["hours"], [1.5, 1.75, 2.0])
  with open(os.path.join(root, "E1", "F0", "0002_2h.png"), "rb") as f:
    assert first["frames"][2, 1] == f.read()
  assert [r["split"] for r in records] == ["test", "train", "test"]
  assert report.skipped == [] and not report.adaptations


def test_folder_times_csv(tmp_path):
  records, _ = read_all(make_folder_tree(str(tmp_path / "d"), times_csv=True))
  np.testing.assert_allclose(records[1]["hours"], [1.5, 1.75, 2.0])


def _break(root, case):
  """Applies one bad-input case to a valid tree; returns the text the error must contain."""
  e3 = os.path.join(root, "E3")
  if case == "corrupt_image":
    with open(os.path.join(e3, "F0", "0001_1.75h.png"), "wb") as f:
      f.write(b"\x89PNG not really")
    return "0001_1.75h.png"
  if case == "truncated_png":
    path = os.path.join(e3, "F0", "0001_1.75h.png")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    return "0001_1.75h.png"
  if case == "missing_plane":
    for name in os.listdir(os.path.join(e3, "F-15")):
      os.remove(os.path.join(e3, "F-15", name))
    os.rmdir(os.path.join(e3, "F-15"))
    return "focal plane folder missing"
  if case == "unreadable_time":
    os.rename(os.path.join(e3, "F0", "0001_1.75h.png"), os.path.join(e3, "F0", "0001_soon.png"))
    return "0001_soon.png"
  if case == "bad_times_csv":
    for plane in ("F0", "F-15"):
      for name in os.listdir(os.path.join(e3, plane)):
        os.rename(os.path.join(e3, plane, name), os.path.join(e3, plane, name.split("_")[0] + ".png"))
    with open(os.path.join(e3, "times.csv"), "w") as f:
      f.write("frame,hours\n0,1.5\n1,abc\n2,2.0\n")
    return "times.csv"
  if case == "bad_label":
    text = open(os.path.join(root, "labels.csv")).read().replace("E3,P2,1", "E3,P2,maybe")
    open(os.path.join(root, "labels.csv"), "w").write(text)
    return "'maybe'"
  if case == "no_label_row":
    os.makedirs(os.path.join(root, "E9", "F0"))
    return "E9"
  if case == "no_folder":
    with open(os.path.join(root, "labels.csv"), "a") as f:
      f.write("E7,P3,blast\n")
    return "E7"
  if case == "duplicate_id":
    with open(os.path.join(root, "labels.csv"), "a") as f:
      f.write("E3,P2,0\n")
    return "duplicate embryo_id"
  if case == "no_frames":
    for plane in ("F0", "F-15"):
      for name in os.listdir(os.path.join(e3, plane)):
        os.remove(os.path.join(e3, plane, name))
    return "no frames"
  if case == "missing_frame_in_plane":
    os.remove(os.path.join(e3, "F-15", "0002_2h.png"))
    return "lacks frame"
  if case == "size_mismatch":
    open(os.path.join(e3, "F0", "0002_2h.png"), "wb").write(encode(3, size=(20, 16)))
    return "differs"
  raise AssertionError(case)


BAD_CASES = ["corrupt_image", "truncated_png", "missing_plane", "unreadable_time", "bad_times_csv",
             "bad_label", "no_label_row", "no_folder", "duplicate_id", "no_frames",
             "missing_frame_in_plane", "size_mismatch"]
SKIPPED_ID = {"no_label_row": "E9", "no_folder": "E7"}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_stops_with_the_file_or_skips_and_reports(tmp_path, case):
  root = make_folder_tree(str(tmp_path / "d"))
  expected = _break(root, case)
  with pytest.raises((layouts.InvalidEmbryo, layouts.LayoutError)) as error:
    read_all(root)
  assert expected in str(error.value)
  records, report = read_all(root, skip_invalid=True)
  skipped_id = SKIPPED_ID.get(case, "E3")
  assert [s["embryo_id"] for s in report.skipped] == [skipped_id]
  assert expected in " ".join(report.skipped[0].values())
  kept = {r["embryo_id"] for r in records}
  assert kept == {"E1", "E2", "E3"} - {skipped_id}


def test_layout_errors_for_the_whole_dataset(tmp_path):
  with pytest.raises(layouts.LayoutError, match="labels.csv not found"):
    read_all(tmp_path)
  (tmp_path / "labels.csv").write_text("embryo,label\nE1,1\n")
  with pytest.raises(layouts.LayoutError, match="missing column"):
    read_all(tmp_path)
  with pytest.raises(layouts.LayoutError, match="not a directory"):
    read_all(tmp_path / "nowhere")


def test_truncated_jpeg_kept_and_counted_other_modes_converted(tmp_path):
  report = layouts.Report()
  data = jpeg(90, size=(40, 40))
  kept, size = layouts.check_image(data[:-2], "E", "x.jpeg", report)
  assert kept == data[:-2] and size == (40, 40)
  assert report.adaptations["truncated_jpeg_recovered"] == 1
  for mode, value in (("RGB", 77), ("I;16", 200)):
    stored, _ = layouts.check_image(encode(value, mode=mode), "E", f"{mode}.png", report)
    with Image.open(io.BytesIO(stored)) as image:
      assert image.mode == "L" and abs(int(np.asarray(image).mean()) - value) <= 1
  assert report.adaptations["converted_RGB_to_gray8"] == 1
  assert report.adaptations["converted_I;16_to_gray8"] == 1
  with pytest.raises(layouts.InvalidEmbryo, match="empty image file"):
    layouts.check_image(b"", "E", "empty.png", report)
  with pytest.raises(layouts.InvalidEmbryo, match="does not decode"):
    layouts.check_image(data[:200], "E", "cut.jpeg", report)


# ------------------------------------------------------------------- Gomez 2022


def test_gomez_quirks_are_handled_and_counted(tmp_path):
  root = make_gomez_tree(str(tmp_path / "g"))
  records, report = read_all(root, reader=layouts.read_gomez2022)
  by_id = {r["embryo_id"]: r for r in records}
  assert sorted(by_id) == ["AA83-7", "AA83-8", "GS490-_6"]
  assert [by_id[e]["label"] for e in sorted(by_id)] == [1, 0, 1]
  assert by_id["AA83-7"]["patient_id"] == "AA83" and by_id["GS490-_6"]["patient_id"] == "GS490"
  assert by_id["AA83-7"]["focal_planes"].tolist() == [-15, 0, 15]
  # AA83-7: 5 frames, truncated RUN2 kept; time rows 6, 7 have no image.
  assert by_id["AA83-7"]["frames"].shape == (5, 3)
  assert by_id["AA83-7"]["frames"][1, 1].endswith(b"\xff\xd9") is False
  np.testing.assert_allclose(by_id["AA83-7"]["hours"], [0.2, 0.4, 0.6, 0.8, 1.0], rtol=1e-6)
  assert by_id["AA83-7"]["events"] == {"tPB2": 0, "tPNa": 1, "t2": 2, "t4": 3, "tB": 4}
  # AA83-8: nested copies ignored; frame 5 has no time row.
  assert by_id["AA83-8"]["frames"].shape == (4, 3)
  # GS490-_6: frame 3's time is missing; events renumbered over the kept frames.
  np.testing.assert_allclose(by_id["GS490-_6"]["hours"], [0.2, 0.4, 0.8, 1.0], rtol=1e-6)
  assert by_id["GS490-_6"]["events"] == {"t2": 0, "t8": 2, "tM": 2, "tB": 3}
  assert dict(report.adaptations) == {
      "truncated_jpeg_recovered": 1, "time_rows_without_frame": 2,
      "nested_duplicate_folder_ignored": 3, "frames_without_time_dropped": 2,
      "events_after_last_frame_dropped": 1}


def test_gomez_missing_plane_folder_and_missing_annotations(tmp_path):
  root = make_gomez_tree(str(tmp_path / "g"))
  for name in os.listdir(os.path.join(root, "embryo_dataset_F15", "GS490-_6")):
    os.remove(os.path.join(root, "embryo_dataset_F15", "GS490-_6", name))
  os.rmdir(os.path.join(root, "embryo_dataset_F15", "GS490-_6"))
  os.remove(os.path.join(root, "embryo_dataset_annotations", "AA83-8_phases.csv"))
  with pytest.raises(layouts.InvalidEmbryo, match="AA83-8_phases.csv"):
    read_all(root, reader=layouts.read_gomez2022)
  records, report = read_all(root, skip_invalid=True, reader=layouts.read_gomez2022)
  assert [r["embryo_id"] for r in records] == ["AA83-7"]
  problems = {s["embryo_id"]: s["problem"] for s in report.skipped}
  assert "phases file missing" in problems["AA83-8"]
  assert "focal plane 15 folder missing" in problems["GS490-_6"]
  with pytest.raises(layouts.LayoutError, match="embryo_dataset not found"):
    read_all(tmp_path, reader=layouts.read_gomez2022)


def test_gomez_patient_id():
  assert layouts.gomez_patient_id("AA83-7") == "AA83"
  assert layouts.gomez_patient_id("GS490-_6") == "GS490"
  assert layouts.gomez_patient_id("X12") == "X12"
