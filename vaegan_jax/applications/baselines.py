"""Classical restorations (scikit-image), the baselines of the applications
benchmark: what a trained model must beat to be worth using for restoration.

Denoising (each image and channel on its own, one fixed setting for every
noise kind and level):
  median     median filter over a 3 x 3 square (`skimage.filters.median`);
  gaussian   Gaussian filter, std 0.7 px (`skimage.filters.gaussian`; of
             0.5, 0.7 and 1 px the best over the three Gaussian noise levels
             on the first 256 mnist5k test images);
  nl_means   non-local means (Buades et al. 2005; `skimage.restoration.
             denoise_nl_means`, 5 x 5 patches searched within 6 px, fast
             mode) with the noise std estimated per image (`noise_sigma`)
             as sigma and h = 0.8 sigma, the setting of scikit-image's own
             example.
Inpainting:
  biharmonic `skimage.restoration.inpaint_biharmonic`: the hole filled by the
             smooth (biharmonic) continuation of its border.

Images are float32 (N, H, W, C) in [0, 1]; masks (N, H, W, 1), 1 = observed.
"""

import numpy as np

DENOISERS = ('median', 'gaussian', 'nl_means')
INPAINTERS = ('biharmonic',)
GAUSSIAN_SIGMA = 0.7  # px; the best over the three Gaussian noise levels of 0.5, 0.7, 1.
TITLES = {'median': 'median filter 3x3', 'gaussian': f'Gaussian filter σ={GAUSSIAN_SIGMA:g}',
          'nl_means': 'non-local means', 'biharmonic': 'biharmonic inpainting'}


def _per_image(fn, images) -> np.ndarray:
  x = np.asarray(images, np.float32)
  return np.clip(np.stack([fn(im) for im in x]), 0.0, 1.0).astype(np.float32)


def noise_sigma(image) -> float:
  """Donoho & Johnstone's (1994) robust estimate of the std of Gaussian noise
  in one image (H, W, C): the median absolute value of its finest diagonal
  Haar wavelet coefficients over 0.6745, averaged over channels. It is
  `skimage.restoration.estimate_sigma` with the Haar wavelet instead of db2,
  without PyWavelets."""
  im = np.asarray(image, np.float64)
  h, w = (im.shape[0] // 2) * 2, (im.shape[1] // 2) * 2
  im = im[:h, :w]
  hh = (im[0::2, 0::2] - im[0::2, 1::2] - im[1::2, 0::2] + im[1::2, 1::2]) / 2.0
  return float(np.mean(np.median(np.abs(hh), axis=(0, 1)) / 0.6745))


def denoise(name: str, images) -> np.ndarray:
  """The `name` denoiser of DENOISERS applied to every image.

  Args:
    name: 'median', 'gaussian' or 'nl_means'.
    images: (N, H, W, C) in [0, 1].

  Returns:
    float32 (N, H, W, C) in [0, 1].
  """
  from skimage import filters, restoration  # pylint: disable=g-import-not-at-top
  if name == 'median':
    square = np.ones((3, 3), bool)
    fn = lambda im: np.stack([filters.median(im[..., c], footprint=square, mode='nearest')
                              for c in range(im.shape[-1])], axis=-1)
  elif name == 'gaussian':
    fn = lambda im: filters.gaussian(im, sigma=GAUSSIAN_SIGMA, mode='nearest', channel_axis=-1)
  elif name == 'nl_means':
    def fn(im):
      im = im.astype(np.float64)
      sigma = noise_sigma(im)
      out = restoration.denoise_nl_means(im, h=0.8 * sigma, sigma=sigma, patch_size=5,
                                         patch_distance=6, fast_mode=True, channel_axis=-1)
      return out.reshape(im.shape)  # One channel comes back as (H, W).
  else:
    raise ValueError(f'Unknown denoiser {name!r}; known: {", ".join(DENOISERS)}.')
  return _per_image(fn, images)


def inpaint(name: str, images, mask) -> np.ndarray:
  """The `name` inpainter of INPAINTERS: observed pixels kept, holes filled.

  Args:
    name: 'biharmonic'.
    images: (N, H, W, C) in [0, 1]; only the observed pixels are used.
    mask: (N, H, W, 1), 1 = observed, 0 = missing.

  Returns:
    float32 (N, H, W, C) in [0, 1], equal to `images` where mask is 1.
  """
  from skimage import restoration  # pylint: disable=g-import-not-at-top
  if name != 'biharmonic':
    raise ValueError(f'Unknown inpainter {name!r}; known: {", ".join(INPAINTERS)}.')
  x, m = np.asarray(images, np.float64), np.asarray(mask, np.float32)
  out = []
  for im, mi in zip(x, m):
    missing = mi[..., 0] < 0.5
    filled = (restoration.inpaint_biharmonic(im, missing, channel_axis=-1)
              if missing.any() else im)
    out.append(np.where(missing[..., None], filled, im))
  return np.clip(np.stack(out), 0.0, 1.0).astype(np.float32)
