"""The FID Inception port against outputs of the reference code.

tests/golden/inception.npz was written by tests/golden/make_inception_golden.py
with torch and the reference sources (torch-fidelity 0.4.0's network with
pytorch-fid 0.3.0's resize, pytorch-fid's Fréchet distance, torch-fidelity's
KID and IS) on seeded random weights that tests/inception_random_weights.py
rebuilds here without torch. The network is compiled once (module fixture).
"""

import glob
import os
import pickle
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import inception_random_weights
from vaegan_jax.errors import UserError
from vaegan_jax.metrics import convert_inception
from vaegan_jax.metrics import distances
from vaegan_jax.metrics import inception

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'golden')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def golden():
  with np.load(os.path.join(GOLDEN_DIR, 'inception.npz'), allow_pickle=False) as g:
    return {k: g[k] for k in g.files}


@pytest.fixture(scope='module')
def net(tmp_path_factory):
  """The port with the seeded random weights, through the .npz format."""
  state = inception_random_weights.random_state(inception.torch_shapes())
  path = str(tmp_path_factory.mktemp('inception') / 'random_inception.npz')
  inception.save_npz(state, path, source_sha256='0' * 64)
  return inception.load(path)


@pytest.fixture(scope='module')
def outputs(net, golden):
  """pool3, logits, unbiased logits of set a (8 grey 28 px) + set b (8 RGB 32 px),
  in one compiled batch of 16."""
  x = jnp.concatenate([net._preprocess(golden['set_a']), net._preprocess(golden['set_b'])])
  return [np.asarray(o) for o in net.apply_preprocessed(x)]


def _rel_err(got, want):
  return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


# ---------------------------------------------------------------------------
# Input handling.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('size', [28, 32, 64])
def test_resize_matrix_is_torch_interpolate(golden, size):
  np.testing.assert_allclose(inception.resize_matrix(size), golden[f'matrix_{size}'],
                             atol=1e-6, rtol=0)


@pytest.mark.parametrize('size,channels', [(28, 1), (32, 3), (64, 1), (64, 3), (32, 1), (28, 3)])
def test_preprocess_matches_pytorch_fid(golden, size, channels):
  img = golden[f'image_{size}_{channels}']
  assert img.dtype == np.uint8 and img.shape == (1, size, size, channels)
  x = np.asarray(inception.preprocess(jnp.asarray(img)))
  assert x.shape == (1, 299, 299, 3)
  idx = golden['pixel_index']
  np.testing.assert_allclose(x[0][idx[:, 0], idx[:, 1]], golden[f'pixels_{size}_{channels}'],
                             atol=2e-6, rtol=0)
  assert -1.0 <= x.min() and x.max() <= 1.0
  # Float input in [0, 1] is the same image.
  np.testing.assert_allclose(inception.preprocess(jnp.asarray(img / 255.0, jnp.float32)), x,
                             atol=1e-6)


def test_preprocess_rejects_bad_shapes():
  with pytest.raises(ValueError, match='1 or 3'):
    inception.preprocess(jnp.zeros((2, 8, 8, 2), jnp.uint8))


# ---------------------------------------------------------------------------
# The network and the scores.
# ---------------------------------------------------------------------------


def test_pool3_and_logits_match_reference(outputs, golden):
  pool3, logits, unbiased = outputs
  assert pool3.shape == (16, 2048) and logits.shape == unbiased.shape == (16, 1008)
  for got, name in ((pool3, 'pool3'), (logits, 'logits'), (unbiased, 'unbiased')):
    want = np.concatenate([golden[f'{name}_a'], golden[f'{name}_b']])
    assert _rel_err(got, want) <= 1e-4, name
  # The weights keep activations O(1): a meaningful comparison.
  assert 0.3 < pool3.std() < 3.0 and np.abs(pool3[:8] - pool3[8:]).mean() > 0.05


def test_both_conv_impls_match_reference(net, outputs, golden):
  """The default on this CPU is the oneDNN path (BatchNorm folded, conv + bias
  + ReLU in one call); flax's XLA convolutions give the same outputs."""
  assert net.conv_impl == 'onednn'
  xla = inception.InceptionNetwork(net.params, conv_impl='xla')
  assert xla.conv_impl == 'xla' and xla.module.conv_impl == 'xla'
  x = jnp.concatenate([net._preprocess(golden['set_a']), net._preprocess(golden['set_b'])])
  got = [np.asarray(o) for o in xla.apply_preprocessed(x)]
  for name, g, o in zip(('pool3', 'logits', 'unbiased'), got, outputs):
    want = np.concatenate([golden[f'{name}_a'], golden[f'{name}_b']])
    assert _rel_err(g, want) <= 1e-4, name
    assert _rel_err(o, g) <= 1e-5, name


