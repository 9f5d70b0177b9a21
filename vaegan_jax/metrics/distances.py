"""Metric mathematics for generative-model evaluation, on features or images.

Every function here is pure: it takes arrays that are already features (from
the project's own feature network), class probabilities, or images, and
returns numbers. Nothing here loads a network, draws samples or touches files.

Distances between feature sets (``feats`` arrays have shape ``(n, d)``):

* :func:`feature_stats` and :func:`frechet_distance` -- the Fréchet distance
  between Gaussians fitted to two feature sets (FID; Heusel et al., 2017).
* :func:`kid` -- the Kernel Inception Distance, an unbiased MMD² with a cubic
  polynomial kernel (Bińkowski et al., 2018).
* :func:`precision_recall` (Kynkäänniemi et al., 2019) and
  :func:`density_coverage` (Naeem et al., 2020) -- k-nearest-neighbour
  manifold estimates that separate fidelity from diversity.

Label-space scores (``probs`` arrays have shape ``(n, num_classes)``):

* :func:`classifier_score` -- the Inception Score formula (Salimans et al.,
  2016) applied to the project's own classifier.
* :func:`mode_coverage` -- how many classes the samples reach, and how far
  the class histogram is from uniform.

Pixel-space helpers: :func:`mse` and :func:`psnr`.

Precision: the JAX functions compute in float32 with
``lax.Precision.HIGHEST`` matmuls (no bf16/TF32 shortcuts on accelerators)
and centre the data before products to limit cancellation.
:func:`frechet_distance` runs in float64 NumPy on the host because the matrix
square root is sensitive to rounding and costs little at d <= 2048.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vaegan_jax import sharding

_HIGHEST = lax.Precision.HIGHEST


def _as_float(x: jax.Array) -> jax.Array:
  """Returns ``x`` as a floating JAX array, at least float32."""
  x = jnp.asarray(x)
  return x.astype(jnp.result_type(x.dtype, jnp.float32))


def _check_feats(name: str, feats, min_rows: int = 1) -> None:
  """Raises ValueError unless ``feats`` is a 2-D array with ``min_rows`` rows."""
  shape = np.shape(feats)
  if len(shape) != 2:
    raise ValueError(f"{name} must have shape (n, d); got shape {shape}.")
  if shape[0] < min_rows:
    raise ValueError(
        f"{name} needs at least {min_rows} rows (samples); got {shape[0]}.")


def _check_pair(name1: str, feats1, name2: str, feats2, min_rows: int) -> None:
  """`_check_feats` for both sets, and one feature dimension for both."""
  _check_feats(name1, feats1, min_rows)
  _check_feats(name2, feats2, min_rows)
  if np.shape(feats1)[1] != np.shape(feats2)[1]:
    raise ValueError(
        f"{name1} and {name2} must have the same dimension (columns); got "
        f"{np.shape(feats1)[1]} and {np.shape(feats2)[1]}.")


# ---------------------------------------------------------------------------
# Fréchet distance.
# ---------------------------------------------------------------------------


@jax.jit
def _feature_stats(feats: jax.Array) -> tuple[jax.Array, jax.Array]:
  feats = _as_float(feats)
  mu = jnp.mean(feats, axis=0)
  centred = feats - mu
  sigma = jnp.matmul(centred.T, centred, precision=_HIGHEST)
  sigma = sigma / (feats.shape[0] - 1)
  return mu, 0.5 * (sigma + sigma.T)


def feature_stats(feats: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and unbiased covariance of a feature set.

  The features are centred before the product ``Xᶜᵀ Xᶜ``, so a large common
  offset does not cancel catastrophically in float32 (the textbook
  ``E[xxᵀ] - μμᵀ`` form would).

  Args:
    feats: features, shape ``(n, d)`` with ``n >= 2``.

  Returns:
    ``(mu, sigma)``: the mean, shape ``(d,)``, and the unbiased (``n - 1``)
    covariance, shape ``(d, d)``, exactly symmetric; float32 for float32
    input.
  """
  _check_feats("feats", feats, min_rows=2)
  return _feature_stats(feats)


