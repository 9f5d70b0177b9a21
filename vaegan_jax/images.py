"""Image grids and PNG files."""

import os

import numpy as np
from PIL import Image


def to_uint8(images) -> np.ndarray:
  """Float images in [0, 1] -> uint8, same shape."""
  return np.round(np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255).astype(np.uint8)


def make_grid(images, ncol: int | None = None, pad: int = 2, pad_value: int = 255):
  """Tiles images (N, H, W, C) in [0, 1] into one uint8 (H', W', C) grid."""
  images = to_uint8(images)
  n, h, w, c = images.shape
  ncol = ncol or int(np.ceil(np.sqrt(n)))
  nrow = int(np.ceil(n / ncol))
  grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), pad_value, np.uint8)
  for i in range(n):
    r, q = divmod(i, ncol)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h,
         pad + q * (w + pad):pad + q * (w + pad) + w] = images[i]
  return grid


def side_by_side(grids, gap: int = 8, pad_value: int = 255):
  """Joins uint8 grids of equal height horizontally with a gap."""
  h = max(g.shape[0] for g in grids)
  c = grids[0].shape[2]
  parts = []
  for i, g in enumerate(grids):
    if i:
      parts.append(np.full((h, gap, c), pad_value, np.uint8))
    parts.append(np.pad(g, ((0, h - g.shape[0]), (0, 0), (0, 0)),
                        constant_values=pad_value))
  return np.concatenate(parts, axis=1)


def save_png(path: str, grid: np.ndarray):
  """Writes a uint8 (H, W, 1|3) grid as PNG; byte-identical for equal input."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  img = grid[..., 0] if grid.shape[-1] == 1 else grid
  Image.fromarray(img).save(path, format='PNG', optimize=False)
