"""Frame decoding: the one place encoded frame bytes (JPEG, PNG, TIFF, BMP) become images.

Used by the layouts' checks (`verify`, `to_gray8_png`, `resize` at build time), the
pipeline's augmentation (`decode` with JPEG draft, `to_gray`) and the feature cache
(`gray`).

Gray values: 8-bit frames have white 255; 16-bit frames are scaled to [0, 1] by 65535;
RGB frames are converted with PIL's ITU-R 601-2 luma transform (embryos are transparent
and imaged in gray; colour is an artefact of the export). JPEGs that lack their end
marker (cut-off EmbryoScope exports) get one appended before decoding, which is what
PIL's global LOAD_TRUNCATED_IMAGES does, but only for our decode.
"""

from __future__ import annotations

import io
import math
from typing import Optional

import numpy as np
from PIL import Image, ImageFile

JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def is_truncated_jpeg(data: bytes) -> bool:
  return data[:2] == JPEG_START and not data.rstrip(b"\x00").endswith(JPEG_END)


def decode(data: bytes, short_side: Optional[float] = None) -> Image.Image:
  """The frame as a loaded PIL image. With `short_side`, a JPEG is drafted (decoded at
  1/2, 1/4 or 1/8 size by DCT scaling) as far as its short side keeps that many pixels."""
  data = bytes(data)
  if is_truncated_jpeg(data):
    data = data + JPEG_END
  image = Image.open(io.BytesIO(data))
  if short_side is not None and image.format == "JPEG" and image.mode in ("L", "RGB", "YCbCr"):
    width, height = image.size
    factor = short_side / min(width, height)
    image.draft("L", (max(1, math.ceil(width * factor)), max(1, math.ceil(height * factor))))
  image.load()
  return image


def size(data: bytes) -> tuple:
  """(width, height) from the header, without decoding the pixels."""
  with Image.open(io.BytesIO(bytes(data))) as image:
    return image.size


def to_gray(image: Image.Image) -> tuple:
  """(gray image in mode 'L' or 'F', the value of white)."""
  if image.mode == "L":
    return image, 255.0
  if image.mode in _SIXTEEN_BIT:
    return image.convert("I").convert("F"), 65535.0
  if image.mode == "I":
    return image.convert("F"), 65535.0
  if image.mode == "F":
    return image, 1.0
  return image.convert("L"), 255.0   # 1, RGB, RGBA, P, LA, CMYK, YCbCr: ITU-R 601-2 luma


def gray(data: bytes, image_size: int, value_range: tuple = (0.0, 1.0)) -> np.ndarray:
  """The whole frame, gray, resized to image_size x image_size (bilinear): float32,
  black to white mapped onto `value_range`."""
  image, white = to_gray(decode(data))
  image = image.resize((image_size, image_size), Image.BILINEAR)
  low, high = value_range
  return np.asarray(image, np.float32) * np.float32((high - low) / white) + np.float32(low)


def verify(data: bytes, tolerant: bool = False) -> Image.Image:
  """Decodes `data` fully to find damage (a truncated file fails unless `tolerant`).

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


def resize(data: bytes, image_size: int) -> bytes:
  """A verified frame resized to image_size x image_size (bilinear), re-encoded in its own
  format (JPEG quality 95, or PNG). Truncated JPEGs kept by the checks decode tolerantly."""
  previous = ImageFile.LOAD_TRUNCATED_IMAGES
  ImageFile.LOAD_TRUNCATED_IMAGES = True
  try:
    with Image.open(io.BytesIO(data)) as image:
      image_format = "JPEG" if image.format == "JPEG" else "PNG"
      image = image.convert("L").resize((image_size, image_size), Image.BILINEAR)
  finally:
    ImageFile.LOAD_TRUNCATED_IMAGES = previous
  return encode(image, image_format)


def to_gray8_png(image: Image.Image) -> bytes:
  """An image of any mode as 8-bit gray PNG; 16-bit values scaled by 1/257."""
  if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
    values = np.asarray(image, dtype=np.float64)
    scale = 257.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 1.0
    image = Image.fromarray(np.clip(np.round(values / scale), 0, 255).astype(np.uint8))
  else:
    image = image.convert("L")
  return encode(image, "PNG")


def encode(image: Image.Image, image_format: str) -> bytes:
  """JPEG at quality 95, or PNG at compression level 1 (fast; frames are re-read often)."""
  buffer = io.BytesIO()
  options = {"quality": 95} if image_format == "JPEG" else {"compress_level": 1}
  image.save(buffer, format=image_format, **options)
  return buffer.getvalue()
