"""Frame decoding: the one place encoded frame bytes (JPEG, PNG, TIFF, BMP) become images.

Used by the layouts' checks (`verify`, `to_gray8_png`, `resize` at build time), the
pipeline's augmentation (`decode` with JPEG draft, `to_gray`) and the feature cache
(`gray`).

Gray values: 8-bit frames have white 255; 16-bit frames are scaled to [0, 1] by 65535;
RGB frames are converted with PIL's ITU-R 601-2 luma transform (embryos are transparent
and imaged in gray; colour is an artefact of the export). JPEGs that lack their end
marker (cut-off EmbryoScope exports) get one appended before decoding, which is what
PIL's global LOAD_TRUNCATED_IMAGES does, but only for our decode.

Input checks: `read_file` reads regular files only, up to MAX_FRAME_BYTES;
`check_jpeg_scan` decodes the Huffman-coded data of baseline JPEGs, which libjpeg (and
so PIL) repairs silently, to find damage in it (what it finds: docs/data.md).
"""

from __future__ import annotations

import functools
import io
import math
import os
import stat
from typing import Optional

import numpy as np
from PIL import Image, ImageFile

JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
# The largest frame file read (a 500x500 frame is ~20-80 KB; 16-bit TIFFs of large
# sensors stay well below). Set blastjax.data.frames.MAX_FRAME_BYTES to read larger ones.
MAX_FRAME_BYTES = 64 * 2**20
_SOF_BASELINE = (0xC0, 0xC1)
_SOF_OTHER = (0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)


_SOF_BASELINE = (0xC0, 0xC1)
_SOF_OTHER = (0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)


class ScanDamage(ValueError):
  """The entropy-coded data of a JPEG does not decode as its header says."""


class FrameFileError(ValueError):
  """A frame path that is not a regular file of a sensible size (FIFO, device, huge)."""


@functools.lru_cache(maxsize=64)
def _table(spec: bytes, is_ac: bool) -> tuple:
  """(advance, step) lists over every 16-bit window: bits a symbol takes (code and
  magnitude; 0 = no such code) and, for AC, how far it moves the coefficient index
  (64 = end of block)."""
  counts, symbols = spec[:16], spec[16:]
  advance = np.zeros(1 << 16, np.int32)
  step = np.zeros(1 << 16, np.int32)
  code, i = 0, 0
  for length in range(1, 17):
    for _ in range(counts[length - 1]):
      symbol = symbols[i]
      i += 1
      low, high = code << (16 - length), (code + 1) << (16 - length)
      size, run = symbol & 15, symbol >> 4
      if not is_ac:
        advance[low:high] = length + symbol if symbol <= 11 else 0
        step[low:high] = symbol << 8 | length  # for the DC value: its size and code length
      elif symbol in (0x00, 0xF0) or size:
        advance[low:high] = length + size
        step[low:high] = 64 if symbol == 0 else run + 1
      code += 1
    code <<= 1
  return advance.tolist(), step.tolist()


def _windows(data: bytes) -> list:
  """The 16 bits from every bit position of `data` (padded with 1s), as ints."""
  raw = np.frombuffer(data + b"\xff\xff\xff", np.uint8).astype(np.uint32)
  n = len(data) * 8
  position = np.arange(n, dtype=np.uint32)
  byte, shift = position >> 3, position & 7
  word = (raw[byte] << 16) | (raw[byte + 1] << 8) | raw[byte + 2]
  return ((word >> (8 - shift)) & 0xFFFF).tolist()


def _segments(data: bytes):
  """(marker, payload, end offset) of each marker segment up to SOS; then the scan."""
  i = 2
  while i + 4 <= len(data):
    if data[i] != 0xFF:
      raise ScanDamage(f"no marker at byte {i}")
    marker = data[i + 1]
    if marker == 0xFF:
      i += 1
      continue
    if marker == 0xD9:
      return
    length = int.from_bytes(data[i + 2:i + 4], "big")
    yield marker, data[i + 4:i + 2 + length], i + 2 + length
    i += 2 + length


