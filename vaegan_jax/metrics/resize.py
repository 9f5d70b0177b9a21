"""Resize conventions of the published feature extractors, one function.

A Fréchet distance is only comparable with another computed with the same
resize: on 32-px CIFAR-10 images the conventions below move FID by a fraction
of a point to several points (Parmar et al., "On Aliased Resizing and
Surprising Subtleties in GAN Evaluation", CVPR 2022). Each is reproduced
exactly from its reference package, as separable matrices (two small
einsums per batch; jit- and sharding-friendly):

``pytorch_fid``  (pytorch-fid 0.3, ``InceptionV3.forward``; clean-fid's
    ``legacy_pytorch``)
    ``x / 255`` in float32, ``F.interpolate(mode='bilinear',
    align_corners=False)`` without antialiasing: source coordinate
    ``max((i + 0.5)·in/out - 0.5, 0)`` in float32, neighbours ``floor`` and
    ``min(floor + 1, in - 1)``. Inception input ``2x - 1``.
``clean``  (clean-fid 0.1.35 ``make_resizer('PIL', False, 'bicubic')``;
    dgm-eval ``--clean_resize``)
    pixels as float32 on ``[0, 255]``, PIL's bicubic (``a = -0.5``) resize of
    each channel as a mode-``'F'`` image, antialiased when downsampling (the
    kernel widened by the scale, PIL's ``precompute_coeffs``), horizontal pass
    then vertical, then ``clip(0, 255)``. Inception input ``(x - 128) / 128``
    (clean-fid's Inception graph).
``tf1``  (torch-fidelity 0.4 ``interpolate_bilinear_2d_like_tensorflow1x``;
    TF-GAN, the original TTUR/TF FID code; clean-fid's ``legacy_tensorflow``)
    pixels as float32 on ``[0, 255]``, TF1 ``resize_bilinear(align_corners=
    False)``: source coordinate ``i · in/out`` (no half-pixel shift) in
    float32, no antialiasing. Inception input ``(x - 128) / 128``.
``dgm_eval``  (dgm-eval's DINOv2 encoder: torchvision ``Resize(BICUBIC)`` on a
    PIL RGB image)
    PIL's bicubic resize of the uint8 image: the same kernel as ``clean`` but
    in PIL's 8-bit fixed point (coefficients ``round(k · 2^22)``, each pass
    rounded and clipped to uint8, horizontal pass first), then ``/ 255``.

Every convention gives identity at the input size. Float images in
``[0, 1]`` are scaled by 255 for ``clean`` and ``tf1`` (no rounding) and
quantised to uint8 (``round(255x)``, as a PNG would hold) for ``dgm_eval``;
grey images are repeated to three channels first (as ``convert('RGB')``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

CONVENTIONS = ('pytorch_fid', 'clean', 'tf1', 'dgm_eval')
NORMALIZATIONS = ('unit', 'inception', 'imagenet')
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PRECISION_BITS = 32 - 8 - 2  # PIL Resample.c


def check_convention(convention: str) -> str:
  if convention not in CONVENTIONS:
    raise ValueError(f'unknown resize convention {convention!r}; use one of '
                     f'{", ".join(CONVENTIONS)}')
  return convention


# ---------------------------------------------------------------------------
# Interpolation matrices (numpy, cached): row i = weights of output pixel i.
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """``F.interpolate(mode='bilinear', align_corners=False)``, no antialias.

  Source coordinate ``s = max((i + 0.5)·in/out - 0.5, 0)`` in float32 (as
  torch's ``area_pixel_compute_source_index``), ``i0 = floor(s)``,
  ``i1 = min(i0 + 1, in - 1)``, weights ``1 - (s - i0)`` and ``s - i0``.

  Returns:
    float32 ``(out_size, in_size)``; rows sum to 1.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  dst = np.arange(out_size, dtype=np.float32)
  src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0))
  return _linear_rows(src, in_size)


