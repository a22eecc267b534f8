"""The Gomez et al. 2022 time-lapse embryo dataset, as its archives extract: one folder per
focal plane (embryo_dataset, embryo_dataset_F<offset>), one sub-folder per embryo.
"""

from __future__ import annotations

import csv
import os
import re
from typing import Iterator

import numpy as np

from blastjax.data.layouts.common import (IMAGE_EXTENSIONS, InvalidEmbryo, LayoutError, Report, as_invalid, assemble,
                                          read_csv, safe_name)

_GOMEZ_RUN_RE = re.compile(r"_RUN(\d+)$", re.IGNORECASE)
GOMEZ_PLANES = (("embryo_dataset_F-45", -45), ("embryo_dataset_F-30", -30), ("embryo_dataset_F-15", -15),
                ("embryo_dataset", 0), ("embryo_dataset_F15", 15), ("embryo_dataset_F30", 30),
                ("embryo_dataset_F45", 45))


def gomez_patient_id(embryo_id: str) -> str:
  """The patient of a Gomez 2022 embryo id: the part before the last '-' (AA83-7 -> AA83,
  GS490-_6 -> GS490): the release names embryos <patient>-<well>."""
  return embryo_id.rsplit("-", 1)[0] if "-" in embryo_id else embryo_id


def _gomez_phases(path: str, embryo_id: str) -> dict[str, int]:
  if not os.path.isfile(path):
    raise InvalidEmbryo(embryo_id, path, "phases file missing (needed for the label)")
  phases = {}
  try:
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
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
    rows = read_csv(path)
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
      error = as_invalid(error, safe_name(name))
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
  return assemble(embryo_id, gomez_patient_id(embryo_id), int("tB" in phases), planes, times,
                   "gomez2022", report, central_dir, events=events)
