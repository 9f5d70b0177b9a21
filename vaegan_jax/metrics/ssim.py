"""SSIM (Wang et al. 2004) and PSNR of image batches, on the host in float64.

The SSIM is the one of Wang, Bovik, Sheikh & Simoncelli 2004 ("Image quality
assessment: from error visibility to structural similarity", IEEE TIP 13) with
their settings: local means, variances and covariance weighted by an 11 x 11
Gaussian window of std 1.5 px (radius int(3.5 * 1.5 + 0.5) = 5), population
(not sample) covariances, K1 = 0.01, K2 = 0.03, C = (K * data_range)². It
equals scikit-image's

    structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
                          use_sample_covariance=False, data_range=data_range,
                          channel_axis=-1)

(tests/test_applications.py checks it to 1e-6): the SSIM map is computed with
the window reflected at the borders ('reflect' = half-sample symmetric), the
image's SSIM is the map's mean over the pixels at least 5 px from every border
(there the window never leaves the image), averaged over channels. `ssim_map`
returns the whole map, for SSIM averaged over a region (e.g. the hole of an
inpainting mask).

Images are (N, H, W, C), any float or uint8 dtype, compared in float64.
"""

import numpy as np

SIGMA = 1.5
TRUNCATE = 3.5
K1, K2 = 0.01, 0.03
PSNR_CAP_DB = 100.0  # PSNR of identical images: the MSE is floored at 1e-10 (data_range 1).


def gaussian_window(sigma: float = SIGMA, truncate: float = TRUNCATE) -> np.ndarray:
  """The normalised 1-D Gaussian of radius int(truncate * sigma + 0.5), as
  scipy.ndimage.gaussian_filter builds it. float64 (2r + 1,)."""
  radius = int(truncate * sigma + 0.5)
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  w = np.exp(-0.5 * (x / sigma) ** 2)
  return w / w.sum()


def _filter(x: np.ndarray, window: np.ndarray) -> np.ndarray:
  """Separable filtering of (N, H, W, C) over H and W, borders reflected
  (half-sample symmetric, scipy's 'reflect')."""
  r = len(window) // 2
  h, w = x.shape[1:3]
  p = np.pad(x, ((0, 0), (r, r), (0, 0), (0, 0)), mode='symmetric')
  x = sum(window[i] * p[:, i:i + h] for i in range(len(window)))
  p = np.pad(x, ((0, 0), (0, 0), (r, r), (0, 0)), mode='symmetric')
  return sum(window[i] * p[:, :, i:i + w] for i in range(len(window)))


def _check_pair(x, y):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.shape != y.shape or x.ndim != 4:
    raise ValueError(f'Expected two image batches of one shape (N, H, W, C); got '
                     f'{x.shape} and {y.shape}.')
  return x, y


def ssim_map(x, y, data_range: float = 1.0, sigma: float = SIGMA) -> np.ndarray:
  """The SSIM of every pixel's Gaussian neighbourhood.

  Args:
    x, y: (N, H, W, C) images.
    data_range: max - min of the pixel scale (1 for [0, 1] images).
    sigma: std of the Gaussian window, pixels.

  Returns:
    float64 (N, H, W, C).
  """
  x, y = _check_pair(x, y)
  window = gaussian_window(sigma)
  if min(x.shape[1:3]) < len(window):
    raise ValueError(f'SSIM needs images of at least {len(window)} x {len(window)} pixels; '
                     f'got {x.shape[1]} x {x.shape[2]}.')
  ux, uy = _filter(x, window), _filter(y, window)
  vx = _filter(x * x, window) - ux * ux
  vy = _filter(y * y, window) - uy * uy
  vxy = _filter(x * y, window) - ux * uy
  c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
  return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def ssim(x, y, data_range: float = 1.0, weights=None, sigma: float = SIGMA) -> np.ndarray:
  """SSIM per image.

  Args:
    x, y: (N, H, W, C) images.
    data_range: max - min of the pixel scale.
    weights: None for the standard SSIM (the map's mean away from the
      borders, then over channels); else (N, H, W, 1) or (N, H, W, C) weights
      (e.g. 1 - mask: the missing pixels), the map's weighted mean over all
      pixels and channels (an image with zero total weight gets NaN).
    sigma: std of the Gaussian window.

  Returns:
    float64 (N,).
  """
  s = ssim_map(x, y, data_range, sigma)
  if weights is None:
    r = len(gaussian_window(sigma)) // 2
    return s[:, r:s.shape[1] - r, r:s.shape[2] - r].mean(axis=(1, 2)).mean(axis=-1)
  w = np.broadcast_to(np.asarray(weights, np.float64), s.shape)
  total = w.sum(axis=(1, 2, 3))
  with np.errstate(invalid='ignore', divide='ignore'):
    return (w * s).sum(axis=(1, 2, 3)) / total


def psnr(x, y, data_range: float = 1.0, weights=None) -> np.ndarray:
  """PSNR in dB per image: 10 log10(data_range² / MSE), the MSE over each
  image's pixels (or weighted by `weights`, e.g. over the hole only).

  Identical images would give +inf; the MSE is floored at 1e-10 data_range²,
  so they get PSNR_CAP_DB (100 dB) and means stay finite (as
  `vaegan_jax.metrics.distances.psnr` and `applications.psnr`).

  Args:
    x, y: (N, H, W, C) images.
    data_range: max - min of the pixel scale.
    weights: None, or broadcastable to (N, H, W, C).

  Returns:
    float64 (N,).
  """
  x, y = _check_pair(x, y)
  err = np.square(x - y)
  w = np.ones_like(err) if weights is None else np.broadcast_to(
      np.asarray(weights, np.float64), err.shape)
  mse = (w * err).sum(axis=(1, 2, 3)) / np.maximum(w.sum(axis=(1, 2, 3)), 1e-12)
  return 10.0 * np.log10(data_range ** 2 / np.maximum(mse, 1e-10 * data_range ** 2))