@functools.lru_cache(maxsize=None)
def tf1_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """TF1 ``resize_bilinear(align_corners=False)`` as torch-fidelity computes it:
  ``s = float32(i) · float32(in/out)``, neighbours ``floor(s)`` and
  ``min(floor(s) + 1, in - 1)``.

  Returns:
    float32 ``(out_size, in_size)``; rows sum to 1.
  """
  scale = np.float32(in_size / out_size)
  src = np.arange(out_size, dtype=np.float32) * scale
  return _linear_rows(src, in_size)


def _linear_rows(src: np.ndarray, in_size: int) -> np.ndarray:
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  lam = (src - i0.astype(np.float32)).astype(np.float32)
  m = np.zeros((len(src), in_size), np.float32)
  rows = np.arange(len(src))
  np.add.at(m, (rows, i0), np.float32(1) - lam)
  np.add.at(m, (rows, i1), lam)
  return m


def _pil_bicubic(x: float) -> float:
  a = -0.5
  x = abs(x)
  if x < 1.0:
    return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
  if x < 2.0:
    return (((x - 5) * x + 8) * x - 4) * a
  return 0.0


@functools.lru_cache(maxsize=None)
def pil_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """PIL's bicubic coefficients (``Resample.c: precompute_coeffs``), float64.

  Support ``2 · max(in/out, 1)`` (antialiasing when downsampling), centre
  ``(i + 0.5)·in/out``, taps ``[int(c - support + 0.5), int(c + support +
  0.5))`` clipped to the image, kernel at ``(x - c + 0.5) / max(in/out, 1)``,
  each row normalised to sum 1. Identity when ``in == out`` (PIL copies).

  Returns:
    float64 ``(out_size, in_size)``.
  """
  if in_size == out_size:
    return np.eye(in_size)
  scale = in_size / out_size
  filterscale = max(scale, 1.0)
  support = 2.0 * filterscale
  m = np.zeros((out_size, in_size))
  for xx in range(out_size):
    center = (xx + 0.5) * scale
    xmin = max(int(center - support + 0.5), 0)
    xmax = min(int(center + support + 0.5), in_size)
    w = np.array([_pil_bicubic((x - center + 0.5) / filterscale) for x in range(xmin, xmax)])
    total = w.sum()
    m[xx, xmin:xmax] = w / total if total != 0.0 else w
  return m


@functools.lru_cache(maxsize=None)
def pil_bicubic_fixed_matrix(in_size: int, out_size: int) -> np.ndarray:
  """:func:`pil_bicubic_matrix` in PIL's 8-bit fixed point
  (``normalize_coeffs_8bpc``: ``k · 2^22`` rounded half away from zero).

  Returns:
    int32 ``(out_size, in_size)``.
  """
  k = pil_bicubic_matrix(in_size, out_size) * (1 << _PRECISION_BITS)
  return np.where(k < 0, np.trunc(k - 0.5), np.trunc(k + 0.5)).astype(np.int32)


# ---------------------------------------------------------------------------
# The resize itself.
# ---------------------------------------------------------------------------


def _separable(x, m_h, m_w):
  """``m_h · x · m_wᵀ`` per image and channel, width pass first, float32."""
  x = jnp.einsum('pw,nhwc->nhpc', jnp.asarray(m_w), x, precision=lax.Precision.HIGHEST)
  return jnp.einsum('oh,nhpc->nopc', jnp.asarray(m_h), x, precision=lax.Precision.HIGHEST)


def _pil_uint8_pass(x, k, axis_spec):
  """One PIL 8-bit pass: ``clip(floor((2^21 + Σ x·k) / 2^22), 0, 255)`` in int32."""
  acc = jnp.einsum(axis_spec, jnp.asarray(k), x, preferred_element_type=jnp.int32)
  acc = acc + (1 << (_PRECISION_BITS - 1))
  return jnp.clip(jnp.right_shift(acc, _PRECISION_BITS), 0, 255)


