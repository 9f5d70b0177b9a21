"""Resize conventions (metrics/resize.py) against their reference packages.

tests/golden/resize.npz was written by tests/golden/make_resize_golden.py with
CPU torch and pytorch-fid 0.3.0, clean-fid 0.1.35, torch-fidelity 0.4.0 and
torchvision's PIL ``Resize`` (dgm-eval's DINOv2 transform): preprocessed
inputs of grey and RGB images, up to 299 px and down (96 -> 40, 50 -> 37),
and FID of the FID Inception on seeded random weights
(tests/inception_random_weights.py) with the clean and tf1 conventions.
"""

import os

import jax.numpy as jnp
import numpy as np
import pytest

import inception_random_weights
from vaegan_jax.metrics import distances
from vaegan_jax.metrics import inception
from vaegan_jax.metrics import resize

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'golden', 'resize.npz')
CASES = ((28, 299), (32, 299), (64, 299), (96, 40), (50, 37))


@pytest.fixture(scope='module')
def golden():
  with np.load(GOLDEN, allow_pickle=False) as g:
    return {k: g[k] for k in g.files}


def _normalize(convention):
  return 'unit' if convention == 'dgm_eval' else 'inception'


@pytest.mark.parametrize('convention', resize.CONVENTIONS)
@pytest.mark.parametrize('size,out_size', CASES)
def test_preprocess_matches_reference(golden, convention, size, out_size):
  img = golden[f'images_{size}']
  idx = golden[f'index_{size}']
  x = np.asarray(resize.preprocess(jnp.asarray(img), convention, out_size,
                                   normalize=_normalize(convention)))
  assert x.shape == (2, out_size, out_size, 3) and x.dtype == np.float32
  want = golden[f'{convention}_{size}']
  np.testing.assert_allclose(x[:, idx[:, 0], idx[:, 1]], want, rtol=0,
                             atol=1e-5 * np.abs(want).max())
  # Float input in [0, 1] gives the same (dgm_eval quantises it back to uint8).
  xf = resize.preprocess(jnp.asarray(img / 255.0, jnp.float32), convention, out_size,
                         normalize=_normalize(convention))
  np.testing.assert_allclose(xf, x, rtol=0, atol=2e-5 * np.abs(want).max())


def test_conventions_differ_and_identity_at_input_size(golden):
  img = jnp.asarray(golden['images_32'])
  outs = {c: np.asarray(resize.preprocess(img, c, 299)) for c in resize.CONVENTIONS}
  for a in resize.CONVENTIONS:
    for b in resize.CONVENTIONS:
      if a < b:
        assert np.abs(outs[a] - outs[b]).max() > 1e-2, (a, b)
  for c in resize.CONVENTIONS:
    np.testing.assert_allclose(resize.preprocess(img, c, 32), np.asarray(img) / 255.0,
                               rtol=0, atol=1e-6)


def test_pil_matrices():
  for n_in, n_out in ((28, 299), (96, 40), (7, 3)):
    m = resize.pil_bicubic_matrix(n_in, n_out)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-12)
    k = resize.pil_bicubic_fixed_matrix(n_in, n_out)
    assert k.dtype == np.int32 and np.abs(k.sum(1) - (1 << 22)).max() <= n_in
  # Downsampling widens the kernel (antialiasing): 96 -> 40 has > 4 taps.
  assert (resize.pil_bicubic_matrix(96, 40)[20] != 0).sum() > 4


def test_inception_default_is_unchanged(golden):
  """inception.preprocess's default is the pytorch_fid convention, bit for bit."""
  img = jnp.asarray(golden['images_28'])
  a = np.asarray(inception.preprocess(img))
  b = np.asarray(resize.preprocess(img, 'pytorch_fid', 299, normalize='inception'))
  np.testing.assert_array_equal(a, b)
  x = np.asarray(img, np.float32) / np.float32(255)
  x = np.repeat(x, 3, -1)
  m = inception.resize_matrix(28)
  np.testing.assert_allclose(a, 2 * np.einsum('oh,nhwc,pw->nopc', m, x, m) - 1, atol=2e-6)


def test_bad_arguments():
  with pytest.raises(ValueError, match='unknown resize convention'):
    resize.preprocess(jnp.zeros((1, 8, 8, 3)), 'lanczos', 16)
  with pytest.raises(ValueError, match='normalisation'):
    resize.preprocess(jnp.zeros((1, 8, 8, 3)), 'clean', 16, normalize='zscore')
  with pytest.raises(ValueError, match='shape'):
    resize.preprocess(jnp.zeros((1, 8, 8, 2)), 'clean', 16)


@pytest.fixture(scope='module')
def weights_path(tmp_path_factory):
  state = inception_random_weights.random_state(inception.torch_shapes())
  path = str(tmp_path_factory.mktemp('inception') / 'random_inception.npz')
  inception.save_npz(state, path, source_sha256='0' * 64)
  return path


def test_fid_with_random_weights_matches_reference(golden, weights_path):
  """clean and tf1 through ``inception.load(resize=...)``'s preprocessing, one
  compiled batch of 32: pool3 within 1e-5, FID within 1e-4 relative."""
  nets = {c: inception.load(weights_path, resize=c) for c in ('clean', 'tf1')}
  assert nets['tf1'].resize == 'tf1'
  a, b = golden['fid_set_a'], golden['fid_set_b']
  x = jnp.concatenate([nets[c]._preprocess(s) for c in nets for s in (a, b)])  # pylint: disable=protected-access
  pool3 = np.asarray(nets['clean'].apply_preprocessed(x)[0])
  for k, convention in enumerate(nets):
    got, want = pool3[16 * k:16 * k + 16], golden[f'pool3_{convention}']
    np.testing.assert_allclose(got[:, :256], want, rtol=0, atol=1e-5 * np.abs(want).max())
    fid = distances.frechet_distance(*distances.feature_stats(got[:8]),
                                     *distances.feature_stats(got[8:]))
    assert abs(fid - golden[f'fid_{convention}']) <= 1e-4 * golden[f'fid_{convention}']


def test_reference_cache_names_the_resize():
  nets = [inception.InceptionNetwork(None, '/w/i.npz', 'ab' * 32, resize=r)
          for r in ('pytorch_fid', 'clean')]
  default, clean = (os.path.basename(inception.reference_cache_path(n, 'cifar10', 'train', 0))
                    for n in nets)
  assert default == 'fid_ref_cifar10_train_all_' + 'ab' * 8 + '.npz'
  assert clean == 'fid_ref_cifar10_train_all_clean_' + 'ab' * 8 + '.npz'
