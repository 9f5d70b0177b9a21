"""Pictures: image grids with titles and labels, PNG files, training curves.

Everything the project draws goes through here: the training loop's
`samples/step_*.png`, `python -m vaegan_jax.sample`, `python -m
vaegan_jax.plot`, the comparison study and the notebook.

    panels = [viz.Panel(samples, 'prior samples'), viz.Panel(x, 'test images')]
    viz.save('grid.png', panels)                 # titled, >= 256 px wide

A figure is a row of panels. Each panel is a grid of images (`make_grid`'s
tiling) with a title above it and, optionally, a label under every image
(`captions`, e.g. the class of each sample), beside every row (`row_labels`)
or above every column (`col_labels`), and a frame around some images
(`marked`, e.g. the ends of an interpolation). The whole figure is enlarged by
an integer factor with nearest-neighbour repetition, `scale`: by default the
smallest that makes it at least `MIN_WIDTH` pixels wide, so every pixel of a
28 x 28 digit stays a visible square of identical pixels. Text is drawn after
enlarging, with PIL's default font, so it stays small and sharp. The same
panels give the same PNG bytes.
"""

import collections
import dataclasses
import functools
import math
import os
from typing import Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

MIN_WIDTH = 256       # Auto-scaled figures are at least this wide (pixels).
MAX_AUTO_SCALE = 8    # ... by a factor of at most this.
PAD = 2               # Pixels between tiles (before scaling), as in `make_grid`.
GAP = 8               # Pixels between panels.
MARGIN = 3            # Pixels around text.
WHITE, INK = 255, 0
MARK = {1: (128,), 3: (230, 120, 0)}  # Frame colour of marked tiles, grey / RGB.


# ---------------------------------------------------------------------------
# Plain grids and PNG files.
# ---------------------------------------------------------------------------


def to_uint8(images) -> np.ndarray:
  """Float images in [0, 1] -> uint8, same shape (uint8 input is returned as is)."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  return np.round(np.clip(images.astype(np.float32), 0.0, 1.0) * 255).astype(np.uint8)


def make_grid(images, ncol: int | None = None, pad: int = PAD, pad_value: int = WHITE):
  """Tiles images (N, H, W, C) in [0, 1] into one uint8 (H', W', C) grid,
  `ncol` columns (default ceil(sqrt(N))), `pad` pixels around each tile."""
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


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
  """Nearest-neighbour enlargement of (H, W[, C]) by an integer factor."""
  if scale == 1:
    return image
  return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def save_png(path: str, image: np.ndarray):
  """Writes a uint8 (H, W, 1|3) image as PNG; byte-identical for equal input."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  img = image[..., 0] if image.shape[-1] == 1 else image
  Image.fromarray(img).save(path, format='PNG', optimize=False)


# ---------------------------------------------------------------------------
# Titled figures.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Panel:
  """One grid of a figure.

  Attributes:
    images: (N, H, W, C) float in [0, 1] or uint8; C is 1 or 3.
    title: drawn above the grid.
    ncol: columns of the grid; default ceil(sqrt(N)).
    captions: N strings, one under each image (e.g. its class), or None.
    row_labels: one string per grid row, drawn left of it, or None.
    col_labels: one string per grid column, drawn above it, or None.
    marked: indices of the images to frame.
  """
  images: np.ndarray
  title: str = ''
  ncol: int | None = None
  captions: Sequence[str] | None = None
  row_labels: Sequence[str] | None = None
  col_labels: Sequence[str] | None = None
  marked: Sequence[int] = ()

  def shape(self):
    """(rows, cols) of the grid."""
    n = len(self.images)
    ncol = self.ncol or int(np.ceil(np.sqrt(n)))
    return int(np.ceil(n / ncol)), ncol


Rendered = collections.namedtuple('Rendered', 'image scale tiles')
Rendered.__doc__ = """A drawn figure.

image: uint8 (H, W, C). scale: the enlargement used. tiles: per panel, per
image, its (top, left, height, width) box in `image`.
"""


@functools.lru_cache(maxsize=1)
def font():
  """PIL's default font (a small FreeType font where PIL has FreeType)."""
  return ImageFont.load_default()


def _text_width(text: str) -> int:
  return int(math.ceil(font().getlength(text))) if text else 0


@functools.lru_cache(maxsize=1)
def line_height() -> int:
  """Pixels of one line of text with its margins."""
  left, top, right, bottom = font().getbbox('Ag0|')
  return bottom - min(top, 0) + 2 * MARGIN


