"""Generic `folder` layout (see README "Your own data"):

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
import os
import re
from typing import Iterator, Optional

from blastjax.data.layouts.common import (InvalidEmbryo, LayoutError, Report, as_invalid, assemble,
                                          image_files, parse_label, read_csv, safe_name)

_PLANE_RE = re.compile(r"^F(-?\d+)$")
_TIME_IN_NAME_RE = re.compile(r"^(\d+)_(\d+(?:\.\d+)?)h$")
_FRAME_ONLY_RE = re.compile(r"^(\d+)$")


def read_label_rows(root: str) -> tuple[dict[str, dict], dict[str, str]]:
  """labels.csv of the folder layout: ({embryo_id: row}, {duplicated embryo_id: problem})."""
  path = os.path.join(root, "labels.csv")
  if not os.path.isfile(path):
    raise LayoutError(f"{path} not found: the folder layout needs labels.csv with columns "
                      "embryo_id,patient_id,label[,split]")
  rows = read_csv(path)
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


def _plane_folders(embryo_dir: str) -> tuple[dict[str, str], list[str]]:
  """({plane folder name: path}, [other sub-folder names]) of one embryo folder: only
  F<offset> folders are focal planes; others (thumbs/, exports of a viewer) are not."""
  planes, others = {}, []
  for name in sorted(os.listdir(embryo_dir)):
    path = os.path.join(embryo_dir, name)
    if os.path.isdir(path):
      if _PLANE_RE.match(safe_name(name)):
        planes[safe_name(name)] = path
      else:
        others.append(safe_name(name))
  return planes, others


def majority_planes(plane_sets: list) -> frozenset:
  """The plane folders expected of every embryo: the set most embryos have (a tie goes
  to the larger set), so that one odd embryo is the one named, not the others."""
  counts = collections.Counter(frozenset(s) for s in plane_sets)
  if not counts:
    return frozenset()
  return max(counts, key=lambda s: (counts[s], len(s), sorted(s)))


def _folder_plane_frames(embryo_dir: str, embryo_id: str, expected_planes,
                         report: Optional[Report] = None) -> dict[int, dict[int, str]]:
  """{plane offset: {frame number: file path}} of one embryo folder."""
  folders, others = _plane_folders(embryo_dir)
  if others and report is not None:
    report.adaptations["non_plane_folder_ignored"] += len(others)
  if not folders:
    raise InvalidEmbryo(embryo_id, safe_name(embryo_dir), "no frames (no focal-plane sub-folder F<offset>)"
                        + (f"; ignored sub-folder(s) {others[:5]}" if others else ""))
  expected = sorted(expected_planes)
  for name in sorted(set(expected_planes) - set(folders)):
    raise InvalidEmbryo(embryo_id, os.path.join(embryo_dir, name),
                        f"focal plane folder missing (most embryos have {expected})")
  for name in sorted(set(folders) - set(expected_planes) if expected_planes else ()):
    raise InvalidEmbryo(embryo_id, folders[name], f"focal plane folder that most embryos lack (they have "
                        f"{expected}); remove it or give every embryo this plane")
  planes = {}
  for name, path in folders.items():
    match = _PLANE_RE.match(name)
    frames = {}
    for file in image_files(path):
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
      rows = read_csv(times_path)
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

  `expected_planes`: plane folder names every embryo of the dataset must have (and no
  other); empty: any. Sub-folders not named F<offset> are ignored (and counted).
  """
  planes = _folder_plane_frames(embryo_dir, embryo_id, expected_planes, report)
  numbers = {n: p for frames in planes.values() for n, p in frames.items()}
  hours = _folder_hours(embryo_dir, embryo_id, numbers)
  return assemble(embryo_id, patient_id, label, planes, hours, "folder", report, embryo_dir, split=split)


def _readable_plane_sets(embryo_dirs) -> list:
  """The plane folder names of each embryo folder that can be listed (the others fail,
  naming themselves, when read)."""
  sets = []
  for embryo_dir in embryo_dirs:
    try:
      sets.append(set(_plane_folders(embryo_dir)[0]))
    except OSError:
      continue
  return sets


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
  expected_planes = majority_planes(_readable_plane_sets(folders[e] for e in valid))
  for embryo_id in valid:
    row, embryo_dir = rows[embryo_id], folders[embryo_id]
    try:
      label = parse_label(row["label"] or "", embryo_id, os.path.join(root, "labels.csv"))
      if not (row["patient_id"] or "").strip():
        raise InvalidEmbryo(embryo_id, os.path.join(root, "labels.csv"), "patient_id is empty")
      yield read_embryo_folder(embryo_dir, embryo_id, (row["patient_id"] or "").strip(), label,
                               expected_planes, report, split=(row.get("split") or "").strip())
    except (InvalidEmbryo, OSError) as error:
      error = as_invalid(error, embryo_id)
      if not skip_invalid:
        raise error from None
      report.skip(error)
