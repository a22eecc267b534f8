"""Fake embryo folders on disk in the layouts blastjax reads (folder, gomez2022)."""

import io
import os

import numpy as np
from PIL import Image

from blastjax.data import layouts


def encode(value, size=(16, 16), fmt="PNG", mode="L"):
  if mode == "I;16":
    image = Image.fromarray(np.full(size, value * 257, np.uint16))
  else:
    image = Image.fromarray(np.full(size, value, np.uint8)).convert(mode)
  buffer = io.BytesIO()
  image.save(buffer, format=fmt)
  return buffer.getvalue()

def make_folder_tree(root, embryos=(("E1", "P1", "blast"), ("E2", "P1", "non_blast"), ("E3", "P2", "1")),
                     planes=("F0", "F-15"), frames=3, split=False, times_csv=False):
  """A valid folder layout: 16x16 PNG frames, times in the names (or times.csv)."""
  os.makedirs(root, exist_ok=True)
  header = "embryo_id,patient_id,label" + (",split" if split else "")
  lines = [header] + [",".join(e) + ((",train" if i % 2 else ",test") if split else "")
                      for i, e in enumerate(embryos)]
  with open(os.path.join(root, "labels.csv"), "w") as f:
    f.write("\n".join(lines) + "\n")
  for embryo_id, _, _ in embryos:
    for plane in planes:
      os.makedirs(os.path.join(root, embryo_id, plane))
      for t in range(frames):
        name = f"{t:04d}.png" if times_csv else f"{t:04d}_{1.5 + t * 0.25:g}h.png"
        with open(os.path.join(root, embryo_id, plane, name), "wb") as f:
          f.write(encode(10 * t + len(plane)))
    if times_csv:
      with open(os.path.join(root, embryo_id, "times.csv"), "w") as f:
        f.write("frame,hours\n" + "".join(f"{t},{1.5 + t * 0.25}\n" for t in range(frames)))
  return root

def jpeg(value, size=(24, 24)):
  data = encode(value, size, "JPEG")
  assert data.endswith(b"\xff\xd9")
  return data

GOMEZ_PLANES = ("embryo_dataset_F-15", "embryo_dataset", "embryo_dataset_F15")

def make_gomez_tree(root):
  """Three embryos of two patients with the release's quirks:

  AA83-7: blast (phases reach tB; tEB annotated after the last image); its central
          frame RUN2 lacks the JPEG end marker;
          its time file has two extra rows (frames 6, 7) without images.
  AA83-8: non-blast; every plane folder holds a nested duplicate copy `AA83-8/AA83-8/`;
          its time file has no row for frame 5 (one image more than time rows).
  GS490-_6: blast; frame 3 has an empty time cell.
  """
  phases = {"AA83-7": "tPB2,1,1\ntPNa,2,2\nt2,3,3\nt4,4,4\ntB,5,5\ntEB,9,9\n",
            "AA83-8": "t2,2,3\nt3,4,5\n",
            "GS490-_6": "t2,1,2\nt8,3,3\ntM,4,4\ntB,5,5\n"}
  times = {"AA83-7": [(i, 0.2 * i) for i in range(1, 8)],
           "AA83-8": [(i, 0.2 * i) for i in range(1, 5)],
           "GS490-_6": [(1, 0.2), (2, 0.4), (3, None), (4, 0.8), (5, 1.0)]}
  os.makedirs(os.path.join(root, "embryo_dataset_annotations"))
  os.makedirs(os.path.join(root, "embryo_dataset_time_elapsed"))
  for embryo_id in phases:
    with open(os.path.join(root, "embryo_dataset_annotations", f"{embryo_id}_phases.csv"), "w") as f:
      f.write(phases[embryo_id])
    with open(os.path.join(root, "embryo_dataset_time_elapsed", f"{embryo_id}_timeElapsed.csv"), "w") as f:
      f.write("frame_index,time\n" + "".join(f"{i},{'' if t is None else t}\n" for i, t in times[embryo_id]))
    for p, plane in enumerate(GOMEZ_PLANES):
      folder = os.path.join(root, plane, embryo_id)
      os.makedirs(folder)
      for run in range(1, 6):
        data = jpeg(40 * p + 10 * run)
        if embryo_id == "AA83-7" and plane == "embryo_dataset" and run == 2:
          data = data[:-2]
        name = f"D2019.01.0{p + 1}_S00{run}_I3166_WELL7_RUN{run}.jpeg"
        with open(os.path.join(folder, name), "wb") as f:
          f.write(data)
        if embryo_id == "AA83-8":
          os.makedirs(os.path.join(folder, embryo_id), exist_ok=True)
          with open(os.path.join(folder, embryo_id, name), "wb") as f:
            f.write(data)
  with open(os.path.join(root, "embryo_dataset_grades.csv"), "w") as f:
    f.write("video_name,TE,ICM\nAA83-7,NA,NA\n")
  return root

def read_all(root, skip_invalid=False, reader=layouts.read_folder_layout, check_jpeg_scans=False):
  report = layouts.Report(check_jpeg_scans=check_jpeg_scans)
  return list(reader(str(root), report, skip_invalid)), report


def write_embryo_folder(root, example, resize=None, planes=None, frames=None):
  """One example of a built dataset as a folder predict reads (F<offset>/<t>_<hours>h.jpg),
  optionally resized, with some planes or only the first frames."""
  folder = os.path.join(root, example["embryo_id"])
  offsets = list(example["focal_planes"])
  for p, offset in enumerate(offsets):
    if planes is not None and offset not in planes:
      continue
    os.makedirs(os.path.join(folder, f"F{offset}"), exist_ok=True)
    for t, hours in enumerate(example["hours"][:frames]):
      data = bytes(example["frames"][t, p])
      if resize:
        image = Image.open(io.BytesIO(data)).resize((resize, resize))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
      name = f"{t:04d}_{float(hours):.4f}h.{'png' if resize else 'jpg'}"
      with open(os.path.join(folder, f"F{offset}", name), "wb") as f:
        f.write(data)
  return folder


def scan_start(data):
  """Offset of a JPEG's entropy-coded data (just after its SOS header)."""
  sos = data.index(b"\xff\xda")
  return sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")


def damage_scan(data, rng):
  """`data` with one random byte inside the entropy-coded data XOR-ed with a random value."""
  damaged = bytearray(data)
  damaged[int(rng.integers(scan_start(data), len(data) - 2))] ^= int(rng.integers(1, 256))
  return bytes(damaged)


def huge_header_jpeg(width=60000, height=60000, cut=True):
  """A small JPEG whose frame header claims width x height pixels, optionally without
  its end marker (a decompression bomb, or a cut-off export with a broken header)."""
  data = bytearray(jpeg(100))
  sof = data.index(b"\xff\xc0")
  data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
  return bytes(data[:-2] if cut else data)


def noisy_jpeg(seed=0, size=64, quality=90):
  """A grayscale JPEG with texture (so its scan is long enough to damage)."""
  pixels = np.random.default_rng(seed).normal(128, 30, (size, size)).clip(0, 255).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
  return buffer.getvalue()
