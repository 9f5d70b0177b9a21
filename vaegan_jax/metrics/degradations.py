"""Controlled degradations of real images: the ladder a sample metric must climb.

A metric that ranks generative models must get worse as real images are
damaged in ways a person can see, and must rank the damages the way a person
would. Each function here takes real images and returns a damaged copy; each
is a pure function of its arguments (NumPy/SciPy on the host, randomness
from an explicit integer `seed` through `np.random.default_rng`), so a ladder
is reproducible bit for bit. `LADDERS` lists the degradations the project
checks its metrics with (experiments/metric_sanity.py, README "Evaluation"),
3-5 severities each, the first severity of every ladder being the clean
images.

Images are float32 (N, H, W, C) in [0, 1] (uint8 inputs are scaled by 1/255);
outputs are float32 (N, H, W, C) in [0, 1] unless said otherwise.

Fidelity damages (each image on its own):
  gaussian_blur     Gaussian filter of std `sigma` px (0: identity)
  gaussian_noise    additive N(0, std²) per pixel, clipped to [0, 1]
  salt_and_pepper   a `fraction` of pixels set to 0 or 1 (half each)
  elastic_warp      Simard et al. 2003 elastic distortion, strength `alpha` px
  erase_strokes     a `fraction` of the stroke pixels erased in smooth patches
                    (broken strokes)
  dilate            grey dilation by a disk of `radius` px (strokes swell into
                    blobs)
  mix_noise         a `fraction` of the images replaced by uniform noise
Holes (masks for inpainting, 1 = observed):
  center_hole       a centred box of a `fraction` of the side
  block_holes       random squares of a `fraction` of the side
Diversity damages (the set):
  drop_classes      the images of `k` classes removed (mode dropping)
  memorise          exact copies of only `num_distinct` training images
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from scipy import ndimage


def as_float(images) -> np.ndarray:
  """uint8 (N, H, W, C) -> float32 / 255; float input -> float32 copy."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255.0
  return np.array(images, np.float32)


def _check(images) -> np.ndarray:
  x = as_float(images)
  if x.ndim != 4:
    raise ValueError(f'images must have shape (N, H, W, C); got {x.shape}.')
  return x


def draw(num_available: int, n: int, seed: int) -> np.ndarray:
  """Indices of `n` images out of `num_available`: without replacement while
  there are enough, else a random permutation repeated (each image used
  floor(n / num_available) or one more times).

  Returns:
    int64 (n,) indices into [0, num_available).
  """
  if num_available < 1:
    raise ValueError('draw needs at least one image to draw from.')
  perm = np.random.default_rng(seed).permutation(num_available)
  return np.resize(perm, n)


# ---------------------------------------------------------------------------
# Fidelity damages.
# ---------------------------------------------------------------------------


def gaussian_blur(images, sigma: float) -> np.ndarray:
  """Each image and channel filtered with a Gaussian of std `sigma` pixels.

  Zero padding outside the image (the digits' black background); the kernel
  is truncated at 4 sigma (`scipy.ndimage.gaussian_filter`). sigma = 0 returns
  the images unchanged. `sigma`: standard deviation in pixels, >= 0.
  """
  x = _check(images)
  if sigma < 0:
    raise ValueError(f'sigma must be >= 0; got {sigma}.')
  if sigma == 0:
    return x
  return np.clip(ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode='constant'),
                 0.0, 1.0).astype(np.float32)


def gaussian_noise(images, std: float, seed: int) -> np.ndarray:
  """x + std * N(0, 1) per pixel, clipped to [0, 1]. std = 0: unchanged.

  Args:
    images: (N, H, W, C).
    std: noise standard deviation (in units of the [0, 1] range).
    seed: seeds the noise.

  Returns:
    (N, H, W, C) float32.
  """
  x = _check(images)
  noise = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
  return np.clip(x + np.float32(std) * noise, 0.0, 1.0)


def salt_and_pepper(images, fraction: float, seed: int) -> np.ndarray:
  """A random `fraction` of the pixels (all channels of a pixel together) set
  to 1 (salt) or 0 (pepper), with equal probability.

  Args:
    images: (N, H, W, C).
    fraction: probability that a pixel is replaced, in [0, 1].
    seed: seeds which pixels and which value.

  Returns:
    (N, H, W, C) float32.
  """
  x = _check(images)
  rng = np.random.default_rng(seed)
  hit = rng.random(x.shape[:3]) < fraction
  salt = rng.random(x.shape[:3]) < 0.5
  x[hit & salt] = 1.0
  x[hit & ~salt] = 0.0
  return x