def auto_scale(panels: Sequence[Panel], min_width: int = MIN_WIDTH) -> int:
  """The smallest integer factor that makes the panels' grids together at
  least `min_width` pixels wide (at most MAX_AUTO_SCALE)."""
  width = 0
  for p in panels:
    _, ncol = p.shape()
    width += ncol * (np.shape(p.images)[2] + PAD) + PAD
  return int(min(MAX_AUTO_SCALE, max(1, math.ceil(min_width / max(width, 1)))))


def _panel_layout(panel: Panel, scale: int, with_title: bool):
  """Sizes and tile boxes of one panel, relative to its top-left corner."""
  n, h, w, _ = np.shape(panel.images)
  rows, ncol = panel.shape()
  th, tw, pad = h * scale, w * scale, PAD * scale
  line = line_height()
  cap = line if panel.captions is not None else 0
  left = (max(_text_width(str(t)) for t in panel.row_labels) + 2 * MARGIN
          if panel.row_labels else 0)
  top = (line if with_title else 0) + (line if panel.col_labels else 0)
  grid_w = ncol * (tw + pad) + pad
  grid_h = rows * (th + pad + cap) + pad
  width = max(left + grid_w, _text_width(panel.title) + 2 * MARGIN)
  boxes = []
  for i in range(n):
    r, q = divmod(i, ncol)
    boxes.append((top + pad + r * (th + pad + cap), left + pad + q * (tw + pad), th, tw))
  return {'width': width, 'height': top + grid_h, 'left': left, 'top': top,
          'pitch_h': th + pad + cap, 'pitch_w': tw + pad, 'pad': pad, 'cap': cap,
          'boxes': boxes}


