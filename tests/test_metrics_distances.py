"""Tests for vaegan_jax/metrics/distances.py against NumPy/SciPy references."""

import jax
import numpy as np
import pytest
import scipy.linalg

from vaegan_jax.metrics import distances


def _gaussian(rng, n, d, scale=1.0, shift=0.0):
  mix = rng.normal(size=(d, d)) * scale / np.sqrt(d)
  return (rng.normal(size=(n, d)) @ mix + shift).astype(np.float32)


def _np_stats(x):
  x = np.asarray(x, np.float64)
  return x.mean(axis=0), np.cov(x, rowvar=False)


# ----------------------------------------------------------------- feature_stats


def test_feature_stats_matches_numpy_with_large_offset():
  rng = np.random.default_rng(0)
  x = _gaussian(rng, 500, 16, shift=1000.0)
  mu, sigma = distances.feature_stats(x)
  ref_mu, ref_sigma = _np_stats(x)
  assert mu.shape == (16,) and sigma.shape == (16, 16)
  assert mu.dtype == np.float32
  np.testing.assert_allclose(mu, ref_mu, rtol=1e-6)
  # Centring keeps float32 accurate even with a 1000x offset.
  np.testing.assert_allclose(sigma, ref_sigma, atol=2e-4)
  np.testing.assert_array_equal(sigma, np.asarray(sigma).T)


def test_feature_stats_rejects_bad_shapes():
  with pytest.raises(ValueError, match="shape"):
    distances.feature_stats(np.zeros((5,)))
  with pytest.raises(ValueError, match="at least 2"):
    distances.feature_stats(np.zeros((1, 3)))


# -------------------------------------------------------------- frechet_distance


def _fid_pytorch_fid(mu1, sigma1, mu2, sigma2, eps=1e-6):
  """The standard pytorch-fid formula, with its eps-offset fallback."""
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  covmean = np.real(covmean)
  diff = mu1 - mu2
  return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(
      covmean)


@pytest.mark.parametrize("d,n,rtol", [
    (8, 200, 1e-9),
    (64, 1000, 1e-9),
    (8, 5, 1e-6),    # rank-deficient covariances: n < d.
    (64, 20, 1e-6),
])
def test_frechet_distance_matches_scipy_reference(d, n, rtol):
  rng = np.random.default_rng(d + n)
  s1 = _np_stats(_gaussian(rng, n, d))
  s2 = _np_stats(_gaussian(rng, n, d, scale=2.0, shift=0.5))
  fd = distances.frechet_distance(*s1, *s2)
  assert isinstance(fd, float)
  np.testing.assert_allclose(fd, _fid_pytorch_fid(*s1, *s2), rtol=rtol)


def _random_psd(rng, eigenvalues):
  q, _ = np.linalg.qr(rng.normal(size=(len(eigenvalues),) * 2))
  return (q * eigenvalues) @ q.T


def test_frechet_distance_tiny_eigenvalues():
  rng = np.random.default_rng(1)
  d = 64
  sigma1 = _random_psd(rng, np.logspace(-12, 0, d))
  sigma2 = _random_psd(rng, np.logspace(-10, 1, d))
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  np.testing.assert_allclose(
      distances.frechet_distance(mu1, sigma1, mu2, sigma2),
      _fid_pytorch_fid(mu1, sigma1, mu2, sigma2), rtol=1e-7)


def test_frechet_distance_exact_for_commuting_singular_covariances():
  # Diagonal covariances: d² = ||μ₁-μ₂||² + Σᵢ (√aᵢ - √bᵢ)², zeros included.
  a = np.array([0.0, 1e-14, 0.5, 2.0, 0.0, 3.0])
  b = np.array([0.0, 1.0, 0.5, 1e-12, 4.0, 0.0])
  mu1, mu2 = np.zeros(6), np.arange(6.0)
  expected = mu2 @ mu2 + np.sum((np.sqrt(a) - np.sqrt(b))**2)
  np.testing.assert_allclose(
      distances.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), expected,
      rtol=1e-12)


@pytest.mark.parametrize("n", [10, 500])  # n=10 < d: singular covariance.
def test_frechet_distance_self_is_zero_and_symmetric(n):
  rng = np.random.default_rng(n)
  s1 = distances.feature_stats(_gaussian(rng, n, 32))
  s2 = distances.feature_stats(_gaussian(rng, n, 32, shift=1.0))
  assert distances.frechet_distance(*s1, *s1) == pytest.approx(0.0, abs=1e-5)
  np.testing.assert_allclose(
      distances.frechet_distance(*s1, *s2),
      distances.frechet_distance(*s2, *s1), rtol=1e-6)


# ------------------------------------------------------------------------- kid


