"""Reading the user's own pictures (`sample --images=PATH`) as model inputs.

Grids and PNG files are drawn by vaegan_jax/viz.py.
"""

import os

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')


def _image_files(path: str) -> list[str]:
  if os.path.isdir(path):
    return [os.path.join(path, f) for f in sorted(os.listdir(path))
            if f.lower().endswith(IMAGE_EXTENSIONS) and
            os.path.isfile(os.path.join(path, f))]
  return [path]


def _to_model_image(img, image_shape) -> np.ndarray:
  """A PIL image -> uint8 (H, W, C): channels converted, centre cropped to the
  model's aspect ratio, resized (`data.folder.to_channels` decodes)."""
  from vaegan_jax.data import folder  # pylint: disable=g-import-not-at-top
  height, width, channels = image_shape
  # As folder datasets decode: 16-bit scaled, palettes, alpha premultiplied.
  a = folder.to_channels(img, channels)
  img = Image.fromarray(a[..., 0] if channels == 1 else a)
  w, h = img.size
  target = width / height
  if w / h > target:     # Too wide: crop the sides.
    cw = max(1, round(h * target))
    img = img.crop(((w - cw) // 2, 0, (w - cw) // 2 + cw, h))
  elif w / h < target:   # Too tall: crop top and bottom.
    ch = max(1, round(w / target))
    img = img.crop((0, (h - ch) // 2, w, (h - ch) // 2 + ch))
  if img.size != (width, height):
    img = img.resize((width, height), Image.Resampling.LANCZOS)
  return np.asarray(img, np.uint8).reshape(height, width, channels)


def load_images(path: str, image_shape) -> np.ndarray:
  """Reads a PNG/JPEG file, or every PNG/JPEG in a folder (sorted by name).

  Each image is converted to the model's channels (grey or RGB), centre
  cropped to its aspect ratio and resized to its resolution. Unreadable files
  in a folder are skipped.

  Args:
    path: a PNG or JPEG file, or a folder holding some.
    image_shape: (H, W, C) of the model, C 1 or 3.

  Returns:
    float32 (N, H, W, C) in [0, 1].

  Raises:
    UserError: the path does not exist or holds no readable image.
  """
  from vaegan_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  if not os.path.exists(path):
    raise UserError(f'Image path {path} does not exist.')
  out = []
  for f in _image_files(path):
    try:
      with Image.open(f) as img:
        out.append(_to_model_image(img, image_shape))
    except (OSError, ValueError):
      continue
  if not out:
    raise UserError(f'No readable PNG or JPEG image in {path}.')
  return np.stack(out).astype(np.float32) / np.float32(255.0)