@pytest.mark.parametrize('shape', [(2, 147, 147, 3), (2, 8, 8, 5), (1, 35, 35, 4)])
def test_pools_equal_flax(shape):
  """The pools as separable slices: max pools exactly flax's, the average pool
  of the oneDNN path (over unpadded pixels) up to float32 rounding."""
  x = jax.random.normal(jax.random.key(1), shape)
  for stride, pad in ((2, 0), (1, 1)):
    want = nn.max_pool(x, (3, 3), (stride, stride), padding=((pad, pad), (pad, pad)))
    np.testing.assert_array_equal(inception._max_pool_3x3(x, stride, pad), want)
  want = nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)
  np.testing.assert_array_equal(inception._avg_pool_3x3_same(x, 'xla'), want)
  np.testing.assert_allclose(inception._avg_pool_3x3_same(x, 'onednn'), want,
                             rtol=1e-6, atol=1e-6)


def test_conv_impl_falls_back_to_xla_with_one_note(monkeypatch, capsys):
  monkeypatch.setattr(inception.conv_onednn, 'status', lambda: (False, 'no C++ compiler'))
  monkeypatch.setattr(inception, '_fallback_noted', False)
  assert inception.resolve_conv_impl('auto') == 'xla'
  assert inception.resolve_conv_impl('onednn') == 'xla'
  assert inception.resolve_conv_impl('xla') == 'xla'
  lines = capsys.readouterr().out.splitlines()
  assert lines == ["note: the Inception's convolutions run in XLA: oneDNN's are "
                   'unavailable (no C++ compiler)']
  with pytest.raises(ValueError, match='Unknown Inception conv_impl'):
    inception.resolve_conv_impl('gemm')


def test_fid_and_kid_match_reference(outputs, golden):
  pool3 = outputs[0]
  fa, fb = pool3[:8], pool3[8:]
  fid = distances.frechet_distance(*distances.feature_stats(fa), *distances.feature_stats(fb))
  assert abs(fid - golden['fid']) <= 1e-3 * golden['fid']
  # Subsets of the whole set: every subset is the set itself.
  kid, kid_std = distances.kid(fa, fb, num_subsets=2, subset_size=8)
  assert abs(float(kid) - golden['kid']) <= 1e-3 * abs(golden['kid'])
  # Both subsets are the whole set in another order, so the two estimates
  # differ only by float32 rounding of the kernel sums: bounded by float32's
  # epsilon times the sizes of the terms MMD² is the difference of (with
  # m² = 64 terms per mean, a generous factor 64), not by a fixed number
  # (the summation order, and so the rounding, differs between versions).
  d = fa.shape[1]
  f64a, f64b = np.asarray(fa, np.float64), np.asarray(fb, np.float64)
  k = lambda x, y: (x @ y.T / d + 1.0) ** 3
  scale = np.abs(k(f64a, f64a)).mean() + np.abs(k(f64b, f64b)).mean() + 2 * np.abs(
      k(f64a, f64b)).mean()
  assert float(kid_std) <= 64 * np.finfo(np.float32).eps * scale
  assert float(kid_std) <= 1e-2 * abs(golden['kid'])  # Far below the value itself.


def test_inception_score_matches_torch_fidelity(outputs, golden):
  unbiased = np.concatenate([golden['unbiased_a'], golden['unbiased_b']])
  mean, std = inception.inception_score(unbiased, splits=4)
  assert mean == pytest.approx(float(golden['is_mean']), rel=1e-9)
  assert std == pytest.approx(float(golden['is_std']), rel=1e-6)
  mean, _ = inception.inception_score(outputs[2], splits=4)
  assert mean == pytest.approx(float(golden['is_mean']), rel=1e-4)


def test_inception_score_closed_forms():
  mean, std = inception.inception_score(np.zeros((100, 1008)))
  assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)
  # A perfect, balanced one-hot classifier: each split holds every class once.
  one_hot = np.tile(50.0 * np.eye(1008), (10, 1))
  mean, std = inception.inception_score(one_hot, splits=10, shuffle=False)
  assert mean == pytest.approx(1008.0, rel=1e-9) and std < 1e-6
  with pytest.raises(ValueError):
    inception.inception_score(np.zeros((5, 1008)), splits=10)


