"""Input checks shared by the image models: one error message, the same everywhere."""

from __future__ import annotations

from typing import Optional


def check_in_channels(model_name: str, in_channels: Optional[int], x) -> None:
  """Raises when a model built for `in_channels` channels gets an input with another count.

  `in_channels=None` (the default of every model) accepts any channel count: the first
  convolution is built for what it sees.
  """
  if in_channels is not None and x.shape[-1] != in_channels:
    raise ValueError(f"{model_name} built with in_channels={in_channels} got an input with "
                     f"{x.shape[-1]} channels (shape {tuple(x.shape)}); pass images [B, H, W, "
                     f"{in_channels}] or build the model with in_channels={x.shape[-1]}")