def _entropy_end(data: bytes, start: int) -> int:
  """Offset of the first marker after `start` that is neither stuffing nor RSTn."""
  i = data.find(b"\xff", start)
  while i != -1 and i + 1 < len(data):
    following = data[i + 1]
    if following != 0x00 and not 0xD0 <= following <= 0xD7 and following != 0xFF:
      return i
    i = data.find(b"\xff", i + 1)
  return len(data)


def check_jpeg_scan(data: bytes) -> bool:
  """True when checked, False when not a JPEG this checks; raises ScanDamage."""
  try:
    return _check_jpeg_scan(data)
  except (IndexError, KeyError, ZeroDivisionError):
    return False  # a header this parser does not follow (PIL decoded it): not checked


def _check_jpeg_scan(data: bytes) -> bool:
  """Decodes the Huffman-coded data of a baseline JPEG (without the inverse DCT) and
  raises ScanDamage unless every code exists, no block has more than 64 coefficients
  and each restart interval holds exactly the header's number of blocks.
  Returns False for JPEGs it does not check (progressive, arithmetic, lossless)."""
  tables, restart, frame, quant = {}, 0, None, {}
  for marker, payload, end in _segments(data):
    if marker in _SOF_OTHER:
      return False
    if marker in _SOF_BASELINE:
      height, width = int.from_bytes(payload[1:3], "big"), int.from_bytes(payload[3:5], "big")
      comps = {payload[6 + 3 * c]: (payload[7 + 3 * c] >> 4, payload[7 + 3 * c] & 15, payload[8 + 3 * c])
               for c in range(payload[5])}
      frame = (width, height, comps)
    elif marker == 0xC4:
      j = 0
      while j < len(payload):
        kind, count = payload[j], sum(payload[j + 1:j + 17])
        tables[kind] = payload[j + 1:j + 17 + count]
        j += 17 + count
    elif marker == 0xDB:
      j = 0
      while j < len(payload):
        wide = payload[j] >> 4
        quant[payload[j] & 15] = int.from_bytes(payload[j + 1:j + 2 + wide], "big") or 1
        j += 65 + 64 * wide
    elif marker == 0xDD:
      restart = int.from_bytes(payload[:2], "big")
    elif marker == 0xDA:
      if frame is None:
        raise ScanDamage("scan before the frame header")
      scan_end = _entropy_end(data, end)
      _check_scan(data[end:scan_end], payload, frame, tables, quant, restart)
      return True  # the first scan (all of a single-scan file) is checked
  return frame is not None


def _check_scan(entropy: bytes, header: bytes, frame, tables, quant, restart) -> None:
  width, height, comps = frame
  hmax = max(c[0] for c in comps.values())
  vmax = max(c[1] for c in comps.values())
  members = [(header[1 + 2 * c], header[2 + 2 * c]) for c in range(header[0])]
  units = []  # (dc table, ac table, blocks per MCU)
  for comp, selectors in members:
    h, v, tq = comps[comp]
    dc, ac = tables.get(selectors >> 4), tables.get(0x10 | (selectors & 15))
    if dc is None or ac is None:
      raise ScanDamage("scan uses a Huffman table that is not defined")
    # The largest DC value a block can have: 8 x (255 - 128) in units of the DC quantiser.
    limit = (1024 + quant.get(tq, 1)) // quant.get(tq, 1)
    units.append((_table(bytes(dc), False), _table(bytes(ac), True), h * v if len(members) > 1 else 1, limit))
  if len(members) > 1:
    mcus = math.ceil(width / (8 * hmax)) * math.ceil(height / (8 * vmax))
  else:
    h, v, _ = comps[members[0][0]]
    mcus = math.ceil(math.ceil(width * h / hmax) / 8) * math.ceil(math.ceil(height * v / vmax) / 8)
  intervals = _intervals(entropy)
  per_interval = restart or mcus
  expected = math.ceil(mcus / per_interval)
  if len(intervals) != expected:
    raise ScanDamage(f"{len(intervals)} restart intervals where the header implies {expected}")
  for n, interval in enumerate(intervals):
    count = min(per_interval, mcus - n * per_interval)
    _check_interval(interval.replace(b"\xff\x00", b"\xff"), units, count)