def center_hole(n: int, height: int, width: int, fraction: float) -> np.ndarray:
  """Masks hiding a centred box of round(`fraction` x side) pixels (at least 1).

  Returns:
    float32 (n, height, width, 1): 1 where a pixel is observed, 0 in the hole
    (the convention of vaegan_jax.applications).
  """
  if not 0 < fraction <= 1:
    raise ValueError(f'fraction must be in (0, 1]; got {fraction}.')
  bh, bw = max(1, round(height * fraction)), max(1, round(width * fraction))
  top, left = (height - bh) // 2, (width - bw) // 2
  mask = np.ones((n, height, width, 1), np.float32)
  mask[:, top:top + bh, left:left + bw] = 0.0
  return mask


def block_holes(n: int, height: int, width: int, fraction: float, seed: int,
                num_blocks: int = 4) -> np.ndarray:
  """Masks hiding `num_blocks` squares of side round(`fraction` x side), each
  placed uniformly at random per image (they may overlap).

  Returns:
    float32 (n, height, width, 1): 1 observed, 0 hidden.
  """
  if not 0 < fraction <= 1:
    raise ValueError(f'fraction must be in (0, 1]; got {fraction}.')
  bh, bw = max(1, round(height * fraction)), max(1, round(width * fraction))
  rng = np.random.default_rng(seed)
  top = rng.integers(0, height - bh + 1, (n, num_blocks))
  left = rng.integers(0, width - bw + 1, (n, num_blocks))
  mask = np.ones((n, height, width, 1), np.float32)
  for i in range(n):
    for t, l in zip(top[i], left[i]):
      mask[i, t:t + bh, l:l + bw] = 0.0
  return mask


def elastic_warp(images, alpha: float, seed: int, sigma: float = 3.0) -> np.ndarray:
  """Elastic distortion (Simard, Steinkraus & Platt 2003, §2).

  A displacement field, uniform in [-1, 1] per pixel and axis, is smoothed by
  a Gaussian of std `sigma` and scaled by `alpha`; each image is resampled at
  the displaced coordinates (bilinear, zero outside). alpha = 0: unchanged.
  The paper uses alpha = 34, sigma = 4 as a label-preserving augmentation.

  Args:
    images: (N, H, W, C).
    alpha: strength (pixels of displacement before smoothing shrinks it).
    seed: seeds the displacement fields (one per image).
    sigma: smoothness of the field, pixels.

  Returns:
    (N, H, W, C) float32.
  """
  x = _check(images)
  if alpha == 0:
    return x
  n, h, w, c = x.shape
  rng = np.random.default_rng(seed)
  field = rng.uniform(-1.0, 1.0, (2, n, h, w))
  field = ndimage.gaussian_filter(field, sigma=(0, 0, sigma, sigma), mode='constant') * alpha
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  out = np.empty_like(x)
  for i in range(n):
    coords = [rows + field[0, i], cols + field[1, i]]
    for ch in range(c):
      out[i, :, :, ch] = ndimage.map_coordinates(x[i, :, :, ch], coords, order=1,
                                                 mode='constant', cval=0.0)
  return np.clip(out, 0.0, 1.0)


def stroke_mask(images, threshold: float = 0.5) -> np.ndarray:
  """bool (N, H, W): pixels whose brightest channel exceeds `threshold`."""
  return _check(images).max(axis=-1) > threshold


