"""What the builder writes and the reader reads alike: the dataset's name, its one split,
the class names, the files beside the shards and one example's index entry (its ids,
label, split and sizes, without its frames)."""

from __future__ import annotations

from blastjax.data import frames as frames_lib

DATASET_NAME = "embryo_timelapse"
# The one TFDS split, holding every embryo ("all" is reserved by TFDS); train/test
# splits are computed by blastjax.data.splits so that protocols can vary by seed.
SPLIT = "full"
CLASS_NAMES = ("non_blast", "blast")
REPORT_FILE = "build_report.json"   # counts, skipped embryos, adaptations of a build
INDEX_FILE = "embryos.json"         # index_entry of every example, in storage order


def index_entry(example: dict) -> dict:
  """What metadata needs of one example, without its frames: ids, label, split, sizes."""
  frames = example["frames"]
  width, height = frames_lib.size(frames[0]) if len(frames) else (0, 0)  # the header only
  return {"embryo_id": example["embryo_id"], "patient_id": example["patient_id"],
          "label": int(example["label"]), "split": example["split"],
          "num_frames": int(len(example["hours"])), "focal_planes": [int(o) for o in example["focal_planes"]],
          "first_hour": float(example["hours"][0]) if len(example["hours"]) else None,
          "image_size": [height, width]}
