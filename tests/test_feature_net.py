"""The project's feature network: shipped weights, checksums, deterministic training."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from vaegan_jax import input_pipeline
from vaegan_jax.errors import UserError
from vaegan_jax.metrics import feature_net

SHIPPED = feature_net.shipped_path('mnist5k')


def _copy_shipped(tmp_path):
  for src in (SHIPPED, feature_net.checksum_path(SHIPPED), feature_net.metadata_path(SHIPPED)):
    shutil.copy(src, tmp_path)
  return str(tmp_path / os.path.basename(SHIPPED))


def test_shipped_weights_are_small_verified_and_documented():
  assert os.path.getsize(SHIPPED) < 500_000
  net = feature_net.load(SHIPPED)
  with open(feature_net.checksum_path(SHIPPED)) as f:
    assert f.read().split()[0] == net.metadata['sha256']
  with open(feature_net.metadata_path(SHIPPED)) as f:
    meta = json.load(f)
  assert meta['dataset'] == 'mnist5k' and meta['test_accuracy'] >= 0.96
  assert meta['sha256'] == net.metadata['sha256']
  assert 'not Inception' in meta['note']
  assert (net.num_classes, net.feature_dim) == (10, 128)


def test_shipped_net_is_accurate_on_the_test_split(data_dir):
  net = feature_net.load(SHIPPED)
  images, labels = input_pipeline.load_split('mnist5k', 'test', data_dir)
  acc = feature_net.accuracy(net, images, labels)
  assert acc >= 0.96
  assert abs(acc - net.metadata['test_accuracy']) <= 2 / len(labels)
  feats, probs = net.compute(images[:37], batch_size=16)  # Padded last batch.
  assert feats.shape == (37, 128) and probs.shape == (37, 10)
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
  # Features are scaled to mean square ~1 per dimension (on the train split).
  assert 0.3 < float(np.mean(np.square(feats))) < 3.0


def test_load_reports_missing_files(tmp_path):
  with pytest.raises(UserError, match='weights .* are missing'):
    feature_net.load(str(tmp_path / 'nope.msgpack'))
  path = _copy_shipped(tmp_path)
  os.remove(feature_net.checksum_path(path))
  with pytest.raises(UserError, match='Checksum file .* is missing'):
    feature_net.load(path)


def test_load_rejects_an_altered_file(tmp_path):
  path = _copy_shipped(tmp_path)
  feature_net.load(path)  # The intact copy loads.
  data = bytearray(open(path, 'rb').read())
  data[len(data) // 2] ^= 0x01  # One flipped bit in the middle of the params.
  with open(path, 'wb') as f:
    f.write(bytes(data))
  with pytest.raises(UserError, match='do not match their checksum.*altered'):
    feature_net.load(path)


def test_training_is_deterministic_and_cached_on_first_use(tmp_path, data_dir, monkeypatch):
  kwargs = dict(num_steps=3, batch_size=16, max_train_examples=64, width=4,
                feature_dim=8, verbose=False)
  a = feature_net.train('mnist5k', data_dir=data_dir, **kwargs)
  b = feature_net.train('mnist5k', data_dir=data_dir, **kwargs)
  a_path, b_path = str(tmp_path / 'a.msgpack'), str(tmp_path / 'b.msgpack')
  assert feature_net.save(a, a_path) == feature_net.save(b, b_path)
  c = feature_net.train('mnist5k', data_dir=data_dir, seed=1, **kwargs)
  assert feature_net.save(c, str(tmp_path / 'c.msgpack')) != feature_net.save(a, a_path)

  # No shipped or cached weights: trained once, then read from the cache.
  calls = []

  def fake_train(dataset, **kw):
    calls.append((dataset, kw))
    return a

  monkeypatch.setattr(feature_net, 'train', fake_train)
  empty, cache = str(tmp_path / 'empty'), str(tmp_path / 'cache')
  net = feature_net.get('mnist5k', data_dir=data_dir, cache_dir=cache, weights_dir=empty,
                        num_steps=3)
  assert calls == [('mnist5k', {'data_dir': data_dir, 'num_steps': 3})]
  assert os.path.exists(feature_net.cache_path('mnist5k', cache))
  assert net.metadata['sha256'] == feature_net.save(a, a_path)
  again = feature_net.get('mnist5k', cache_dir=cache, weights_dir=empty)
  assert len(calls) == 1 and again.metadata['sha256'] == net.metadata['sha256']
  # Shipped weights come first.
  assert feature_net.get('mnist5k', cache_dir=cache).metadata['path'] == SHIPPED


def test_features_are_unit_directions_and_the_map_is_in_the_checksum(tmp_path, data_dir):
  import dataclasses  # pylint: disable=g-import-not-at-top
  net = feature_net.load(SHIPPED)
  assert net.feature_map == 'l2' and net.metadata['format_version'] == 2
  images, _ = input_pipeline.load_split('mnist5k', 'test', data_dir)
  feats, _ = net.compute(images[:20])
  np.testing.assert_allclose(np.linalg.norm(feats, axis=1), np.sqrt(128), rtol=1e-5)
  # The same weights with the old map: raw features / feature_scale, another sha256.
  scaled = dataclasses.replace(net, feature_map='scaled')
  raw, _ = scaled.compute(images[:20])
  np.testing.assert_allclose(feats, raw / np.linalg.norm(raw, axis=1, keepdims=True)
                             * np.sqrt(128), rtol=1e-5, atol=1e-6)
  path = str(tmp_path / 'scaled.msgpack')
  assert feature_net.save(scaled, path) != net.metadata['sha256']
  assert feature_net.load(path).feature_map == 'scaled'


def test_a_format_1_cached_network_is_converted_once(tmp_path, monkeypatch):
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  net = feature_net.load(SHIPPED)
  cache = str(tmp_path / 'cache')
  old = feature_net.legacy_cache_path('mnist5k', cache)
  os.makedirs(cache)
  payload = {'format_version': 1, 'architecture': {'num_classes': 10, 'width': 16,
                                                   'feature_dim': 128},
             'feature_scale': net.feature_scale, 'params': jax.tree.map(np.asarray, net.params)}
  data = flax.serialization.msgpack_serialize(payload)
  with open(old, 'wb') as f:
    f.write(data)
  with open(feature_net.checksum_path(old), 'w') as f:
    f.write(f'{feature_net._sha256(data)}  mnist5k.msgpack\n')  # pylint: disable=protected-access
  assert feature_net.load(old).feature_map == 'scaled'  # Format 1 keeps its own map.
  empty = str(tmp_path / 'no_shipped')
  converted = feature_net.find('mnist5k', cache_dir=cache, weights_dir=empty)
  assert converted.feature_map == 'l2'
  assert converted.metadata['path'] == feature_net.cache_path('mnist5k', cache)
  assert converted.metadata['sha256'] == net.metadata['sha256']  # Same weights, same map.
  monkeypatch.setattr(feature_net, 'save', lambda *a: pytest.fail('converted twice'))
  assert feature_net.find('mnist5k', cache_dir=cache, weights_dir=empty).feature_map == 'l2'
  assert os.path.exists(old)


def test_unlabelled_dataset_is_refused():
  with pytest.raises(UserError, match='no class labels'):
    feature_net.train('celeb_a')


def test_cli_error_is_one_line():
  proc = subprocess.run(
      [sys.executable, '-m', 'vaegan_jax.metrics.feature_net', '--dataset=mnist_typo'],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 2  # A usage error: the command itself is wrong.
  assert proc.stderr.strip().splitlines()[-1].startswith("error: Unknown dataset 'mnist_typo'")
  assert 'Traceback' not in proc.stderr