def render(panels: Sequence[Panel], scale: int = 0) -> Rendered:
  """Draws panels side by side (see the module doc).

  Args:
    panels: Panels whose images share H, W and C.
    scale: integer enlargement; 0 = `auto_scale`.

  Returns:
    A `Rendered`: the uint8 image (H, W, C) and where each tile landed.
  """
  scale = int(scale) or auto_scale(panels)
  if scale < 1:
    raise ValueError(f'scale must be >= 1, got {scale}.')
  channels = np.shape(panels[0].images)[3]
  with_title = any(p.title for p in panels)
  layouts = [_panel_layout(p, scale, with_title) for p in panels]
  width = sum(l['width'] for l in layouts) + GAP * (len(panels) - 1)
  height = max(l['height'] for l in layouts)
  canvas = np.full((height, width, channels), WHITE, np.uint8)
  texts, tiles, x0 = [], [], 0
  for panel, lay in zip(panels, layouts):
    images = to_uint8(panel.images)
    boxes = [(t, x0 + l, h, w) for t, l, h, w in lay['boxes']]
    pad = lay['pad']
    for i in panel.marked:
      t, l, h, w = boxes[i]
      canvas[t - pad:t + h + pad, l - pad:l + w + pad] = MARK[channels]
    for image, (t, l, h, w) in zip(images, boxes):
      canvas[t:t + h, l:l + w] = upscale(image, scale)
    tiles.append(boxes)
    line = line_height()
    if panel.title:
      texts.append((x0 + MARGIN, 0, panel.title, None))
    if panel.col_labels:
      for q, label in enumerate(panel.col_labels):
        centre = x0 + lay['left'] + pad + q * lay['pitch_w'] + (lay['pitch_w'] - pad) // 2
        texts.append((centre, lay['top'] - line, str(label), 'centre'))
    if panel.row_labels:
      for r, label in enumerate(panel.row_labels):
        middle = lay['top'] + pad + r * lay['pitch_h'] + (lay['pitch_h'] - pad - lay['cap']) // 2
        texts.append((x0 + MARGIN, middle - line // 2, str(label), None))
    if panel.captions is not None:
      for (t, l, h, w), caption in zip(boxes, panel.captions):
        if caption is not None and str(caption):
          texts.append((l + w // 2, t + h, str(caption), 'centre'))
    x0 += lay['width'] + GAP
  if texts:
    canvas = _draw_texts(canvas, texts)
  return Rendered(canvas, scale, tiles)


def _draw_texts(canvas: np.ndarray, texts) -> np.ndarray:
  """Draws (x, top, text, align) items in black; align 'centre' centres on x."""
  channels = canvas.shape[-1]
  img = Image.fromarray(canvas[..., 0] if channels == 1 else canvas)
  draw = ImageDraw.Draw(img)
  ink = INK if channels == 1 else (INK,) * 3
  for x, top, text, align in texts:
    if align == 'centre':
      x -= _text_width(text) // 2
    draw.text((x, top + MARGIN), text, fill=ink, font=font())
  out = np.asarray(img, np.uint8)
  return out[..., None] if channels == 1 else out


def save(path: str, panels: Sequence[Panel], scale: int = 0) -> Rendered:
  """`render`s the panels and writes the PNG; returns the `Rendered`."""
  rendered = render(panels, scale)
  save_png(path, rendered.image)
  return rendered


def class_captions(labels) -> list[str] | None:
  """Captions for the images of a class-conditional model: their class
  numbers; None for None (an unconditional model)."""
  if labels is None:
    return None
  return [str(int(y)) for y in np.asarray(labels).reshape(-1)]


# ---------------------------------------------------------------------------
# Curves from metrics.jsonl.
# ---------------------------------------------------------------------------

EVAL_PREFIX = 'eval/'


def group_of(key: str) -> str:
  """The axis a logged key is drawn on: 'eval/elbo' with 'elbo' (train and
  test), 'eval/kid_std' with 'kid' (a band), 'eval/cond_accuracy/3' with
  'cond_accuracy' (one line per class)."""
  name = key[len(EVAL_PREFIX):] if key.startswith(EVAL_PREFIX) else key
  base, _, suffix = name.rpartition('/')
  if base and suffix.isdigit():
    name = base
  if name.endswith('_std'):
    name = name[:-len('_std')]
  return name


def metric_groups(rows: Sequence[dict]) -> dict:
  """{group: [keys]} over the logged rows, training keys first, in the order
  they were logged; 'step' is the x axis, not a metric."""
  keys = []
  for row in rows:
    keys += [k for k in row if k != 'step' and k not in keys]
  keys.sort(key=lambda k: k.startswith(EVAL_PREFIX))  # Stable: order kept within.
  groups = {}
  for k in keys:
    groups.setdefault(group_of(k), []).append(k)
  return groups


def _series(rows, key):
  points = [(r['step'], r[key]) for r in rows if key in r and r[key] is not None]
  if not points:
    return np.zeros(0), np.zeros(0)
  steps, values = zip(*points)
  return np.asarray(steps, np.float64), np.asarray(values, np.float64)


def _line_label(key: str) -> str:
  """'class 3' for a per-class key, else 'test' (eval/...) or 'train'."""
  is_eval = key.startswith(EVAL_PREFIX)
  base, _, suffix = (key[len(EVAL_PREFIX):] if is_eval else key).rpartition('/')
  if base and suffix.isdigit():
    return f'class {suffix}'
  return 'test' if is_eval else 'train'


def curves_figure(rows: Sequence[dict], title: str = '', ncols: int = 4):
  """One matplotlib axis per metric group (`metric_groups`) of logged rows.

  Training keys are lines, evaluation keys ('eval/...') lines with dots,
  a '_std' key a band around its metric, per-class keys one line each.

  Args:
    rows: metrics.jsonl rows, each {'step': int, key: float, ...}.
    title: the figure's title.
    ncols: axes per row of the figure.

  Returns:
    The matplotlib Figure (Agg backend); `fig.axes` holds one axis per group.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  groups = metric_groups(rows)
  n = max(1, len(groups))
  ncols = min(ncols, n)
  nrows = math.ceil(n / ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.4 * nrows + 0.4),
                           squeeze=False)
  axes = axes.ravel()
  for ax, (group, keys) in zip(axes, groups.items()):
    for key in keys:
      if key.endswith('_std') and key[:-len('_std')] in keys:
        continue
      steps, values = _series(rows, key)
      is_eval = key.startswith(EVAL_PREFIX)
      ax.plot(steps, values, marker='o' if is_eval else None, markersize=3,
              linewidth=1.2, label=_line_label(key))
      if key + '_std' in keys:
        s_steps, std = _series(rows, key + '_std')
        if len(std) == len(values):
          ax.fill_between(s_steps, values - std, values + std, alpha=0.25)
    ax.set_title(group, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if len(ax.lines) > 1:
      ax.legend(fontsize=6, ncol=2 if len(ax.lines) > 4 else 1)
  for ax in axes[len(groups):]:
    fig.delaxes(ax)
  for ax in fig.axes[-ncols:]:
    ax.set_xlabel('step', fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def save_curves(path: str, rows: Sequence[dict], title: str = '', dpi: int = 80) -> str:
  """Writes `curves_figure(rows, title)` as a PNG; returns `path`."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig = curves_figure(rows, title)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return path
