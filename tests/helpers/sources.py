"""An in-memory embryo source (what the pipeline reads: `len`, `[i]`, `raw(i)`), for
pipeline and evaluation tests without a built dataset."""

import io

import numpy as np
from PIL import Image

from blastjax.data import pipeline

PLANES = np.array([-15, 0, 15], np.int32)


def encode_array(array, fmt="PNG"):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt)
  return buffer.getvalue()


class MemorySource:
  """Examples in the dataset's format, drawn from `seed`; frames of varied sizes.

  constant=True gives every frame of an example the same image (to see augmentation)."""

  def __init__(self, num_examples=6, num_frames=10, size=40, seed=0, constant=False,
               corrupt=None):
    rng = np.random.default_rng(seed)
    self.examples = []
    for i in range(num_examples):
      height, width = size + 4 * (i % 3), size + 8 * (i % 2)
      frames = np.empty((num_frames, PLANES.size), object)
      base = (rng.random((height, width)) * 255).astype(np.uint8)
      for t in range(num_frames):
        for p in range(PLANES.size):
          image = base if constant else (rng.random((height, width)) * 255).astype(np.uint8)
          jpeg = (t + i) % 2 and not constant
          frames[t, p] = encode_array(image, "JPEG" if jpeg else "PNG")
      if corrupt is not None and corrupt[0] == i:
        frames[corrupt[1], 1] = b"\x89PNG broken"
      hours = (np.arange(num_frames, dtype=np.float32) + 1) * 2.0 + i * 0.1
      self.examples.append({"embryo_id": f"E{i}", "patient_id": f"P{i // 2}", "label": i % 2,
                            "frames": frames, "hours": hours, "focal_planes": PLANES,
                            "events": {}, "source": "memory"})

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, index):
    return self.examples[index]


def read_batches(loader):
  return [dict(b) for b in loader]


def assert_same_batches(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def resume_matches(source, worker_count, **kwargs):
  """The batches of a loader read in one go equal those of a loader resumed after 2
  batches from the first one's state; returns them."""
  make = lambda: pipeline.make_loader(source, worker_count=worker_count, **kwargs)
  iterator = iter(make())
  head = [next(iterator) for _ in range(2)]
  state = iterator.get_state()
  rest = list(iterator)
  resumed = iter(make())
  resumed.set_state(state)
  assert_same_batches(rest, list(resumed))
  return head + rest
