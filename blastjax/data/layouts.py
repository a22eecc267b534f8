"""Readers of the on-disk layouts users have: the generic `folder` layout and Gomez 2022.

A reader turns a directory into embryo records (the dataset's example format, frames as
the source's own encoded bytes) and raises `InvalidEmbryo` naming the file and the
problem for bad input. The builder decides whether that stops the build (default) or
skips the embryo and lists it in the report (`skip_invalid`). Adaptations to known
quirks of a release are counted in `Report.adaptations`, never silent.

Generic `folder` layout (see README "Your own data"):

    root/
      labels.csv                  embryo_id,patient_id,label[,split]
      E001/                       one folder per embryo (named by embryo_id)
        F0/                       one sub-folder per focal plane: F<offset>
          0001_0.25h.jpg          <frame>_<hours>h.<ext>  (time in the file name) ...
        F-15/ ...
        times.csv                 ... or <frame>.<ext> plus times.csv: frame,hours
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import os
import re
from typing import Iterator, Optional

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
LABEL_NAMES = {"blast": 1, "non_blast": 0, "1": 1, "0": 0, "non-blast": 0, "nonblast": 0}
_PLANE_RE = re.compile(r"^F(-?\d+)$")
_TIME_IN_NAME_RE = re.compile(r"^(\d+)_(\d+(?:\.\d+)?)h$")
_FRAME_ONLY_RE = re.compile(r"^(\d+)$")
_GOMEZ_RUN_RE = re.compile(r"_RUN(\d+)$", re.IGNORECASE)
GOMEZ_PLANES = (("embryo_dataset_F-45", -45), ("embryo_dataset_F-30", -30), ("embryo_dataset_F-15", -15),
                ("embryo_dataset", 0), ("embryo_dataset_F15", 15), ("embryo_dataset_F30", 30),
                ("embryo_dataset_F45", 45))


class InvalidEmbryo(ValueError):
  """Bad input for one embryo: which embryo, which file, what is wrong."""

  def __init__(self, embryo_id: str, path: str, problem: str):
    # Names that are not valid UTF-8 are shown escaped, so the message can be printed.
    embryo_id, path, problem = safe_name(embryo_id), safe_name(path), safe_name(problem)
    super().__init__(f"embryo {embryo_id!r}: {path}: {problem}")
    self.embryo_id, self.path, self.problem = embryo_id, path, problem


class LayoutError(ValueError):
  """A problem with the dataset as a whole (missing labels.csv, duplicate ids...)."""


@dataclasses.dataclass
class Report:
  """What a build read, skipped and adapted; written beside the dataset."""

  skipped: list = dataclasses.field(default_factory=list)  # [{embryo_id, path, problem}]
  adaptations: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  per_class: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  patients: set = dataclasses.field(default_factory=set)
  time_points: int = 0
  images: int = 0

  def skip(self, error: InvalidEmbryo) -> None:
    self.skipped.append({"embryo_id": error.embryo_id, "path": error.path, "problem": error.problem})

  def count(self, record: dict) -> None:
    """Counts one written embryo record."""
    self.per_class["blast" if int(record["label"]) == 1 else "non_blast"] += 1
    self.patients.add(record["patient_id"])
    self.time_points += int(record["frames"].shape[0])
    self.images += int(record["frames"].size)

  def as_dict(self) -> dict:
    return {"embryos": sum(self.per_class.values()), "blast": self.per_class["blast"],
            "non_blast": self.per_class["non_blast"], "patients": len(self.patients),
            "time_points": self.time_points, "images": self.images,
            "skipped": self.skipped, "adaptations": dict(self.adaptations)}


def _as_invalid(error: Exception, embryo_id: str) -> InvalidEmbryo:
  """An OSError met while reading one embryo (unreadable file or folder) as InvalidEmbryo."""
  if isinstance(error, InvalidEmbryo):
    return error
  return InvalidEmbryo(embryo_id, safe_name(error.filename or "?"), f"cannot read: {error.strerror or error}")


def safe_name(name) -> str:
  """A file name as text; undecodable bytes are escaped rather than crashing."""
  if isinstance(name, bytes):
    return name.decode("utf-8", errors="backslashreplace")
  return name.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")


def check_image(data: bytes, embryo_id: str, path: str, report: Optional[Report]
                ) -> tuple[bytes, tuple[int, int]]:
  """Verifies that `data` decodes as an image; returns (bytes to store, (height, width)).

  - JPEGs that only lack their end-of-image marker decode with truncation tolerance:
    they are kept as they are and counted (`truncated_jpeg_recovered`).
  - Frames that are not 8-bit grayscale (16-bit, RGB, palette ...) are converted to
    8-bit grayscale PNG and counted (`converted_<mode>_to_gray8`); 16-bit values are
    scaled by 1/257 so that the full range maps onto 0..255.
  - Anything else that fails to decode raises InvalidEmbryo naming the file.
  """
  if not data:
    raise InvalidEmbryo(embryo_id, path, "empty image file")
  try:
    image = _decode(data)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
    if isinstance(error, UnidentifiedImageError):
      error = "not a recognised image format: expected JPEG, PNG, TIFF or BMP"
    is_jpeg = data[:2] == b"\xff\xd8"
    if not (is_jpeg and not data.rstrip(b"\x00").endswith(b"\xff\xd9")):
      raise InvalidEmbryo(embryo_id, path, f"not a readable image ({error}); replace or remove the file") from None
    try:
      image = _decode(data, tolerant=True)
    except (OSError, ValueError, SyntaxError) as tolerant_error:
      raise InvalidEmbryo(embryo_id, path, f"truncated JPEG that does not decode: {tolerant_error}") from None
    if report is not None:
      report.adaptations["truncated_jpeg_recovered"] += 1
  width, height = image.info["full_size"]
  size = (height, width)
  if min(size) < 1:
    raise InvalidEmbryo(embryo_id, path, f"image of size {width}x{height} has no pixels")
  if image.mode == "L":
    return data, size
  if report is not None:
    report.adaptations[f"converted_{image.mode}_to_gray8"] += 1
  return _to_gray8_png(image), size


def _decode(data: bytes, tolerant: bool = False) -> Image.Image:
  """Decodes `data` (a truncated file fails unless `tolerant`); returns the image.

  8-bit grayscale JPEGs, the bulk of incubator exports, are decoded in draft mode (1/8
  scale: the whole entropy-coded stream is still read, so damage is still found); the
  returned image is then that small one, with the original size in `.info['full_size']`.
  """
  previous = ImageFile.LOAD_TRUNCATED_IMAGES
  ImageFile.LOAD_TRUNCATED_IMAGES = tolerant
  try:
    with Image.open(io.BytesIO(data)) as image:
      full_size, mode = image.size, image.mode
      if image.format == "JPEG" and mode == "L":
        image.draft("L", (max(1, full_size[0] // 8), max(1, full_size[1] // 8)))
      image.load()
      image = image.copy()
      image.info["full_size"] = full_size
      return image
  finally:
    ImageFile.LOAD_TRUNCATED_IMAGES = previous


def resize_frame(data: bytes, size: int) -> bytes:
  """A verified frame resized to size x size (bilinear), re-encoded in its own format
  (JPEG quality 95, or PNG). Truncated JPEGs kept by check_image decode tolerantly."""
  previous = ImageFile.LOAD_TRUNCATED_IMAGES
  ImageFile.LOAD_TRUNCATED_IMAGES = True
  try:
    with Image.open(io.BytesIO(data)) as image:
      image_format = "JPEG" if image.format == "JPEG" else "PNG"
      image = image.convert("L").resize((size, size), Image.BILINEAR)
  finally:
    ImageFile.LOAD_TRUNCATED_IMAGES = previous
  buffer = io.BytesIO()
  options = {"quality": 95} if image_format == "JPEG" else {"compress_level": 1}
  image.save(buffer, format=image_format, **options)
  return buffer.getvalue()


def _to_gray8_png(image: Image.Image) -> bytes:
  if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
    values = np.asarray(image, dtype=np.float64)
    scale = 257.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 1.0
    gray = Image.fromarray(np.clip(np.round(values / scale), 0, 255).astype(np.uint8))
  else:
    gray = image.convert("L")
  buffer = io.BytesIO()
  gray.save(buffer, format="PNG", compress_level=1)
  return buffer.getvalue()


def parse_label(value: str, embryo_id: str, path: str) -> int:
  key = value.strip().lower()
  if key not in LABEL_NAMES:
    raise InvalidEmbryo(embryo_id, path, f"label {value!r} is not blast, non_blast, 1 or 0")
  return LABEL_NAMES[key]


def _read_csv(path: str) -> list[dict]:
  try:
    with open(path, newline="", encoding="utf-8") as f:
      return list(csv.DictReader(f))
  except UnicodeDecodeError as error:
    raise LayoutError(f"{path}: not UTF-8 text ({error}); save it as UTF-8 CSV") from None
  except csv.Error as error:
    raise LayoutError(f"{path}: not a readable CSV file ({error})") from None


def _image_files(folder: str) -> list[str]:
  return sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))


def read_label_rows(root: str) -> tuple[dict[str, dict], dict[str, str]]:
  """labels.csv of the folder layout: ({embryo_id: row}, {duplicated embryo_id: problem})."""
  path = os.path.join(root, "labels.csv")
  if not os.path.isfile(path):
    raise LayoutError(f"{path} not found: the folder layout needs labels.csv with columns "
                      "embryo_id,patient_id,label[,split]")
  rows = _read_csv(path)
  missing = {"embryo_id", "patient_id", "label"} - set(rows[0].keys() if rows else ())
  if missing:
    raise LayoutError(f"{path}: missing column(s) {sorted(missing)}; expected embryo_id,patient_id,label[,split]")
  by_id, lines, duplicates = {}, {}, {}
  for line, row in enumerate(rows, start=2):
    embryo_id = (row["embryo_id"] or "").strip()
    if not embryo_id:
      raise LayoutError(f"{path} line {line}: empty embryo_id")
    if embryo_id in by_id:
      duplicates[embryo_id] = f"duplicate embryo_id in labels.csv (lines {lines[embryo_id]} and {line})"
    by_id[embryo_id], lines[embryo_id] = row, line
  return by_id, duplicates


def _plane_folders(embryo_dir: str) -> dict[str, str]:
  """{plane folder name: path} of the sub-folders of one embryo folder."""
  return {safe_name(n): os.path.join(embryo_dir, n) for n in sorted(os.listdir(embryo_dir))
          if os.path.isdir(os.path.join(embryo_dir, n))}


def _folder_plane_frames(embryo_dir: str, embryo_id: str, expected_planes) -> dict[int, dict[int, str]]:
  """{plane offset: {frame number: file path}} of one embryo folder."""
  folders = _plane_folders(embryo_dir)
  if not folders:
    raise InvalidEmbryo(embryo_id, safe_name(embryo_dir), "no frames (no focal-plane sub-folder F<offset>)")
  for name in sorted(set(expected_planes) - set(folders)):
    raise InvalidEmbryo(embryo_id, os.path.join(embryo_dir, name),
                        f"focal plane folder missing (other embryos have {sorted(expected_planes)})")
  planes = {}
  for name, path in folders.items():
    match = _PLANE_RE.match(name)
    if not match:
      raise InvalidEmbryo(embryo_id, path, "sub-folder is not a focal plane named F<offset> (e.g. F0, F-15)")
    frames = {}
    for file in _image_files(path):
      stem = os.path.splitext(file)[0]
      number = _TIME_IN_NAME_RE.match(stem) or _FRAME_ONLY_RE.match(stem)
      if not number:
        raise InvalidEmbryo(embryo_id, os.path.join(path, safe_name(file)),
                            "frame file name is neither <frame>_<hours>h.<ext> nor <frame>.<ext>")
      if int(number.group(1)) in frames:
        raise InvalidEmbryo(embryo_id, os.path.join(path, safe_name(file)),
                            f"frame number {int(number.group(1))} appears twice in this plane")
      frames[int(number.group(1))] = os.path.join(path, file)
    planes[int(match.group(1))] = frames
  return planes


def _folder_hours(embryo_dir: str, embryo_id: str, frames: dict[int, str]) -> dict[int, float]:
  """Frame times from the file names, or from times.csv (frame,hours)."""
  times_path = os.path.join(embryo_dir, "times.csv")
  if os.path.isfile(times_path):
    hours = {}
    try:
      rows = _read_csv(times_path)
    except LayoutError as error:
      raise InvalidEmbryo(embryo_id, times_path, str(error)) from None
    for line, row in enumerate(rows, start=2):
      try:
        hours[int(row["frame"])] = float(row["hours"])
      except (KeyError, TypeError, ValueError, OverflowError):
        raise InvalidEmbryo(embryo_id, times_path,
                            f"line {line}: unreadable row {row}; expected columns frame,hours") from None
    return hours
  hours = {}
  for number, path in frames.items():
    match = _TIME_IN_NAME_RE.match(os.path.splitext(os.path.basename(path))[0])
    if not match:
      raise InvalidEmbryo(embryo_id, safe_name(path), "no time in the file name and no times.csv in the embryo folder")
    hours[number] = float(match.group(2))
  return hours


def read_embryo_folder(embryo_dir: str, embryo_id: str, patient_id: str = "", label: int = -1,
                       expected_planes=(), report: Optional[Report] = None, split: str = "") -> dict:
  """One embryo folder of the `folder` layout (F<offset>/ plane sub-folders, frame files,
  optional times.csv) as a checked example; raises InvalidEmbryo naming the file at fault.

  `expected_planes`: plane folder names every embryo of the dataset must have.
  """
  planes = _folder_plane_frames(embryo_dir, embryo_id, expected_planes)
  numbers = {n: p for frames in planes.values() for n, p in frames.items()}
  hours = _folder_hours(embryo_dir, embryo_id, numbers)
  return _assemble(embryo_id, patient_id, label, planes, hours, "folder", report, embryo_dir, split=split)


def _assemble(embryo_id: str, patient_id: str, label: int, planes: dict[int, dict[int, str]],
              hours: dict[int, float], source: str, report: Optional[Report],
              embryo_dir: str, events: Optional[dict] = None, split: str = "") -> dict:
  """Checks completeness and time order, reads and verifies the bytes of every frame."""
  if not planes or not any(planes.values()):
    raise InvalidEmbryo(embryo_id, safe_name(embryo_dir), "no frames")
  offsets = sorted(planes)
  numbers = sorted(set().union(*(set(f) for f in planes.values())))
  for offset in offsets:
    missing = sorted(set(numbers) - set(planes[offset]))
    if missing:
      raise InvalidEmbryo(embryo_id, safe_name(embryo_dir), f"focal plane {offset} lacks frame(s) {missing[:10]}")
  untimed = [n for n in numbers if n not in hours or not np.isfinite(hours[n])]
  if untimed:
    raise InvalidEmbryo(embryo_id, safe_name(embryo_dir), f"frame(s) {untimed[:10]} have no readable time")
  times = np.asarray([hours[n] for n in numbers], np.float64)
  if np.any(np.diff(times) <= 0):
    bad = int(np.argmin(np.diff(times)))
    raise InvalidEmbryo(embryo_id, safe_name(embryo_dir),
                        f"frame times are not strictly increasing at frame {numbers[bad + 1]} "
                        f"({times[bad]} h then {times[bad + 1]} h)")
  frames = np.empty((len(numbers), len(offsets)), dtype=object)
  first_size = None
  for t, number in enumerate(numbers):
    for p, offset in enumerate(offsets):
      path = planes[offset][number]
      with open(path, "rb") as f:
        frames[t, p], size = check_image(f.read(), embryo_id, safe_name(path), report)
      first_size = first_size or (size, path)
      if size != first_size[0]:
        raise InvalidEmbryo(embryo_id, safe_name(path), f"image size {size[1]}x{size[0]} differs from "
                            f"{first_size[0][1]}x{first_size[0][0]} of {safe_name(first_size[1])}")
  return {"embryo_id": embryo_id, "patient_id": patient_id, "label": label, "frames": frames,
          "hours": times.astype(np.float32), "focal_planes": np.asarray(offsets, np.int32),
          "events": dict(events or {}), "source": source, "split": split}


def read_folder_layout(root: str, report: Report, skip_invalid: bool = False) -> Iterator[dict]:
  """Embryo records of the generic folder layout (see the module docstring)."""
  if not os.path.isdir(root):
    raise LayoutError(f"{root}: not a directory (pass the folder that holds labels.csv)")
  rows, duplicates = read_label_rows(root)
  folders = {safe_name(n): os.path.join(root, n) for n in os.listdir(root) if os.path.isdir(os.path.join(root, n))}
  problems = [InvalidEmbryo(e, os.path.join(root, "labels.csv"), p) for e, p in sorted(duplicates.items())]
  for embryo_id in sorted(set(folders) - set(rows)):
    problems.append(InvalidEmbryo(embryo_id, safe_name(folders[embryo_id]), "folder has no row in labels.csv"))
  for embryo_id in sorted(set(rows) - set(folders) - set(duplicates)):
    problems.append(InvalidEmbryo(embryo_id, os.path.join(root, "labels.csv"), "label row has no embryo folder"))
  for problem in problems:
    if not skip_invalid:
      raise problem
    report.skip(problem)
  valid = sorted(set(rows) & set(folders) - set(duplicates))
  expected_planes = set().union(*(_plane_folders(folders[e]) for e in valid)) if valid else set()
  for embryo_id in valid:
    row, embryo_dir = rows[embryo_id], folders[embryo_id]
    try:
      label = parse_label(row["label"] or "", embryo_id, os.path.join(root, "labels.csv"))
      if not (row["patient_id"] or "").strip():
        raise InvalidEmbryo(embryo_id, os.path.join(root, "labels.csv"), "patient_id is empty")
      yield read_embryo_folder(embryo_dir, embryo_id, (row["patient_id"] or "").strip(), label,
                               expected_planes, report, split=(row.get("split") or "").strip())
    except (InvalidEmbryo, OSError) as error:
      error = _as_invalid(error, embryo_id)
      if not skip_invalid:
        raise error from None
      report.skip(error)


# ----------------------------------------------------------------------- Gomez 2022


def gomez_patient_id(embryo_id: str) -> str:
  """The patient of a Gomez 2022 embryo id: the part before the last '-' (AA83-7 -> AA83,
  GS490-_6 -> GS490): the release names embryos <patient>-<well>."""
  return embryo_id.rsplit("-", 1)[0] if "-" in embryo_id else embryo_id


def _gomez_phases(path: str, embryo_id: str) -> dict[str, int]:
  if not os.path.isfile(path):
    raise InvalidEmbryo(embryo_id, path, "phases file missing (needed for the label)")
  phases = {}
  try:
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
      rows = list(csv.reader(f))
  except csv.Error as error:
    raise InvalidEmbryo(embryo_id, path, f"not a readable CSV file ({error})") from None
  for line, row in enumerate(rows, start=1):
    if len(row) < 2:
      continue
    try:
      phases[row[0].strip()] = int(float(row[1]))
    except (ValueError, OverflowError):
      raise InvalidEmbryo(embryo_id, path, f"line {line}: unreadable phase row {row}") from None
  return phases


def _gomez_times(path: str, embryo_id: str) -> dict[int, float]:
  if not os.path.isfile(path):
    raise InvalidEmbryo(embryo_id, path, "time file missing")
  try:
    rows = _read_csv(path)
  except LayoutError as error:
    raise InvalidEmbryo(embryo_id, path, str(error)) from None
  if rows and not {"frame_index", "time"} <= set(rows[0]):
    raise InvalidEmbryo(embryo_id, path, f"columns {sorted(rows[0])}; expected frame_index,time")
  times = {}
  for row in rows:
    try:
      hours = float(row["time"])
      if np.isfinite(hours):
        times[int(float(row["frame_index"]))] = hours
    except (KeyError, TypeError, ValueError, OverflowError):
      continue  # a row with a missing or unreadable time: the frame is dropped and counted
  return times


def _gomez_run_files(folder: str) -> dict[int, str]:
  frames = {}
  for name in sorted(os.listdir(folder)):
    match = _GOMEZ_RUN_RE.search(os.path.splitext(name)[0])
    if name.lower().endswith(IMAGE_EXTENSIONS) and match and os.path.isfile(os.path.join(folder, name)):
      frames[int(match.group(1))] = os.path.join(folder, name)
  return frames


def _gomez_frames(folder: str, report: Report) -> dict[int, str]:
  """{RUN number: path} of one embryo folder of one plane.

  Some embryo folders of the release also hold a nested copy of themselves
  (`AA83-7/AA83-7/...`): when the folder has its own frames the nested copy is ignored
  (`nested_duplicate_folder_ignored`); when it has none, the nested frames are used
  (`nested_folder_used`).
  """
  frames = _gomez_run_files(folder)
  for name in sorted(os.listdir(folder)):
    nested = os.path.join(folder, name)
    if not os.path.isdir(nested):
      continue
    if frames:
      report.adaptations["nested_duplicate_folder_ignored"] += 1
    else:
      frames = _gomez_run_files(nested)
      report.adaptations["nested_folder_used"] += 1
  return frames


def read_gomez2022(root: str, report: Report, skip_invalid: bool = False) -> Iterator[dict]:
  """Embryo records of Gomez et al. 2022 as its archives extract under `root`.

  Frames are paired with time rows by number: image `..._RUN<k>.jpeg` takes the row
  whose frame_index is k (the release numbers both from 1, and the phases files use
  the same numbers). Time rows without an image (`time_rows_without_frame`), frames
  without a usable time (`frames_without_time_dropped`) and frames missing from some
  plane (`frames_missing_in_other_planes_dropped`) are counted in the report.
  """
  central = os.path.join(root, "embryo_dataset")
  if not os.path.isdir(central):
    raise LayoutError(f"{central} not found: extract the Gomez 2022 archives into {root}")
  planes_present = [(d, o) for d, o in GOMEZ_PLANES if os.path.isdir(os.path.join(root, d))]
  for name in sorted(n for n in os.listdir(central) if os.path.isdir(os.path.join(central, n))):
    try:
      yield _gomez_embryo(root, name, planes_present, report)
    except (InvalidEmbryo, OSError) as error:
      error = _as_invalid(error, safe_name(name))
      if not skip_invalid:
        raise error from None
      report.skip(error)


def _gomez_embryo(root, name, planes_present, report) -> dict:
  embryo_id = safe_name(name)
  phases = _gomez_phases(os.path.join(root, "embryo_dataset_annotations", f"{name}_phases.csv"), embryo_id)
  times = _gomez_times(os.path.join(root, "embryo_dataset_time_elapsed", f"{name}_timeElapsed.csv"), embryo_id)
  planes = {}
  for folder, offset in planes_present:
    path = os.path.join(root, folder, name)
    if not os.path.isdir(path):
      raise InvalidEmbryo(embryo_id, safe_name(path), f"focal plane {offset} folder missing")
    planes[offset] = _gomez_frames(path, report)
  central_dir = safe_name(os.path.join(root, "embryo_dataset", name))
  if not any(planes.values()):
    raise InvalidEmbryo(embryo_id, central_dir, "no frames")
  common = set.intersection(*(set(f) for f in planes.values()))
  untimed = sorted(n for n in common if n not in times)
  if untimed:
    report.adaptations["frames_without_time_dropped"] += len(untimed)
  if set(times) - common:
    report.adaptations["time_rows_without_frame"] += len(set(times) - common)
  keep = sorted(n for n in common if n in times)
  if not keep:
    raise InvalidEmbryo(embryo_id, central_dir, "no frame has both an image in every plane and a time")
  incomplete = sum(len(set(f) - common) for f in planes.values())
  if incomplete:
    report.adaptations["frames_missing_in_other_planes_dropped"] += incomplete
  planes = {o: {n: f[n] for n in keep} for o, f in planes.items()}
  # Events: the first frame of each phase, as a position among the kept frames (a
  # phase starting on a dropped frame starts at the next kept one).
  events = {}
  for phase, first in phases.items():
    position = int(np.searchsorted(keep, first))
    if position < len(keep):
      events[phase] = position
    else:  # annotated after the last image (the label still counts it)
      report.adaptations["events_after_last_frame_dropped"] += 1
  return _assemble(embryo_id, gomez_patient_id(embryo_id), int("tB" in phases), planes, times,
                   "gomez2022", report, central_dir, events=events)
