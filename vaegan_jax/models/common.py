"""Sizes shared by every model: how many 2x stages an image size takes."""


def num_stages(size: int) -> int:
  """Number of stride-2 stages from `size` down to a base of 7 or 8 pixels.

  28 -> 2 (7x7), 32 -> 2 (8x8), 64 -> 3 (8x8).
  """
  stages = 0
  while size % 2 == 0 and size > 8:
    size //= 2
    stages += 1
  return stages


def base_size(size: int) -> int:
  return size // 2 ** num_stages(size)