def _mmd2_unbiased_np(x, y):
  """Direct O(m²) float64 unbiased MMD² (Gretton et al., 2012, eq. 3)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  m, d = x.shape
  k_xx, k_yy, k_xy = ((a @ b.T / d + 1.0)**3 for a, b in ((x, x), (y, y),
                                                          (x, y)))
  off_diag = ~np.eye(m, dtype=bool)
  return (k_xx[off_diag].sum() / (m * (m - 1))
          + k_yy[off_diag].sum() / (m * (m - 1)) - 2.0 * k_xy.mean())


def test_kid_whole_set_subsets_match_direct_mmd():
  rng = np.random.default_rng(0)
  x = _gaussian(rng, 40, 6)
  y = _gaussian(rng, 40, 6, shift=0.3)
  # subset_size >= n is clipped to n: every subset is the whole set.
  mean, std = distances.kid(x, y, num_subsets=3, subset_size=1000,
                            key=jax.random.key(1))
  expected = _mmd2_unbiased_np(x, y)
  np.testing.assert_allclose(mean, expected, rtol=1e-4)
  assert float(std) < 1e-4 * abs(expected)


def test_kid_same_distribution_near_zero_and_different_clearly_positive():
  rng = np.random.default_rng(2)
  x = _gaussian(rng, 600, 16)
  y = (rng.normal(size=(600, 16)) @ np.linalg.cholesky(
      np.cov(x, rowvar=False)).T).astype(np.float32)
  mean, std = distances.kid(x, y, num_subsets=50, subset_size=200)
  assert abs(float(mean)) < 2 * float(std)
  mean_far, std_far = distances.kid(x, x + 2.0, num_subsets=50,
                                    subset_size=200)
  assert float(mean_far) > 10 * float(std_far) > 0


def test_kid_unequal_sizes_and_determinism():
  rng = np.random.default_rng(3)
  x, y = _gaussian(rng, 30, 4), _gaussian(rng, 50, 4)
  a = distances.kid(x, y, num_subsets=5, subset_size=100)
  b = distances.kid(x, y, num_subsets=5, subset_size=100)
  assert np.isfinite(a[0]) and np.isfinite(a[1])
  assert float(a[0]) == float(b[0])  # key=None means a fixed key.
  with pytest.raises(ValueError, match="same dimension"):
    distances.kid(x, y[:, :3])


# ------------------------------------------------- precision/recall, density/coverage


def _manifold_np(real, fake, k):
  """Brute-force float64 reference for all four k-NN metrics (<= balls)."""
  real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  dist = lambda a, b: np.linalg.norm(a[:, None] - b[None], axis=-1)
  r_rad = np.sort(dist(real, real), axis=1)[:, k]
  f_rad = np.sort(dist(fake, fake), axis=1)[:, k]
  d_rf = dist(real, fake)  # (N, M)
  in_real = d_rf <= r_rad[:, None]
  return dict(precision=in_real.any(axis=0).mean(),
              recall=(d_rf <= f_rad[None, :]).any(axis=1).mean(),
              density=in_real.sum() / (k * fake.shape[0]),
              coverage=(d_rf.min(axis=1) <= r_rad).mean())


def _all_metrics(real, fake, k, chunk_size=1024):
  p, r = distances.precision_recall(real, fake, k=k, chunk_size=chunk_size)
  d, c = distances.density_coverage(real, fake, k=k, chunk_size=chunk_size)
  return dict(precision=float(p), recall=float(r), density=float(d),
              coverage=float(c))


@pytest.mark.parametrize("chunk_size", [7, 1024])  # 7: uneven chunks.
def test_manifold_metrics_match_brute_force(chunk_size):
  rng = np.random.default_rng(4)
  real = _gaussian(rng, 90, 5)
  fake = _gaussian(rng, 70, 5, scale=1.5, shift=0.4)
  got = _all_metrics(real, fake, k=3, chunk_size=chunk_size)
  want = _manifold_np(real, fake, k=3)
  for name in want:
    assert got[name] == pytest.approx(want[name], abs=1e-6), name


def test_manifold_metrics_hand_made_1d():
  # Real {0, 1, 3, 7}, k=1 radii {1, 1, 2, 4}; fake {0.5, 2.5, 12, 13},
  # fake radii {2, 2, 1, 1}.
  real = np.array([[0.0], [1.0], [3.0], [7.0]])
  fake = np.array([[0.5], [2.5], [12.0], [13.0]])
  got = _all_metrics(real, fake, k=1)
  # 0.5 is in balls of 0 and 1; 2.5 in the ball of 3; 12 and 13 in none.
  assert got["precision"] == pytest.approx(2 / 4)
  assert got["density"] == pytest.approx((2 + 1) / (1 * 4))
  # 0, 1 (by 0.5) and 3 (by 2.5) are in fake balls; 7 is not.
  assert got["recall"] == pytest.approx(3 / 4)
  # 7's nearest fake (12) is 5 > its radius 4.
  assert got["coverage"] == pytest.approx(3 / 4)


def test_manifold_metrics_hand_made_2d():
  # Unit-square corners (k=1 radius 1) plus (5, 5) (radius |(4, 4)| ≈ 5.66).
  real = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [5, 5]], np.float32)
  # (0.5, 0.5) lies in all four corner balls, (3, 3) in the (5, 5) ball
  # only, (10, 0) in none. Fake radii: 3.54, 3.54, 7.62.
  fake = np.array([[0.5, 0.5], [3, 3], [10, 0]], np.float32)
  got = _all_metrics(real, fake, k=1)
  assert got["precision"] == pytest.approx(2 / 3)
  assert got["density"] == pytest.approx((4 + 1 + 0) / 3)
  assert got["recall"] == pytest.approx(1.0)
  assert got["coverage"] == pytest.approx(1.0)


def test_manifold_metrics_identical_sets():
  rng = np.random.default_rng(5)
  x = _gaussian(rng, 200, 8)
  got = _all_metrics(x, x, k=5)
  assert got["precision"] == 1.0 and got["recall"] == 1.0
  assert got["coverage"] == 1.0
  # Each real ball holds its centre and its k neighbours: (k + 1) / k.
  assert got["density"] == pytest.approx(6 / 5, abs=1e-6)


def test_density_near_one_for_independent_samples():
  rng = np.random.default_rng(6)
  real, fake = rng.normal(size=(2, 1000, 4)).astype(np.float32)
  density, coverage = distances.density_coverage(real, fake, k=5)
  assert float(density) == pytest.approx(1.0, abs=0.15)
  assert float(coverage) > 0.9


def test_manifold_metrics_far_away_fake():
  rng = np.random.default_rng(7)
  real = _gaussian(rng, 100, 8)
  got = _all_metrics(real, real[:50] + 100.0, k=3)
  assert got == dict(precision=0.0, recall=0.0, density=0.0, coverage=0.0)


def test_manifold_metrics_collapsed_fake():
  rng = np.random.default_rng(8)
  n = 200
  real = _gaussian(rng, n, 8)
  fake = np.repeat(real[:1], 50, axis=0)  # Every sample is real point 0.
  got = _all_metrics(real, fake, k=3)
  assert got["precision"] == 1.0
  assert got["recall"] <= 1.0 / n + 1e-6  # Fake balls have radius 0.
  assert got["coverage"] < 0.05


def test_manifold_metrics_reject_too_few_points():
  with pytest.raises(ValueError, match="at least 4 rows"):
    distances.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)


# -------------------------------------------------------------- label scores


def test_classifier_score_extremes():
  num_classes = 10
  one_hot = np.eye(num_classes, dtype=np.float32)
  balanced = np.tile(one_hot, (7, 1))
  assert float(distances.classifier_score(balanced)) == pytest.approx(
      num_classes, rel=1e-5)
  same = np.tile(one_hot[3], (50, 1))
  assert float(distances.classifier_score(same)) == pytest.approx(1.0)
  uniform = np.full((20, num_classes), 1 / num_classes, np.float32)
  assert float(distances.classifier_score(uniform)) == pytest.approx(1.0)


def test_mode_coverage_balanced_and_collapsed():
  balanced = distances.mode_coverage(np.tile(np.arange(10), 5), 10)
  assert balanced["modes_covered"] == 10
  assert balanced["class_kl"] == pytest.approx(0.0, abs=1e-12)
  assert balanced["class_hist"] == [5] * 10

  probs = np.zeros((30, 10))
  probs[:, 4] = 1.0
  collapsed = distances.mode_coverage(probs, 10)
  assert collapsed["modes_covered"] == 1
  assert collapsed["class_kl"] == pytest.approx(np.log(10))
  assert collapsed["class_hist"][4] == 30


def test_mode_coverage_threshold():
  # 100 samples, 4 classes: fair share 25, threshold 12.5 at the default.
  labels = np.repeat([0, 1, 2, 3], [50, 25, 13, 12])
  assert distances.mode_coverage(labels, 4)["modes_covered"] == 3
  assert distances.mode_coverage(labels, 4, threshold_frac=0.0)[
      "modes_covered"] == 4


# ------------------------------------------------------------------ pixels


def test_mse_and_psnr():
  rng = np.random.default_rng(9)
  x = rng.uniform(size=(4, 8, 8, 1)).astype(np.float32)
  y = x.copy()
  y[0] += 0.1                       # per-image MSE 0.01 -> 20 dB
  y[1] += 0.01                      # 1e-4 -> 40 dB
  y[2:] += np.float32(0.001)        # 1e-6 -> 60 dB
  assert float(distances.mse(x, y)) == pytest.approx(
      np.mean((x - y)**2), rel=1e-5)
  assert float(distances.psnr(x, y)) == pytest.approx(
      (20 + 40 + 60 + 60) / 4, abs=1e-2)
  assert float(distances.psnr(x * 255, y * 255, max_val=255.0)) == (
      pytest.approx(45.0, abs=1e-2))
  assert float(distances.psnr(x, x)) == pytest.approx(100.0)
