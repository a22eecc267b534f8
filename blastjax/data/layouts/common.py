"""What every layout reader shares: the errors (InvalidEmbryo for one embryo, LayoutError
for the dataset), the build Report, the frame check and the assembly of a checked record.

A reader turns a directory into embryo records (the dataset's example format, frames as
the source's own encoded bytes) and raises `InvalidEmbryo` naming the file and the
problem for bad input. The builder decides whether that stops the build (default) or
skips the embryo and lists it in the report (`skip_invalid`). Adaptations to known
quirks of a release are counted in `Report.adaptations`, never silent.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import os
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from blastjax.data import frames as frames_lib

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
LABEL_NAMES = {"blast": 1, "non_blast": 0, "1": 1, "0": 0, "non-blast": 0, "nonblast": 0}


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
  # A setting of the read, carried with its report to every reader of the build: decode
  # the Huffman-coded data of every baseline JPEG (frames_lib.check_jpeg_scan). Off by
  # default: pure Python, ~17 ms per 128 px frame and ~0.2 s per 500 px frame.
  check_jpeg_scans: bool = False

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


def as_invalid(error: Exception, embryo_id: str) -> InvalidEmbryo:
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
  - Damage found in the Huffman-coded data of a baseline JPEG (frames_lib.check_jpeg_scan,
    when `report.check_jpeg_scans`), more pixels than PIL allows, and anything else that
    fails to decode raise InvalidEmbryo naming the file.
  """
  if not data:
    raise InvalidEmbryo(embryo_id, path, "empty image file")
  try:
    image = _verified(data, embryo_id, path, report)
  except Image.DecompressionBombError as error:
    limit = str(error).split(", could be")[0]  # "Image size (N pixels) exceeds limit of M pixels"
    raise InvalidEmbryo(embryo_id, path, f"too many pixels: {limit} (PIL.Image.MAX_IMAGE_PIXELS x 2); "
                        "replace or remove the file") from None
  width, height = image.info["full_size"]
  size = (height, width)
  if min(size) < 1:
    raise InvalidEmbryo(embryo_id, path, f"image of size {width}x{height} has no pixels")
  if image.mode == "L":
    return data, size
  if report is not None:
    report.adaptations[f"converted_{image.mode}_to_gray8"] += 1
  return frames_lib.to_gray8_png(image), size


def _verified(data: bytes, embryo_id: str, path: str, report: Optional[Report]) -> Image.Image:
  """frames_lib.verify, tolerant for JPEGs that only lack their end marker, and the
  Huffman-coded data of complete baseline JPEGs checked (libjpeg repairs it silently)."""
  try:
    image = frames_lib.verify(data)
  except Image.DecompressionBombError:
    raise
  except (OSError, ValueError, SyntaxError) as error:
    if isinstance(error, UnidentifiedImageError):
      error = "not a recognised image format: expected JPEG, PNG, TIFF or BMP"
    if not frames_lib.is_truncated_jpeg(data):
      raise InvalidEmbryo(embryo_id, path, f"not a readable image ({error}); replace or remove the file") from None
    try:
      image = frames_lib.verify(data, tolerant=True)
    except (OSError, ValueError, SyntaxError) as tolerant_error:
      raise InvalidEmbryo(embryo_id, path, f"truncated JPEG that does not decode: {tolerant_error}") from None
    if report is not None:
      report.adaptations["truncated_jpeg_recovered"] += 1
    return image
  scans = report is not None and report.check_jpeg_scans
  if scans and (image.format == "JPEG" or data[:2] == frames_lib.JPEG_START):
    try:
      frames_lib.check_jpeg_scan(data)
    except frames_lib.ScanDamage as damage:
      raise InvalidEmbryo(embryo_id, path, f"damaged JPEG data ({damage}); replace or remove the file") from None
  return image


def read_frame(path: str, embryo_id: str) -> bytes:
  """The bytes of one frame file: regular files only, at most frames_lib.MAX_FRAME_BYTES."""
  try:
    return frames_lib.read_file(path)
  except frames_lib.FrameFileError as error:
    raise InvalidEmbryo(embryo_id, safe_name(path), str(error)) from None


def parse_label(value: str, embryo_id: str, path: str) -> int:
  key = value.strip().lower()
  if key not in LABEL_NAMES:
    raise InvalidEmbryo(embryo_id, path, f"label {value!r} is not blast, non_blast, 1 or 0")
  return LABEL_NAMES[key]


def read_csv(path: str) -> list[dict]:
  """Rows of a UTF-8 CSV file; a byte-order mark (Excel's "CSV UTF-8") is dropped."""
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      return list(csv.DictReader(f))
  except UnicodeDecodeError as error:
    raise LayoutError(f"{path}: not UTF-8 text ({error}); save it as UTF-8 CSV") from None
  except csv.Error as error:
    raise LayoutError(f"{path}: not a readable CSV file ({error})") from None


def image_files(folder: str) -> list[str]:
  return sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))


def assemble(embryo_id: str, patient_id: str, label: int, planes: dict[int, dict[int, str]],
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
      frames[t, p], size = check_image(read_frame(path, embryo_id), embryo_id, safe_name(path), report)
      first_size = first_size or (size, path)
      if size != first_size[0]:
        raise InvalidEmbryo(embryo_id, safe_name(path), f"image size {size[1]}x{size[0]} differs from "
                            f"{first_size[0][1]}x{first_size[0][0]} of {safe_name(first_size[1])}")
  return {"embryo_id": embryo_id, "patient_id": patient_id, "label": label, "frames": frames,
          "hours": times.astype(np.float32), "focal_planes": np.asarray(offsets, np.int32),
          "events": dict(events or {}), "source": source, "split": split}