def resize(images: jax.Array, convention: str, size: int | tuple[int, int]):
  """Resizes images as ``convention`` does (module doc), without normalising.

  Args:
    images: ``(N, H, W, C)``, ``C`` in ``{1, 3}``; uint8 in ``[0, 255]`` or
      float in ``[0, 1]``.
    convention: one of :data:`CONVENTIONS`.
    size: output side, or ``(height, width)``.

  Returns:
    ``(x, peak)``: float32 ``(N, h, w, 3)`` and the value of white in it
    (1.0 for ``pytorch_fid``, 255.0 for the others).
  """
  check_convention(convention)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError('images must have shape (N, H, W, 1 or 3); got shape '
                     f'{tuple(images.shape)}.')
  out_h, out_w = (size, size) if isinstance(size, int) else tuple(size)
  _, in_h, in_w, _ = images.shape
  is_uint8 = images.dtype == jnp.uint8
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  if convention == 'pytorch_fid':
    x = images.astype(jnp.float32)
    if is_uint8:
      x = x / 255.0
    # Height pass first, as metrics/inception.py always did (bit-identical).
    x = jnp.einsum('oh,nhwc->nowc', jnp.asarray(bilinear_matrix(in_h, out_h)), x,
                   precision=lax.Precision.HIGHEST)
    x = jnp.einsum('pw,nowc->nopc', jnp.asarray(bilinear_matrix(in_w, out_w)), x,
                   precision=lax.Precision.HIGHEST)
    return x, 1.0
  if convention == 'dgm_eval':
    if not is_uint8:
      images = jnp.clip(jnp.round(images.astype(jnp.float32) * 255.0), 0, 255)
    x = images.astype(jnp.int32)
    if out_w != in_w:
      x = _pil_uint8_pass(x, pil_bicubic_fixed_matrix(in_w, out_w), 'pw,nhwc->nhpc')
    if out_h != in_h:
      x = _pil_uint8_pass(x, pil_bicubic_fixed_matrix(in_h, out_h), 'oh,nhwc->nowc')
    return x.astype(jnp.float32), 255.0
  x = images.astype(jnp.float32)
  if not is_uint8:
    x = x * 255.0
  if convention == 'clean':
    m_h = pil_bicubic_matrix(in_h, out_h).astype(np.float32)
    m_w = pil_bicubic_matrix(in_w, out_w).astype(np.float32)
    return jnp.clip(_separable(x, m_h, m_w), 0.0, 255.0), 255.0
  return _separable(x, tf1_bilinear_matrix(in_h, out_h), tf1_bilinear_matrix(in_w, out_w)), 255.0


def preprocess(images: jax.Array, convention: str, size: int | tuple[int, int],
               normalize: str = 'unit') -> jax.Array:
  """Images -> a network's input: :func:`resize`, then a normalisation.

  Args:
    images: ``(N, H, W, C)``, ``C`` in ``{1, 3}``; uint8 or float in [0, 1].
    convention: one of :data:`CONVENTIONS` (module doc).
    size: output side, or ``(height, width)``.
    normalize: ``'unit'``: pixels on ``[0, 1]``; ``'inception'``: the FID
      Inception's input, ``2x - 1`` for ``pytorch_fid`` (its own choice) and
      ``(x - 128) / 128`` on the 0..255 scale for the others (the TF graph's,
      as clean-fid and torch-fidelity feed it); ``'imagenet'``: ``(x - mean)
      / std`` on ``[0, 1]`` with the ImageNet mean and std (torchvision's
      ``Normalize``, as DINOv2 and dgm-eval).

  Returns:
    float32 ``(N, h, w, 3)``.
  """
  if normalize not in NORMALIZATIONS:
    raise ValueError(f'unknown normalisation {normalize!r}; use one of {NORMALIZATIONS}')
  x, peak = resize(images, convention, size)
  if normalize == 'inception':
    return 2.0 * x - 1.0 if peak == 1.0 else (x - 128.0) / 128.0
  if peak != 1.0:
    x = x / peak
  if normalize == 'imagenet':
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    x = (x - mean) / std
  return x
