"""The applications benchmark: SSIM, PPL, baselines, the per-family JSON
(vaegan_jax/metrics/ssim.py, metrics/ppl.py, applications/)."""

import json
import math

import jax
import numpy as np
import pytest

from conftest import load_config
from vaegan_jax import api
from vaegan_jax import families
from vaegan_jax.applications import baselines
from vaegan_jax.applications import benchmark
from vaegan_jax.metrics import degradations
from vaegan_jax.metrics import ppl
from vaegan_jax.metrics import ssim


def _digits(n=6, seed=0, size=28):
  """float64 (n, size, size, 1) rings and bars, softened: fixed test images."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size]
  out = np.zeros((n, size, size, 1))
  for i in range(n):
    cy, cx, r = size / 2 + rng.integers(-2, 3), size / 2 + rng.integers(-2, 3), 5 + rng.integers(0, 3)
    ring = np.exp(-np.square(np.hypot(yy - cy, xx - cx) - r))
    bar = np.exp(-np.square(xx - cx - r - 2)) * ((yy > 6) & (yy < size - 6))
    out[i, ..., 0] = np.clip(ring + bar, 0.0, 1.0)
  return out


# ---------------------------------------------------------------------------
# SSIM and PSNR.
# ---------------------------------------------------------------------------


def _skimage_ssim(x, y, data_range=1.0, full=False):
  from skimage.metrics import structural_similarity  # pylint: disable=g-import-not-at-top
  return structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
                               use_sample_covariance=False, data_range=data_range,
                               channel_axis=-1, full=full)


def test_ssim_matches_scikit_image():
  rng = np.random.default_rng(1)
  clean = _digits()
  pairs = [(clean, np.clip(clean + 0.2 * rng.standard_normal(clean.shape), 0, 1)),
           (clean, clean[::-1]),                                          # other digits
           (clean, degradations.gaussian_blur(clean, 1.0).astype(np.float64)),
           (rng.random((3, 20, 17, 3)), rng.random((3, 20, 17, 3))),     # RGB, odd sizes
           (clean, np.full_like(clean, 0.5))]                             # a flat image
  for x, y in pairs:
    ours = ssim.ssim(x, y)
    ref = np.array([_skimage_ssim(a, b) for a, b in zip(x, y)])
    np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)
  x, y = pairs[0]
  np.testing.assert_allclose(ssim.ssim(255 * x, 255 * y, data_range=255.0),
                             [_skimage_ssim(a, b, 255.0) for a, b in zip(255 * x, 255 * y)],
                             atol=1e-6, rtol=0)
  np.testing.assert_allclose(ssim.ssim_map(x, y)[0], _skimage_ssim(x[0], y[0], full=True)[1],
                             atol=1e-6, rtol=0)
  np.testing.assert_allclose(ssim.ssim(x, x), 1.0, atol=1e-12)
  with pytest.raises(ValueError, match='at least 11'):
    ssim.ssim(np.zeros((1, 8, 8, 1)), np.zeros((1, 8, 8, 1)))


def test_region_ssim_and_psnr_average_over_the_weights():
  rng = np.random.default_rng(2)
  x = _digits(3)
  y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)
  mask = degradations.center_hole(3, 28, 28, 0.5)
  hole = 1.0 - mask
  s = ssim.ssim_map(x, y)
  np.testing.assert_allclose(ssim.ssim(x, y, weights=hole),
                             [s[i][hole[i] > 0].mean() for i in range(3)], rtol=1e-12)
  mse = [np.mean(np.square(x[i] - y[i])[hole[i] > 0]) for i in range(3)]
  np.testing.assert_allclose(ssim.psnr(x, y, weights=hole), -10 * np.log10(mse), rtol=1e-12)
  # Identical images: capped, finite, and JSON-safe.
  assert np.all(ssim.psnr(x, x) == ssim.PSNR_CAP_DB)


# ---------------------------------------------------------------------------
# Perceptual path length.
# ---------------------------------------------------------------------------


def test_ppl_of_a_linear_decoder_has_its_closed_form():
  rng = np.random.default_rng(3)
  zdim, dim = 6, 10
  w = rng.normal(size=(zdim, dim)).astype(np.float32)
  b = rng.normal(size=(dim,)).astype(np.float32)
  decode = lambda z, y: z @ w + b   # "images" that are vectors
  identity = lambda f: f
  z0, z1 = ppl.latent_pairs(4000, zdim, seed=5)
  d = ppl.path_lengths(decode, identity, z0, z1, batch_size=512)
  exact = np.sum(np.square((z1.astype(np.float64) - z0) @ w), axis=-1)  # |W(z1 - z0)|²
  np.testing.assert_allclose(d, exact, rtol=2e-2)
  # Expectation 2 |W|_F² (z1 - z0 ~ N(0, 2I)); 4000 pairs: a few % of noise.
  full = ppl.summarise(d, None, None)
  assert full['mean'] == pytest.approx(2 * np.sum(np.square(w)), rel=0.06)
  # torch-fidelity's discards: below the 1st percentile ('lower'), above the 99th ('higher').
  kept = d[(d >= np.percentile(d, 1, method='lower')) & (d <= np.percentile(d, 99, method='higher'))]
  out = ppl.summarise(d)
  assert out['num_kept'] == len(kept) < len(d)
  assert out['mean'] == pytest.approx(kept.mean()) and out['std'] == pytest.approx(kept.std())
  # The end to end function draws the same pairs; scaling the decoder by a scales PPL by a².
  e2e = ppl.perceptual_path_length(decode, identity, zdim, 4000, seed=5, batch_size=512)
  assert e2e['mean'] == pytest.approx(out['mean'], rel=1e-3)
  twice = ppl.perceptual_path_length(lambda z, y: 2 * decode(z, y), identity, zdim, 4000,
                                     seed=5, batch_size=512)
  assert twice['mean'] == pytest.approx(4 * out['mean'], rel=1e-2)


def test_ppl_latents_follow_torch_fidelity_draws():
  z0, z1 = ppl.latent_pairs(3, 4, seed=7)
  rng = np.random.RandomState(7)
  np.testing.assert_array_equal(z0, rng.randn(3, 4).astype(np.float32))
  np.testing.assert_array_equal(z1, rng.randn(3, 4).astype(np.float32))


# ---------------------------------------------------------------------------
# Baselines.
# ---------------------------------------------------------------------------


def test_baselines_never_beat_the_identity_on_clean_input():
  clean = _digits(4).astype(np.float32)
  best = ssim.psnr(clean, clean)  # The identity: PSNR capped at 100 dB, not inf.
  assert np.all(np.isfinite(best)) and np.all(best == ssim.PSNR_CAP_DB)
  for name in baselines.DENOISERS:
    out = baselines.denoise(name, clean)
    assert out.shape == clean.shape and out.dtype == np.float32
    assert np.all(ssim.psnr(clean, out) <= best)
    assert np.all(ssim.ssim(clean, out) <= 1.0 + 1e-12)
  mask = np.ones((4, 28, 28, 1), np.float32)  # Nothing missing: nothing to change.
  np.testing.assert_array_equal(baselines.inpaint('biharmonic', clean, mask), clean)


def test_baselines_restore_what_they_are_for():
  clean = _digits(4).astype(np.float32)
  noisy = degradations.gaussian_noise(clean, 0.2, seed=0)
  for name in baselines.DENOISERS:
    assert ssim.psnr(clean, baselines.denoise(name, noisy)).mean() > ssim.psnr(clean, noisy).mean()
  sp = degradations.salt_and_pepper(clean, 0.1, seed=0)
  assert (ssim.psnr(clean, baselines.denoise('median', sp)).mean()
          > ssim.psnr(clean, sp).mean() + 3)
  mask = degradations.block_holes(4, 28, 28, 0.15, seed=0)
  grey = mask * clean + (1 - mask) * 0.5
  filled = baselines.inpaint('biharmonic', grey, mask)
  np.testing.assert_array_equal(filled[mask > 0.5], clean[mask > 0.5])  # Observed kept.
  hole = 1.0 - mask
  assert ssim.psnr(clean, filled, weights=hole).mean() > ssim.psnr(clean, grey, weights=hole).mean()
  with pytest.raises(ValueError, match='Unknown denoiser'):
    baselines.denoise('wiener', clean)


def test_noise_sigma_estimates_gaussian_noise():
  rng = np.random.default_rng(4)
  flat = np.full((64, 64, 1), 0.5)
  for std in (0.05, 0.2):
    assert baselines.noise_sigma(flat + std * rng.standard_normal(flat.shape)) == pytest.approx(
        std, rel=0.1)


# ---------------------------------------------------------------------------
# The benchmark's JSON for every family.
# ---------------------------------------------------------------------------

TINY = benchmark.Settings(num_images=6, inpaint_steps=2, restarts=1, posterior_iters=2,
                          ppl_samples=8)


@pytest.fixture(scope='module')
def tasks():
  rng = np.random.default_rng(0)
  test_images = (np.clip(_digits(24, seed=1) + 0.05 * rng.random((24, 28, 28, 1)), 0, 1)
                 * 255).astype(np.uint8)
  return benchmark.make_tasks(test_images, np.arange(24) % 10, TINY)


@pytest.fixture(scope='module')
def net():
  from vaegan_jax.metrics import feature_net  # pylint: disable=g-import-not-at-top
  return feature_net.get('mnist5k')


def test_tasks_are_deterministic_and_shared(tasks):
  again = benchmark.make_tasks(tasks.test_images, np.arange(24) % 10, TINY)
  for name in tasks.noisy:
    np.testing.assert_array_equal(tasks.noisy[name], again.noisy[name])
  for name in tasks.masks:
    np.testing.assert_array_equal(tasks.masks[name], again.masks[name])
  assert len(tasks.noisy) == 5 and len(tasks.masks) == 4  # 3 + 2 noises; 2 x 2 masks
  assert tasks.clean.shape == (6, 28, 28, 1) and tasks.labels.shape == (6,)
  hole = 1 - tasks.masks['center_0.5'][0, ..., 0]
  assert hole.sum() == 14 * 14 and hole[14, 14] == 1


@pytest.mark.parametrize('family', ['vae', 'gan', 'vaegan'])
def test_applications_json_has_every_key_for_every_family(family, tasks, net):
  config = load_config(family, 'smoke')
  fam = families.get(family)
  state = fam.init_state(config, jax.random.PRNGKey(0))
  model = api.Model('', 0, config, fam, state)
  result = benchmark.evaluate(model, tasks, net, keep_examples=1, echo=lambda m: None)
  examples = result.pop('examples')
  json.dumps(result, allow_nan=False)  # Valid JSON: no NaN, no inf.
  metrics = result['metrics']
  assert list(metrics) == benchmark.metric_keys(TINY)
  undefined = {k for k, v in metrics.items() if v is None}
  expected = {'ppl/inception', 'ppl/inception_std'}  # No Inception weights given.
  if not model.has_encoder:  # The GAN: no denoising, no reconstruction.
    expected |= {k for k in metrics if k.startswith(('denoise/', 'reconstruct/'))}
  assert undefined == expected
  assert all(math.isfinite(v) for v in metrics.values() if v is not None)
  assert set(result['inpaint_methods'].values()) == (
      {'posterior', 'latent'} if model.has_encoder else {'latent'})
  for name, mask in tasks.masks.items():  # Observed pixels are kept.
    m = mask[:1] > 0.5
    np.testing.assert_allclose(examples[name][m], tasks.clean[:1][m], atol=1e-6)
  assert metrics['ppl/own'] > 0


def test_baseline_rows_have_the_same_keys(tasks, net):
  rows = benchmark.evaluate_baselines(tasks, net)
  assert set(rows) == {benchmark.DAMAGED, 'median', 'gaussian', 'nl_means', 'biharmonic'}
  for name, row in rows.items():
    assert list(row['metrics']) == benchmark.metric_keys(TINY)
    defined = {k for k, v in row['metrics'].items() if v is not None}
    if name in baselines.DENOISERS:
      assert defined == {k for k in row['metrics'] if k.startswith('denoise/')}
    elif name in baselines.INPAINTERS:
      assert defined == {k for k in row['metrics'] if k.startswith('inpaint/')}
  json.dumps(rows, allow_nan=False)
  # The damaged input is the identity on the observed pixels: its hole PSNR is the grey fill's.
  grey = tasks.masked('center_0.5')
  assert rows[benchmark.DAMAGED]['metrics']['inpaint/center_0.5/psnr_hole'] == pytest.approx(
      ssim.psnr(tasks.clean, grey, weights=1 - tasks.masks['center_0.5']).mean())