def _intervals(entropy: bytes) -> list:
  """The entropy-coded data split at its restart markers, which must count 0..7 in turn."""
  parts, start, expected, i = [], 0, 0, entropy.find(b"\xff")
  while i != -1 and i + 1 < len(entropy):
    following = entropy[i + 1]
    if 0xD0 <= following <= 0xD7:
      if following != 0xD0 + expected:
        raise ScanDamage(f"restart marker RST{following - 0xD0} where RST{expected} was due")
      parts.append(entropy[start:i])
      start, expected = i + 2, (expected + 1) % 8
    i = entropy.find(b"\xff", i + 2 if following != 0xFF else i + 1)
  parts.append(entropy[start:])
  return parts


def _check_interval(bits: bytes, units, count: int) -> None:
  windows, total, pos = _windows(bits), len(bits) * 8, 0
  predictors = [0] * len(units)
  for _ in range(count):
    for u, ((dc_advance, dc_code), (ac_advance, ac_step), blocks, limit) in enumerate(units):
      for _ in range(blocks):
        window = windows[pos] if pos < total else 0
        advance = dc_advance[window] if pos < total else 0
        if not advance:
          raise ScanDamage(_where(pos, total, "bad DC code"))
        size, length = dc_code[window] >> 8, dc_code[window] & 255
        if size:
          value = windows[pos + length] >> (16 - size) if pos + length < total else 0
          predictors[u] += value if value >> (size - 1) else value - (1 << size) + 1
          if abs(predictors[u]) > limit:
            raise ScanDamage(_where(pos, total, "a block brighter than white or darker than black"))
        pos += advance
        k = 1
        while k < 64:
          if pos >= total:
            raise ScanDamage(_where(pos, total, "data ends inside a block"))
          window = windows[pos]
          advance = ac_advance[window]
          if not advance:
            raise ScanDamage(_where(pos, total, "bad AC code"))
          pos += advance
          if ac_step[window] == 64:
            break
          k += ac_step[window]
          if k > 64:
            raise ScanDamage(_where(pos, total, "a block with more than 64 coefficients"))
  if pos > total:
    raise ScanDamage(_where(pos, total, "data ends before the last block"))
  if total - pos >= 8:
    raise ScanDamage(f"{(total - pos) // 8} bytes of coded data left after the last block")


def _where(pos, total, what):
  return f"{what} at bit {pos} of {total}"


def read_file(path, max_bytes: Optional[int] = None) -> bytes:
  """The bytes of a frame file. Only regular files are read (after following symlinks),
  at most `max_bytes` (default MAX_FRAME_BYTES): a FIFO would block the build forever
  and /dev/zero would fill memory. Raises FrameFileError saying what the path is."""
  limit = MAX_FRAME_BYTES if max_bytes is None else max_bytes
  info = os.stat(path)
  if not stat.S_ISREG(info.st_mode):
    raise FrameFileError(f"not a regular file ({_file_kind(info.st_mode)}); replace it with the image file")
  if info.st_size > limit:
    raise FrameFileError(f"file of {info.st_size} bytes is larger than the {limit}-byte limit "
                         "for one frame (blastjax.data.frames.MAX_FRAME_BYTES)")
  with open(path, "rb") as f:
    data = f.read(limit + 1)
  if len(data) > limit:
    raise FrameFileError(f"file grew past the {limit}-byte limit for one frame while read")
  return data


def _file_kind(mode: int) -> str:
  kinds = ((stat.S_ISFIFO, "a FIFO / named pipe"), (stat.S_ISCHR, "a character device"),
           (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))
  return next((name for test, name in kinds if test(mode)), "not a plain file")


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