def erase_strokes(images, fraction: float, seed: int, patch_sigma: float = 1.5) -> np.ndarray:
  """Breaks strokes: erases (sets to 0) a `fraction` of each image's stroke
  pixels, in smooth patches rather than single pixels.

  A Gaussian random field (white noise smoothed with std `patch_sigma` px) is
  drawn per image; every pixel whose field value lies below the field's
  `fraction`-quantile over that image's stroke pixels (`stroke_mask`) is set
  to 0, so about `fraction` of the stroke pixels disappear in blobs of a few
  pixels, and the faint pixels around them too. fraction = 0: unchanged.

  Args:
    images: (N, H, W, C).
    fraction: share of stroke pixels to erase, in [0, 1].
    seed: seeds the fields.
    patch_sigma: size of the erased patches, pixels.

  Returns:
    (N, H, W, C) float32.
  """
  x = _check(images)
  if fraction <= 0:
    return x
  field = ndimage.gaussian_filter(
      np.random.default_rng(seed).standard_normal(x.shape[:3]),
      sigma=(0, patch_sigma, patch_sigma), mode='wrap')
  strokes = stroke_mask(x)
  for i in range(len(x)):
    values = field[i][strokes[i]]
    if values.size == 0:
      continue
    cut = np.quantile(values, min(fraction, 1.0)) if fraction < 1 else np.inf
    x[i][field[i] <= cut] = 0.0
  return x


def disk(radius: int) -> np.ndarray:
  """bool (2r+1, 2r+1) footprint: the pixels (y, x) with y² + x² <= r² + r,
  i.e. within about r + 1/2 of the centre (radius 1: the 3x3 square; 2: the
  5x5 square less its corners)."""
  r = int(radius)
  yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
  return yy**2 + xx**2 <= r * r + r


def dilate(images, radius: int) -> np.ndarray:
  """Grey dilation (a local maximum) over a disk of `radius` pixels: strokes
  thicken, holes close and, from a radius of 2-3 px on a 28-px digit, the
  digit swells into a blob. `radius`: an integer number of pixels, >= 0
  (0: unchanged).
  """
  x = _check(images)
  if radius == 0:
    return x
  footprint = disk(radius)[None, :, :, None]
  return ndimage.grey_dilation(x, footprint=footprint, mode='constant', cval=0.0)


def noise_images(n: int, shape: tuple[int, int, int], seed: int) -> np.ndarray:
  """(n, *shape) float32 images of uniform [0, 1] pixel noise."""
  return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def mix_noise(images, fraction: float, seed: int) -> np.ndarray:
  """round(fraction * N) randomly chosen images replaced by `noise_images`.

  Args:
    images: (N, H, W, C).
    fraction: share of images to replace, in [0, 1].
    seed: seeds which images and the noise.

  Returns:
    (N, H, W, C) float32.
  """
  x = _check(images)
  k = int(round(fraction * len(x)))
  if k == 0:
    return x
  rng = np.random.default_rng(seed)
  which = rng.permutation(len(x))[:k]
  x[which] = noise_images(k, x.shape[1:], int(rng.integers(2**31)))
  return x


# ---------------------------------------------------------------------------
# Diversity damages (they choose which real images form the set).
# ---------------------------------------------------------------------------


def drop_classes(images, labels, k: int, seed: int, num_classes: int = 10):
  """Removes the images of `k` randomly chosen classes (mode dropping).

  Args:
    images: (N, H, W, C).
    labels: int (N,) class labels in [0, num_classes).
    k: number of classes to drop, 0 <= k < num_classes.
    seed: seeds which classes.
    num_classes: K.

  Returns:
    (images (M, H, W, C) float32, labels (M,)) of the K - k kept classes.
  """
  if not 0 <= k < num_classes:
    raise ValueError(f'k must be in [0, {num_classes}); got {k}.')
  labels = np.asarray(labels)
  dropped = np.random.default_rng(seed).permutation(num_classes)[:k]
  keep = ~np.isin(labels, dropped)
  return _check(images)[keep], labels[keep]


def memorise(images, num_distinct: int, n: int, seed: int) -> np.ndarray:
  """A "memorising model": `n` images that are exact copies of only
  `num_distinct` of `images` (random ones), each copied n / num_distinct
  times (within one).

  With num_distinct >= n every image is a distinct exact copy: a model that
  reproduces its training set.

  Args:
    images: (N, H, W, C) the training images.
    num_distinct: how many different images are copied, 1 <= num_distinct.
    n: number of images to return.
    seed: seeds which images.

  Returns:
    (n, H, W, C) float32.
  """
  if num_distinct < 1:
    raise ValueError(f'num_distinct must be at least 1; got {num_distinct}.')
  x = _check(images)
  chosen = np.random.default_rng(seed).permutation(len(x))[:min(num_distinct, len(x), n)]
  return x[np.resize(chosen, n)]