def test_compute_chunks_pads_and_quantises(net, golden, outputs):
  # 8 images in a padded chunk of 16 (the compiled network's batch size).
  out = net.compute(golden['set_b'], batch_size=16)
  np.testing.assert_allclose(out['pool3'], outputs[0][8:], atol=1e-5)
  # An iterable of float batches in [0, 1] is quantised back to the same uint8.
  batches = (golden['set_b'][i:i + 3] / 255.0 for i in range(0, 8, 3))
  out = net.compute(batches, batch_size=16, num_images=7)
  assert out['logits'].shape == (7, 1008)
  np.testing.assert_allclose(out['logits'], outputs[1][8:15], atol=1e-4)


# ---------------------------------------------------------------------------
# Weights: converter and loader.
# ---------------------------------------------------------------------------


def _tiny(fmt):
  (path,) = glob.glob(os.path.join(GOLDEN_DIR, f'tiny_inception_{fmt}-*.pth'))
  return path


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_converter_reads_torch_files_without_torch(tmp_path, fmt):
  out = str(tmp_path / 'w.npz')
  info = convert_inception.convert(_tiny(fmt), out)
  assert info['num_tensors'] == 472
  with np.load(out, allow_pickle=False) as data:
    keys = sorted(k for k in data.files if not k.startswith('__'))
    assert set(keys) == set(inception.torch_shapes())
    all_keys = sorted(set(keys) | {k.rsplit('.', 1)[0] + '.num_batches_tracked'
                                   for k in keys if '.bn.' in k})
    for i, k in enumerate(all_keys):
      if k == 'fc.weight':  # a transposed (non-contiguous) view in the file
        np.testing.assert_array_equal(data[k], np.arange(6, dtype=np.float32).reshape(3, 2).T)
      elif k in keys:
        assert data[k].dtype == np.float32 and data[k].item() == i + 0.25, k
    assert str(data['__source_sha256__']) == info['source_sha256']
  # Converted fine, but the loader checks shapes: these are not the real ones.
  with pytest.raises(UserError, match='does not hold the FID Inception'):
    inception.load(out)


def test_converter_never_runs_pickled_code(tmp_path):
  class Evil:
    def __reduce__(self):
      return (os.system, ('touch ' + str(tmp_path / 'pwned'),))

  path = str(tmp_path / 'evil.pth')
  with open(path, 'wb') as f:
    pickle.dump(convert_inception._LEGACY_MAGIC, f)
    pickle.dump(1001, f)
    pickle.dump({}, f)
    pickle.dump({'fc.weight': Evil()}, f)
  with pytest.raises(ValueError, match='not a torch state dict'):
    convert_inception.read_state_dict(path)
  assert not os.path.exists(tmp_path / 'pwned')


def _run(*args, env=None):
  proc = subprocess.run([sys.executable, '-m', *args], capture_output=True, text=True,
                        cwd=ROOT, env={**os.environ, 'JAX_PLATFORMS': 'cpu', **(env or {})},
                        timeout=300)
  return proc.returncode, [l for l in proc.stderr.splitlines() if l.strip()]


def test_converter_cli_errors_are_one_line(tmp_path):
  convert = ('vaegan_jax.metrics.convert_inception', f'--out={tmp_path}/w.npz')
  rc, err = _run(*convert, f'--pth={tmp_path}/pt_inception-2015-12-05-6726825d.pth')
  assert rc == 1 and len(err) == 1 and 'is not a file' in err[0]
  wrong_hash = str(tmp_path / 'pt_inception-2015-12-05-6726825d.pth')
  shutil.copy(_tiny('zip'), wrong_hash)  # right layout, not the known file's hash
  rc, err = _run(*convert, f'--pth={wrong_hash}')
  assert rc == 1 and len(err) == 1 and 'sha256' in err[0] and '6726825d' in err[0]
  junk = tmp_path / 'junk.pth'
  junk.write_bytes(b'not a torch file at all')
  import hashlib  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256(junk.read_bytes()).hexdigest()
  rc, err = _run(*convert, f'--pth={junk}', f'--sha256={digest}')
  assert rc == 1 and len(err) == 1 and 'cannot be converted' in err[0]
  assert not os.path.exists(tmp_path / 'w.npz')
  rc, _ = _run(*convert, f'--pth={_tiny("legacy")}')
  assert rc == 0 and os.path.exists(tmp_path / 'w.npz')


