"""Perceptual path length (Karras et al. 2019, "A style-based generator
architecture for generative adversarial networks", §3.2), as torch-fidelity
computes it (`torch_fidelity/metric_ppl.py`, defaults `ppl_epsilon=1e-4`,
`ppl_z_interp_mode='lerp'`, `ppl_discard_percentile_lower=1`,
`ppl_discard_percentile_higher=99`):

    z0, z1 ~ N(0, I)    (numpy RandomState(seed).randn, z0 first, as torch-fidelity)
    d = sim(G(z0), G(lerp(z0, z1, eps))) / eps²,      lerp(a, b, t) = a + (b - a) t
    PPL = mean (and std, ddof 0) of d over the pairs, after discarding those
          below the 1st percentile ('lower' rule) and above the 99th ('higher').

`sim` is a squared distance between the two images' features; torch-fidelity
uses LPIPS-VGG16, which needs ImageNet weights this project cannot download.
Here `sim` is the squared Euclidean distance between feature vectors: of the
project's own classifier (`feature_net`, 'l2' map), or of the FID
Inception-v3's pool3 (where its weights exist). Conditional models draw one
label per pair (uniform), shared by both ends, as torch-fidelity does.

The images are compared as floats: quantising them to uint8 (as torch-fidelity's
LPIPS input is) would erase most of an eps = 1e-4 step. For a linear
generator G(z) = W z + b and identity features every pair gives exactly
|W (z1 - z0)|², whose expectation is 2 |W|_F² (tests/test_applications.py).
"""

from typing import Callable

import numpy as np

EPSILON = 1e-4
DISCARD_LOWER, DISCARD_HIGHER = 1, 99


def latent_pairs(num_samples: int, latent_dim: int, seed: int = 0):
  """(z0, z1) float32 (num_samples, latent_dim) each, drawn as torch-fidelity does."""
  rng = np.random.RandomState(seed)
  z0 = rng.randn(num_samples, latent_dim).astype(np.float32)
  z1 = rng.randn(num_samples, latent_dim).astype(np.float32)
  return z0, z1


def path_lengths(decode_fn: Callable, features_fn: Callable, z0, z1, epsilon: float = EPSILON,
                 labels=None, batch_size: int = 256) -> np.ndarray:
  """Per pair, |f(G(z0)) - f(G(z0 + eps (z1 - z0)))|² / eps².

  Args:
    decode_fn: (latents (B, Z), labels (B,) or None) -> images (B, H, W, C).
    features_fn: images (B, H, W, C) -> features (B, D).
    z0, z1: (N, Z) end points.
    epsilon: the step along the straight line from z0 towards z1.
    labels: None, or int (N,) labels shared by both ends of each pair.
    batch_size: pairs per call (both ends go through one call of 2 x batch).

  Returns:
    float64 (N,).
  """
  z0, z1 = np.asarray(z0, np.float32), np.asarray(z1, np.float32)
  ze = z0 + (z1 - z0) * np.float32(epsilon)
  out = []
  for start in range(0, len(z0), batch_size):
    a, b = z0[start:start + batch_size], ze[start:start + batch_size]
    n = len(a)
    y = None if labels is None else np.tile(np.asarray(labels[start:start + batch_size]), 2)
    if n < batch_size and len(z0) > batch_size:  # One compiled shape: pad the last batch.
      pad = batch_size - n
      a, b = np.concatenate([a, a[:1].repeat(pad, 0)]), np.concatenate([b, b[:1].repeat(pad, 0)])
      if y is not None:
        y = np.tile(np.concatenate([labels[start:start + n], np.repeat(labels[start:start + 1],
                                                                       pad)]), 2)
    f = np.asarray(features_fn(decode_fn(np.concatenate([a, b]), y)), np.float64)
    fa, fb = f[:len(a)], f[len(a):]
    out.append(np.sum(np.square(fa - fb), axis=-1)[:n])
  return np.concatenate(out) / (epsilon ** 2)


def summarise(distances, lower: float | None = DISCARD_LOWER,
              higher: float | None = DISCARD_HIGHER) -> dict:
  """{'mean', 'std', 'num_kept'} of the distances between the `lower`-th
  percentile (rounded down to a sample) and the `higher`-th (rounded up), as
  torch-fidelity; None disables a side."""
  d = np.asarray(distances, np.float64)
  keep = np.ones(d.shape, bool)
  if lower is not None:
    keep &= d >= np.percentile(d, lower, method='lower')
  if higher is not None:
    keep &= d <= np.percentile(d, higher, method='higher')
  d = d[keep]
  return {'mean': float(np.mean(d)), 'std': float(np.std(d)), 'num_kept': int(d.size)}


def perceptual_path_length(decode_fn: Callable, features_fn: Callable, latent_dim: int,
                           num_samples: int, num_classes: int = 0, seed: int = 0,
                           epsilon: float = EPSILON, batch_size: int = 256) -> dict:
  """PPL of a generator in one feature space: `summarise(path_lengths(...))`.

  Args:
    decode_fn: (latents (B, Z), labels (B,) or None) -> images.
    features_fn: images -> features (B, D).
    latent_dim: Z.
    num_samples: pairs.
    num_classes: K of a conditional generator (labels drawn per pair), 0 if not.
    seed: seeds the latents and labels.
    epsilon: the step.
    batch_size: pairs per call.

  Returns:
    {'mean', 'std', 'num_kept'}.
  """
  z0, z1 = latent_pairs(num_samples, latent_dim, seed)
  labels = None
  if num_classes:
    labels = np.random.RandomState(seed + 1).randint(0, num_classes, (num_samples,))
  return summarise(path_lengths(decode_fn, features_fn, z0, z1, epsilon, labels,
                                min(batch_size, num_samples)))