# ---------------------------------------------------------------------------
# The ladders.
# ---------------------------------------------------------------------------

FIDELITY = 'fidelity'
DIVERSITY = 'diversity'


@dataclasses.dataclass(frozen=True)
class Ladder:
  """One degradation at increasing severities.

  Attributes:
    name: short key.
    title: what it does, for tables.
    parameter: the severity's meaning and unit.
    severities: the parameter values, increasing damage; the first is 0
      (clean) except for `memorise` (every image a copy, all distinct).
    kind: FIDELITY (damages each image) or DIVERSITY (damages the set).
  """
  name: str
  title: str
  parameter: str
  severities: tuple
  kind: str


LADDERS = {l.name: l for l in (
    Ladder('blur', 'Gaussian blur', 'sigma (px)', (0.0, 0.5, 1.0, 1.5, 2.0), FIDELITY),
    Ladder('noise', 'additive Gaussian noise', 'std', (0.0, 0.05, 0.1, 0.2, 0.4), FIDELITY),
    Ladder('salt_pepper', 'salt-and-pepper', 'fraction of pixels',
           (0.0, 0.01, 0.03, 0.1, 0.3), FIDELITY),
    Ladder('elastic', 'elastic warp', 'alpha (px, sigma 3)', (0.0, 8.0, 16.0, 32.0, 64.0),
           FIDELITY),
    Ladder('erase', 'broken strokes', 'fraction of stroke pixels erased',
           (0.0, 0.1, 0.25, 0.4, 0.6), FIDELITY),
    Ladder('dilate', 'strokes dilated into blobs', 'radius (px)', (0, 1, 2, 3, 4), FIDELITY),
    Ladder('mix_noise', 'real mixed with pure-noise images', 'fraction of noise images',
           (0.0, 0.05, 0.1, 0.25, 0.5), FIDELITY),
    Ladder('drop_classes', 'classes dropped (mode dropping)', 'classes dropped',
           (0, 2, 4, 6, 8), DIVERSITY),
    Ladder('memorise', 'copies of few training images (memorisation)',
           'distinct images copied (0 = all distinct)', (0, 500, 100, 20, 5), DIVERSITY),
)}


def ladder_images(name: str, severity, images, labels, n: int, seed: int) -> np.ndarray:
  """`n` images of ladder `name` at `severity`, from the real `images`.

  The clean images are `draw(len(images), n, seed)` of `images` (for
  `drop_classes`, of the kept classes; for `memorise`, copies of
  `severity` distinct ones, 0 meaning n distinct); the damage uses `seed` too,
  so the same arguments always give the same images, and severity 0 of every
  ladder is the same clean set (memorise: n distinct images).

  Args:
    name: a key of LADDERS.
    severity: one of its severities (or any valid parameter value).
    images: (N, H, W, C) real images (uint8 or float in [0, 1]).
    labels: int (N,) their labels (used by drop_classes).
    n: number of images to return.
    seed: seeds the draw and the damage.

  Returns:
    (n, H, W, C) float32 in [0, 1].
  """
  if name not in LADDERS:
    raise ValueError(f'Unknown ladder {name!r}; one of {", ".join(LADDERS)}.')
  if name == 'drop_classes':
    kept, _ = drop_classes(images, labels, int(severity), seed)
    return kept[draw(len(kept), n, seed)] if severity else as_float(images)[
        draw(len(images), n, seed)]
  if name == 'memorise':
    if not severity:
      return as_float(images)[draw(len(images), n, seed)]
    return memorise(images, int(severity), n, seed)
  clean = as_float(images)[draw(len(images), n, seed)]
  damage: dict[str, Callable] = {
      'blur': lambda x: gaussian_blur(x, severity),
      'noise': lambda x: gaussian_noise(x, severity, seed),
      'salt_pepper': lambda x: salt_and_pepper(x, severity, seed),
      'elastic': lambda x: elastic_warp(x, severity, seed),
      'erase': lambda x: erase_strokes(x, severity, seed),
      'dilate': lambda x: dilate(x, int(severity)),
      'mix_noise': lambda x: mix_noise(x, severity, seed),
  }
  return damage[name](clean)