def test_loader_errors_name_both_options(tmp_path, monkeypatch):
  monkeypatch.delenv(inception.ENV_VAR, raising=False)
  monkeypatch.setenv('VAEGAN_JAX_CACHE', str(tmp_path / 'cache'))  # Offline: a refused
  monkeypatch.setenv('VAEGAN_JAX_WEIGHTS_MIRROR', 'http://127.0.0.1:9')  # loopback port.
  for bad in (None, str(tmp_path / 'missing.npz')):
    with pytest.raises(UserError) as e:
      inception.load(bad)
    assert '--inception_weights' in str(e.value) and inception.ENV_VAR in str(e.value)
    assert '\n' not in str(e.value)
  corrupt = tmp_path / 'corrupt.npz'
  corrupt.write_bytes(b'PK\x03\x04 broken')
  monkeypatch.setenv(inception.ENV_VAR, str(corrupt))
  with pytest.raises(UserError, match='not a converted .npz') as e:
    inception.load()
  assert '--inception_weights' in str(e.value)
  plain = tmp_path / 'plain.npz'
  np.savez(plain, x=np.zeros(3))
  with pytest.raises(UserError, match='not written by the converter'):
    inception.load(str(plain))


# ---------------------------------------------------------------------------
# The evaluate CLI end to end with converted random weights.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def vae_workdir(tmp_path_factory, data_dir):
  from conftest import load_config  # pylint: disable=g-import-not-at-top
  from vaegan_jax import train  # pylint: disable=g-import-not-at-top
  config = load_config('vae', 'smoke')
  config.data.data_dir = data_dir
  config.train.num_steps = 2
  config.train.checkpoint_every_steps = 2
  config.train.eval_every_steps = 2
  config.train.sample_every_steps = 2
  config.eval.generative_metrics = False
  workdir = str(tmp_path_factory.mktemp('incep_run'))
  train.train_and_evaluate(config, workdir)
  return workdir


def test_evaluate_cli_inception_end_to_end(vae_workdir, net, tmp_path):
  weights = str(tmp_path / 'weights' / 'inception_fid.npz')
  os.makedirs(os.path.dirname(weights))
  shutil.copy(net.path, weights)
  base = ('vaegan_jax.evaluate', f'--workdir={vae_workdir}', '--features=inception',
          '--num_samples=12', '--num_reference=16', '--iwae_k=0')
  env = {inception.ENV_VAR: '', 'VAEGAN_JAX_CACHE': str(tmp_path / 'cache'),
         'VAEGAN_JAX_WEIGHTS_MIRROR': 'http://127.0.0.1:9'}  # Offline (refused port).
  rc, err = _run(*base, env=env)
  assert rc == 1 and len(err) == 1 and '--inception_weights' in err[0]
  assert inception.ENV_VAR in err[0] and 'sha256 6726825d0af5f729' in err[0]
  out = str(tmp_path / 'eval.json')
  cache = str(tmp_path / 'cache')
  rc, err = _run(*base, f'--out={out}', env={inception.ENV_VAR: weights,
                                             'VAEGAN_JAX_CACHE': cache})
  assert rc == 0, err[-3:]
  import json  # pylint: disable=g-import-not-at-top
  with open(out) as f:
    result = json.load(f)
  for key in ('fid_inception', 'kid_inception', 'kid_inception_std', 'is_inception',
              'is_inception_std', 'density_inception', 'coverage_inception',
              'precision_inception', 'recall_inception', 'fid', 'kid'):
    assert np.isfinite(result[key]), key
  assert result['fid_inception'] > 0 and 1.0 <= result['is_inception'] <= 1008.0
  assert 0.0 <= result['precision_inception'] <= 1.0
  assert (result['features'], result['num_samples']) == ('inception', 12)
  assert result['protocol']['inception'] == {
      'backbone': 'inception', 'weights_sha256': '0' * 64,  # the source .pth's (fixture)
      'resize': 'pytorch_fid', 'num_samples': 12, 'reference': 'mnist5k train',
      'num_reference': 16}
  assert result['lines'][0].startswith('FID-12 (Inception, pytorch_fid resize, vs mnist5k '
                                       'train 16) = ')
  # The train-split features were cached, keyed by the weights' hash and the resize.
  (cached,) = glob.glob(os.path.join(cache, 'fid_refs', 'mnist5k_train_16_inception_'
                                     'pytorch_fid_*.npz'))
  with np.load(cached, allow_pickle=False) as data:
    assert data['features'].shape == (16, 2048) and data['sigma'].shape == (2048, 2048)
  # Later runs read the cache (the split is not loaded again) and only then.
  def no_load():
    raise AssertionError('the cached statistics were not used')

  from vaegan_jax.metrics import backbones  # pylint: disable=g-import-not-at-top
  os.environ['VAEGAN_JAX_CACHE'] = cache
  try:
    bb = backbones.get('inception', weights_path=weights, echo=lambda m: None)
    feats = backbones.reference_features(bb, 'mnist5k', 'train', no_load, 16, None,
                                         echo=lambda m: None)
  finally:
    del os.environ['VAEGAN_JAX_CACHE']
  assert feats['features'].shape == (16, 2048)
