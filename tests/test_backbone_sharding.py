"""The Inception and DINOv2 backbones of `evaluate` and `fid`: the resize
convention is a real parameter (network, protocol and every cache), and the
features are computed in batches split over every device (the same numbers
on 4 forced CPU devices as on 1). Random weights: the full FID Inception and
a small DINOv2 ViT/14 in the released layout (tests/backbone_weights.py)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import backbone_weights
from conftest import ROOT
from vaegan_jax import fid
from vaegan_jax.errors import UserError
from vaegan_jax.metrics import backbones
from vaegan_jax.metrics import inception


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
  folder = tmp_path_factory.mktemp('backbone_weights')
  return {'inception': backbone_weights.inception_npz(folder),
          'dinov2': backbone_weights.small_dinov2_npz(folder)}


def _images(n, size, channels=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), np.uint8)


def _rel(got, want):
  return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


def _quiet(m):
  del m


def test_inception_resize_is_a_parameter_with_its_own_cache(weights, tmp_path, monkeypatch):
  monkeypatch.setenv('VAEGAN_JAX_CACHE', str(tmp_path / 'cache'))
  x = _images(5, 32)
  bbs = {r: backbones.get('inception', r, weights['inception'], echo=_quiet)
         for r in ('', 'clean')}
  assert [bbs[r].resize for r in bbs] == ['pytorch_fid', 'clean']
  assert [bbs[r].net.resize for r in bbs] == ['pytorch_fid', 'clean']  # The network's own.
  feats = {r: bbs[r].features(x)['features'] for r in bbs}
  # What the backbone computes is the clean resize's, not pytorch-fid's.
  assert _rel(feats['clean'], np.asarray(bbs['clean'].net(x)[0])) <= 1e-5
  assert _rel(feats['clean'], feats['']) > 1e-3
  assert backbones.get('inception', 'tf1', weights['inception'], echo=_quiet).net.resize == 'tf1'
  # Reference statistics: one cache entry per resize, never shared.
  paths = {inception.reference_cache_path(bbs[r].net, 'd', 'test', 0) for r in bbs}
  assert len(paths) == 2
  loads = []

  def load():
    loads.append(1)
    return x

  got = {r: backbones.reference_features(bbs[r], 'd', 'test', load, None, None, echo=_quiet)
         for r in bbs}
  assert len(loads) == 2  # The second resize did not reuse the first's entry.
  assert len(os.listdir(tmp_path / 'cache' / 'fid_refs')) == 2
  for r in bbs:
    np.testing.assert_array_equal(got[r]['features'], feats[r])
    again = backbones.reference_features(bbs[r], 'd', 'test', load, None, None, echo=_quiet)
    np.testing.assert_array_equal(again['features'], feats[r])
  assert len(loads) == 2  # Each from its own entry.
  # Saved statistics of one resize are refused under another.
  stats = str(tmp_path / 'clean_stats.npz')
  backbones.save_stats(stats, bbs['clean'], got['clean'], 'x')
  with pytest.raises(UserError, match='resize'):
    backbones.load_stats(stats, bbs[''])


_FOUR = r'''
import json, sys
import numpy as np
import jax
assert jax.device_count() == 4
from vaegan_jax.metrics import backbones
args = json.loads(sys.argv[1])
x = np.load(args['images'])
out = {}
for name, path in args['weights'].items():
  feats = backbones.get(name, '', path, echo=lambda m: None).features(x)
  out.update({f'{name}/{k}': v for k, v in feats.items()})
np.savez(args['out'], **out)
from vaegan_jax import fid
from vaegan_jax.errors import UserError
fid.run(args['a'], args['b'], features='dinov2', dinov2_weights=args['weights']['dinov2'],
        out=args['fid_out'], echo=lambda m: None)
'''


def test_features_and_fid_on_four_devices_equal_one_device(weights, tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 1
  # 11 images: one batch of 16 split over 4 devices, 5 rows padding; grey and float inputs too.
  x = _images(11, 28, channels=1, seed=3)
  images = str(tmp_path / 'x.npy')
  np.save(images, x)
  a, b = str(tmp_path / 'a.npz'), str(tmp_path / 'b.npz')
  np.savez(a, images=_images(10, 32, seed=4))
  np.savez(b, images=_images(13, 32, seed=5).astype(np.float32) / 255)
  args = {'images': images, 'weights': weights, 'out': str(tmp_path / 'four.npz'),
          'a': a, 'b': b, 'fid_out': str(tmp_path / 'four_fid.json')}
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  proc = subprocess.run([sys.executable, '-c', _FOUR, json.dumps(args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=500)
  assert proc.returncode == 0, proc.stderr[-3000:]
  four = np.load(args['out'])
  for name, path in weights.items():
    feats = backbones.get(name, '', path, echo=_quiet).features(x)
    for k, want in feats.items():
      got = four[f'{name}/{k}']
      assert got.shape == want.shape == (11, want.shape[1]), (name, k)
      assert _rel(got, want) <= 1e-5, (name, k)
      # The images matter far beyond the tolerance.
      assert np.abs(want[0] - want[1]).max() > 1e-3 * np.abs(want).max(), (name, k)
  one = fid.run(a, b, features='dinov2', dinov2_weights=weights['dinov2'], echo=_quiet)
  with open(args['fid_out']) as f:
    got = json.load(f)
  for key in ('fd_dinov2', 'kd_dinov2', 'precision_dinov2', 'recall_dinov2',
              'density_dinov2', 'coverage_dinov2'):
    # KD is a difference of O(1) kernel means (here ~6e-4): float32 rounding
    # of the features moves it by ~1e-6 absolute, hence the absolute term.
    assert got[key] == pytest.approx(one[key], rel=1e-4, abs=1e-5), key
  assert got['protocol'] == one['protocol']