def _sqrtm_psd(sigma: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix via ``eigh``.

  Eigenvalues that rounding made slightly negative are clipped to zero.

  Args:
    sigma: symmetric matrix, shape ``(d, d)``, float64.

  Returns:
    ``S`` with ``S @ S ≈ sigma``, symmetric PSD, shape ``(d, d)``.
  """
  w, v = np.linalg.eigh(sigma)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Fréchet (2-Wasserstein) distance between two Gaussians: the FID formula.

  ``d² = ||μ₁ - μ₂||² + tr(Σ₁) + tr(Σ₂) - 2 tr((Σ₁ Σ₂)^½)``
  (Heusel et al., 2017, "GANs Trained by a Two Time-Scale Update Rule
  Converge to a Local Nash Equilibrium", eq. 6; Dowson & Landau, 1982).

  ``Σ₁ Σ₂`` is not symmetric, and ``scipy.linalg.sqrtm`` of it becomes
  inaccurate or complex when the covariances are near singular (fewer samples
  than dimensions, dead features). This uses the similar symmetric matrix
  instead: ``Σ₁ Σ₂ ~ M = Σ₁^½ Σ₂ Σ₁^½`` (same eigenvalues), so
  ``tr((Σ₁ Σ₂)^½) = Σᵢ √λᵢ(M)`` with ``M`` symmetric PSD, computed with
  ``eigh``/``eigvalsh`` and negative rounding noise clipped to zero. No
  ``eps·I`` offset is needed. Runs in float64 NumPy on the host (not
  jittable); inputs may be JAX or NumPy arrays of any float dtype.

  Args:
    mu1: mean of the first feature set, shape ``(d,)``.
    sigma1: covariance of the first feature set, shape ``(d, d)``, PSD.
    mu2: mean of the second feature set, shape ``(d,)``.
    sigma2: covariance of the second feature set, shape ``(d, d)``, PSD.

  Returns:
    The squared Fréchet distance as a Python float, ``>= 0`` (a result that
    rounding made slightly negative is clipped to zero).
  """
  mu1, mu2 = (np.asarray(m, np.float64) for m in (mu1, mu2))
  sigma1, sigma2 = (np.asarray(s, np.float64) for s in (sigma1, sigma2))
  d = mu1.shape[-1]
  if mu1.shape != (d,) or mu2.shape != (d,):
    raise ValueError(
        f"means must both have shape (d,); got {mu1.shape} and {mu2.shape}.")
  if sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(
        f"covariances must both have shape ({d}, {d}); got {sigma1.shape} "
        f"and {sigma2.shape}.")
  sigma1 = 0.5 * (sigma1 + sigma1.T)
  sigma2 = 0.5 * (sigma2 + sigma2.T)

  s1_half = _sqrtm_psd(sigma1)
  m = s1_half @ sigma2 @ s1_half
  eigs = np.linalg.eigvalsh(0.5 * (m + m.T))
  tr_covmean = np.sum(np.sqrt(np.clip(eigs, 0.0, None)))

  diff = mu1 - mu2
  fd = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean
  return float(max(fd, 0.0))


# ---------------------------------------------------------------------------
# Kernel Inception Distance.
# ---------------------------------------------------------------------------


def _polynomial_kernel(x: jax.Array, y: jax.Array) -> jax.Array:
  """``k(x, y) = (xᵀy / d + 1)³`` for all pairs; (m, d), (p, d) -> (m, p)."""
  d = x.shape[-1]
  return (jnp.matmul(x, y.T, precision=_HIGHEST) / d + 1.0) ** 3


def _mmd2_unbiased(x: jax.Array, y: jax.Array) -> jax.Array:
  """Unbiased MMD² with the cubic polynomial kernel; (m, d), (m, d) -> ()."""
  m = x.shape[0]
  k_xx = _polynomial_kernel(x, x)
  k_yy = _polynomial_kernel(y, y)
  k_xy = _polynomial_kernel(x, y)
  off_diag = m * (m - 1)
  return ((jnp.sum(k_xx) - jnp.trace(k_xx)) / off_diag
          + (jnp.sum(k_yy) - jnp.trace(k_yy)) / off_diag
          - 2.0 * jnp.mean(k_xy))


@functools.partial(jax.jit, static_argnames=("num_subsets", "subset_size"))
def _kid_subsets(feats1, feats2, key, num_subsets: int, subset_size: int):
  """Unbiased MMD² on ``num_subsets`` random subsets -> shape (num_subsets,)."""
  feats1, feats2 = _as_float(feats1), _as_float(feats2)
  # No centring here (unlike the k-NN metrics): the kernel is not
  # translation invariant, and KID is defined on the raw features.

  def one_subset(k):
    k1, k2 = jax.random.split(k)
    i1 = jax.random.choice(k1, feats1.shape[0], (subset_size,), replace=False)
    i2 = jax.random.choice(k2, feats2.shape[0], (subset_size,), replace=False)
    return _mmd2_unbiased(feats1[i1], feats2[i2])

  # lax.map keeps one subset's three (m, m) kernel matrices alive at a time.
  return lax.map(one_subset, jax.random.split(key, num_subsets))


def kid(feats1: jax.Array, feats2: jax.Array, num_subsets: int = 100,
        subset_size: int = 1000,
        key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Kernel Inception Distance: unbiased MMD² averaged over random subsets.

  Bińkowski et al., 2018, "Demystifying MMD GANs", sec. 4: the unbiased
  estimator of the squared MMD (Gretton et al., 2012, eq. 3) with the kernel
  ``k(x, y) = (xᵀy / d + 1)³``, computed on ``num_subsets`` pairs of
  subsets drawn without replacement within a subset (independently across
  subsets), as in the reference implementations. The unbiased estimate can be
  slightly negative when the distributions match. Papers often report
  ``1000 × KID``; this returns the raw value.

  Args:
    feats1: first feature set, shape ``(n1, d)``.
    feats2: second feature set, shape ``(n2, d)``.
    num_subsets: number of subset pairs to average over.
    subset_size: samples per subset; clipped to ``min(n1, n2)`` (must end up
      ``>= 2``).
    key: PRNG key for subset selection; ``None`` means
      ``jax.random.key(0)``, so repeated evaluations pick the same subsets.

  Returns:
    ``(mean, std)``: scalar arrays, the mean and the standard deviation
    (``ddof=0``, as torch-fidelity) of the per-subset MMD² estimates. ``std``
    is the spread of single-subset estimates, not the standard error of the
    mean.
  """
  _check_pair("feats1", feats1, "feats2", feats2, min_rows=2)
  if num_subsets < 1:
    raise ValueError(f"num_subsets must be >= 1; got {num_subsets}.")
  m = min(int(subset_size), np.shape(feats1)[0], np.shape(feats2)[0])
  if m < 2:
    raise ValueError(f"subset_size must be >= 2; got {subset_size}.")
  if key is None:
    key = jax.random.key(0)
  mmds = _kid_subsets(feats1, feats2, key, num_subsets=int(num_subsets),
                      subset_size=m)
  return jnp.mean(mmds), jnp.std(mmds)


# ---------------------------------------------------------------------------
# k-NN manifold metrics: precision/recall, density/coverage.
# ---------------------------------------------------------------------------
#
# All four compare squared Euclidean distances with squared k-NN radii. The
# (n_query, n_ref) distance matrix is never materialised: lax.map walks the
# queries in chunks of `chunk_size` rows, so the peak is chunk_size × n_ref
# floats (1024 × 10000 × 4 B = 40 MB).


def _sq_dists(q: jax.Array, refs: jax.Array, refs_sq: jax.Array) -> jax.Array:
  """Squared distances from one query to all refs; (d,), (n, d), (n,) -> (n,)."""
  cross = jnp.matmul(refs, q, precision=_HIGHEST)
  return jnp.maximum(refs_sq + jnp.sum(q * q) - 2.0 * cross, 0.0)


@functools.partial(jax.jit, static_argnames=("k", "chunk_size"))
def _knn_radii_sq(x: jax.Array, k: int, chunk_size: int) -> jax.Array:
  """Squared distance from each row of x to its k-th nearest *other* row.

  Args:
    x: points, shape ``(n, d)``, ``n > k``.
    k: neighbour rank, ``>= 1``.
    chunk_size: rows per vmapped chunk.

  Returns:
    Squared radii, shape ``(n,)``.
  """
  x_sq = jnp.sum(x * x, axis=1)

  def one(q):
    # Smallest k + 1 distances include the point itself (distance 0).
    neg_smallest, _ = lax.top_k(-_sq_dists(q, x, x_sq), k + 1)
    return -neg_smallest[k]

  return lax.map(one, x, batch_size=chunk_size)


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _ball_counts(queries: jax.Array, centres: jax.Array,
                 radii_sq: jax.Array, chunk_size: int) -> jax.Array:
  """For each query, how many balls ``B(centre_i, radius_i)`` contain it.

  Args:
    queries: shape ``(m, d)``.
    centres: shape ``(n, d)``.
    radii_sq: squared ball radii, shape ``(n,)``; closed balls (``<=``).
    chunk_size: query rows per vmapped chunk.

  Returns:
    Counts, int32, shape ``(m,)``.
  """
  centres_sq = jnp.sum(centres * centres, axis=1)

  def one(q):
    inside = _sq_dists(q, centres, centres_sq) <= radii_sq
    return jnp.sum(inside, dtype=jnp.int32)

  return lax.map(one, queries, batch_size=chunk_size)


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _min_sq_dists(queries: jax.Array, refs: jax.Array,
                  chunk_size: int) -> jax.Array:
  """Squared distance from each query to its nearest ref; -> shape ``(m,)``."""
  refs_sq = jnp.sum(refs * refs, axis=1)
  return lax.map(lambda q: jnp.min(_sq_dists(q, refs, refs_sq)), queries,
                 batch_size=chunk_size)


def _prepare_sets(real, fake, k: int):
  """Validates, casts and centres both sets on the real mean.

  Centring does not change Euclidean distances but shrinks the norms in
  ``||a||² + ||b||² - 2aᵀb``, so float32 cancellation matters less.
  """
  _check_pair("real", real, "fake", fake, min_rows=k + 1)
  if k < 1:
    raise ValueError(f"k must be >= 1; got {k}.")
  real, fake = _as_float(real), _as_float(fake)
  centre = jnp.mean(real, axis=0)
  return real - centre, fake - centre


def precision_recall(real: jax.Array, fake: jax.Array, k: int = 3,
                     chunk_size: int = 1024) -> tuple[jax.Array, jax.Array]:
  """Improved precision and recall of a generative model.

  Kynkäänniemi et al., 2019, "Improved Precision and Recall Metric for
  Assessing Generative Models", eqs. 1-3: each set's manifold is the union of
  closed balls around its points with radius the distance to the k-th
  nearest neighbour within the set. Precision is the fraction of fake points
  inside the real manifold (fidelity); recall is the fraction of real points
  inside the fake manifold (diversity).

  Args:
    real: real features, shape ``(n_real, d)``, ``n_real > k``.
    fake: generated features, shape ``(n_fake, d)``, ``n_fake > k``.
    k: neighbour rank for the ball radii (the paper uses 3).
    chunk_size: query rows per distance chunk; bounds memory at about
      ``chunk_size × max(n_real, n_fake)`` floats.

  Returns:
    ``(precision, recall)``: scalar float32 arrays in ``[0, 1]``.
  """
  real, fake = _prepare_sets(real, fake, k)
  real_r2 = _knn_radii_sq(real, k=k, chunk_size=chunk_size)
  fake_r2 = _knn_radii_sq(fake, k=k, chunk_size=chunk_size)
  precision = jnp.mean(_ball_counts(fake, real, real_r2, chunk_size) > 0)
  recall = jnp.mean(_ball_counts(real, fake, fake_r2, chunk_size) > 0)
  return precision, recall


def density_coverage(real: jax.Array, fake: jax.Array, k: int = 5,
                     chunk_size: int = 1024) -> tuple[jax.Array, jax.Array]:
  """Density and coverage of a generative model.

  Naeem et al., 2020, "Reliable Fidelity and Diversity Metrics for Generative
  Models", eqs. 3-4. With ``B(r_i)`` the closed ball around real point
  ``r_i`` of radius its k-th nearest-neighbour distance among the real points:

  * density ``= 1/(k M) Σ_j Σ_i 1[f_j ∈ B(r_i)]`` -- how many real balls a
    fake point falls in, relative to the expected ``k``; about 1 when both
    sets are independent samples of one distribution, can exceed 1. (Two
    *identical* sets give exactly ``(k + 1) / k`` without ties, since each
    real ball holds its centre and its k neighbours.)
  * coverage ``= 1/N Σ_i 1[∃ j: f_j ∈ B(r_i)]`` -- the fraction of real
    balls that hold at least one fake point, in ``[0, 1]``.

  Only real-sample balls are used, so a few fake outliers do not inflate the
  scores (the paper's point against precision/recall).

  Arguments as for `precision_recall` (``N`` real and ``M`` fake points;
  the paper uses k = 5). Returns ``(density, coverage)``, scalar float32
  arrays.
  """
  real, fake = _prepare_sets(real, fake, k)
  real_r2 = _knn_radii_sq(real, k=k, chunk_size=chunk_size)
  counts = _ball_counts(fake, real, real_r2, chunk_size)
  density = jnp.sum(counts) / (k * fake.shape[0])
  coverage = jnp.mean(_min_sq_dists(real, fake, chunk_size) <= real_r2)
  return density, coverage


# ---------------------------------------------------------------------------
# Label-space scores.
# ---------------------------------------------------------------------------


@jax.jit
def classifier_score(probs: jax.Array) -> jax.Array:
  """Inception Score formula on a classifier's predictions (one split).

  ``IS = exp(E_x KL(p(y|x) || p(y)))`` with ``p(y) = E_x p(y|x)`` (Salimans
  et al., 2016, "Improved Techniques for Training GANs", sec. 4). Here the
  classifier is the project's own, so values are comparable within the
  project only. High when each sample is confidently one class and the
  classes are balanced; ranges over ``[1, num_classes]``.

  Args:
    probs: class probabilities ``p(y|x)``, shape ``(n, num_classes)``, rows
      summing to 1.

  Returns:
    The score, a scalar float32 array.
  """
  probs = _as_float(probs)
  marginal = jnp.mean(probs, axis=0, keepdims=True)
  kl = jnp.sum(jax.scipy.special.xlogy(probs, probs)
               - jax.scipy.special.xlogy(probs, marginal), axis=1)
  return jnp.exp(jnp.mean(kl))


def mode_coverage(probs_or_labels, num_classes: int,
                  threshold_frac: float = 0.5) -> dict:
  """Class histogram of generated samples and how many classes it covers.

  A class is covered when it receives at least ``threshold_frac`` of a fair
  share, ``threshold_frac × n / num_classes`` samples (and at least one). The
  histogram's distance from uniform is ``KL(hist || uniform)``, which is 0
  when balanced and ``log(num_classes)`` when every sample is one class; a
  mode-collapse measure in the spirit of Srivastava et al., 2017 (VEEGAN) and
  Metz et al., 2017 (Unrolled GANs), who count the modes a GAN reaches.

  Args:
    probs_or_labels: either class probabilities, shape ``(n, num_classes)``
      (argmax is taken), or integer labels, shape ``(n,)``.
    num_classes: number of classes ``C``.
    threshold_frac: fraction of a fair share needed to count as covered.

  Returns:
    A dict of plain Python values:
      ``modes_covered``: int, number of covered classes, in ``[0, C]``.
      ``class_kl``: float, ``KL(hist / n || uniform)`` in nats.
      ``class_hist``: list of ``C`` ints, samples per predicted class.
  """
  x = np.asarray(probs_or_labels)
  if x.ndim == 2:
    if x.shape[1] != num_classes:
      raise ValueError(
          f"probs have {x.shape[1]} classes but num_classes={num_classes}.")
    labels = np.argmax(x, axis=1)
  elif x.ndim == 1:
    labels = x.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      raise ValueError(
          f"labels must lie in [0, {num_classes}); got range "
          f"[{labels.min()}, {labels.max()}].")
  else:
    raise ValueError(
        "probs_or_labels must have shape (n, num_classes) or (n,); got "
        f"shape {x.shape}.")
  n = labels.shape[0]
  if n == 0:
    raise ValueError("mode_coverage needs at least one sample.")
  hist = np.bincount(labels, minlength=num_classes)
  fair_share = n / num_classes
  covered = (hist > 0) & (hist >= threshold_frac * fair_share)
  q = hist / n
  nz = q > 0
  class_kl = float(np.sum(q[nz] * np.log(q[nz] * num_classes)))
  return dict(modes_covered=int(np.sum(covered)), class_kl=class_kl,
              class_hist=[int(h) for h in hist])


# ---------------------------------------------------------------------------
# Pixel-space helpers.
# ---------------------------------------------------------------------------


@jax.jit
def mse(x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean squared error over all elements.

  Args:
    x: array of any shape, e.g. images ``(n, h, w, c)``.
    y: array of the same shape as ``x``.

  Returns:
    Scalar float32 array.
  """
  return jnp.mean(jnp.square(_as_float(x) - _as_float(y)))


@functools.partial(jax.jit, static_argnames=("max_val",))
def psnr(x: jax.Array, y: jax.Array, max_val: float = 1.0) -> jax.Array:
  """Peak signal-to-noise ratio per image, averaged over the batch.

  ``PSNR = 10 log10(max_val² / MSE)`` with the MSE taken over each image's
  pixels. Per-image MSE is floored at ``1e-10 × max_val²``, so an exact
  reconstruction scores 100 dB rather than ``inf`` (keeps means and JSON
  logs finite).

  Args:
    x: images, shape ``(n, ...)``, e.g. ``(n, h, w, c)`` in ``[0, max_val]``.
    y: images, same shape as ``x``.
    max_val: the largest possible pixel value (1.0 for ``[0, 1]`` images).

  Returns:
    Mean PSNR in dB over the ``n`` images, a scalar float32 array.
  """
  err = jnp.square(_as_float(x) - _as_float(y))
  per_image = jnp.mean(err.reshape(err.shape[0], -1), axis=1)
  per_image = jnp.maximum(per_image, 1e-10 * max_val**2)
  return jnp.mean(10.0 * jnp.log10(max_val**2 / per_image))


def distribution_metrics(real_feats, fake_feats, suffix: str = '',
                         kid_subsets: int = 100, kid_subset_size: int = 1000) -> dict:
  """FID, KID, precision/recall and density/coverage in one feature space.

  The same formulas serve the project's own features (suffix '') and the
  Inception pool3 features (suffix '_inception'): the feature space is the
  argument, not a copy of the metrics.

  Args:
    real_feats: reference features, (N, D).
    fake_feats: features of generated (or any other) images, (M, D).
    suffix: appended to every key.
    kid_subsets: subset pairs for KID.
    kid_subset_size: images per KID subset (clipped to min(N, M)).

  Returns:
    fid, kid, kid_std (std over subsets), precision, recall (k = 3),
    density, coverage (k = 5), each key + suffix (kid_std -> kid<suffix>_std),
    Python floats.
  """
  fd = frechet_distance(*feature_stats(real_feats), *feature_stats(fake_feats))
  mmd, mmd_std = kid(real_feats, fake_feats, num_subsets=kid_subsets,
                     subset_size=kid_subset_size)
  precision, recall = precision_recall(real_feats, fake_feats, k=3)
  density, coverage = density_coverage(real_feats, fake_feats, k=5)
  out = {'fid': fd, 'kid': mmd, 'kid_std': mmd_std, 'precision': precision,
         'recall': recall, 'density': density, 'coverage': coverage}
  name = lambda k: 'kid' + suffix + '_std' if k == 'kid_std' else k + suffix  # kid_inception_std
  return {name(k): float(v) for k, v in sharding.to_host(out).items()}
