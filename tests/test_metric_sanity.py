"""The metric ladder: experiments/metric_sanity.py and its committed output."""

import json
import os

import numpy as np
import pytest

from conftest import ROOT


from vaegan_jax import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax.metrics import degradations  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax.metrics import distances  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax.metrics import feature_net  # pylint: disable=g-import-not-at-top,wrong-import-position

COMMITTED = os.path.join(ROOT, 'experiments', 'results', 'metric_sanity')


def test_verdicts_on_known_numbers():
  import metric_sanity as ms  # pylint: disable=g-import-not-at-top
  rising = [[0.0, 0.1], [1.0, 1.1], [2.0, 2.1], [3.0, 3.2]]  # (severities, replicates)
  assert ms.verdict(rising, 'higher')['verdict'] == ms.MONOTONE
  assert ms.verdict(rising, 'higher')['strict']
  assert ms.verdict(rising, 'lower')['verdict'] == ms.WRONG
  flat = [[1.0, 1.2], [1.1, 0.9], [1.0, 1.1]]
  assert ms.verdict(flat, 'higher')['verdict'] == ms.BLIND
  # A dip inside the noise is still monotone; beyond it, wrong.
  noisy = [[0.0, 1.0], [5.0, 6.0], [4.5, 5.5], [9.0, 10.0]]
  assert ms.verdict(noisy, 'higher')['verdict'] == ms.MONOTONE
  dip = [[0.0, 0.1], [5.0, 5.1], [2.0, 2.1], [9.0, 9.1]]
  assert ms.verdict(dip, 'higher')['verdict'] == ms.WRONG
  tol = ms.noise_tolerance(noisy)
  assert tol == pytest.approx(2 * np.sqrt(0.5) * np.sqrt(2 / 2))


def test_judge_applies_scope_and_pairs():
  import metric_sanity as ms  # pylint: disable=g-import-not-at-top
  up = [[float(i), i + 0.01] for i in range(5)]
  flat = [[1.0, 1.0]] * 5
  values = {'fid': {l: up for l in degradations.LADDERS},
            'precision': {l: [[-v for v in r] for r in up] for l in degradations.LADDERS}}
  values['precision']['drop_classes'] = flat  # Out of precision's scope: no failure.
  judged = ms.judge(values, ms.METRICS)
  assert judged['fid']['passed'] and judged['precision']['passed']
  assert judged['precision']['ladders']['drop_classes']['verdict'] == ms.BLIND
  assert not judged['precision']['ladders']['drop_classes']['in_scope']
  assert [p['ok'] for p in judged['fid']['pairs']] == [True] * len(ms.PAIRS)
  # A mild blur scored worse than moderate broken strokes and blobs: monotone
  # still, but both rankings fail.
  values['fid']['blur'] = [[0.0, 0.0]] + [[5.0, 5.01]] * 4
  judged = ms.judge(values, ms.METRICS)
  assert judged['fid']['ladders']['blur']['verdict'] == ms.MONOTONE
  assert [p['ok'] for p in judged['fid']['pairs']] == [False] * len(ms.PAIRS)
  assert not judged['fid']['passed'] and len(judged['fid']['failures']) == len(ms.PAIRS)
  values['fid']['blur'] = up
  values['fid']['noise'] = flat
  judged = ms.judge(values, ms.METRICS)
  assert not judged['fid']['passed'] and judged['fid']['failures'] == ['blind on noise']


@pytest.fixture(scope='module')
def mnist(data_dir):
  train_x, train_y = input_pipeline.load_split('mnist5k', 'train', data_dir)
  test_x, _ = input_pipeline.load_split('mnist5k', 'test', data_dir)
  return train_x, train_y, test_x


def _fids(net, mnist, ladder, severities, n=400):
  train_x, train_y, test_x = mnist
  real, _ = net.compute(test_x)
  stats = distances.feature_stats(real)
  out = []
  for s in severities:
    feats, _ = net.compute(degradations.ladder_images(ladder, s, train_x, train_y, n, seed=0))
    out.append(distances.frechet_distance(*stats, *distances.feature_stats(feats)))
  return out


LADDER_CHECKS = {'blur': (0.0, 1.0, 2.0), 'noise': (0.0, 0.2, 0.4), 'drop_classes': (0, 4, 8)}


@pytest.mark.parametrize('ladder', sorted(LADDER_CHECKS))
def test_shipped_feature_net_fid_is_monotone(mnist, ladder):
  """A broken feature net (below: all weights zero) fails this."""
  net = feature_net.load(feature_net.shipped_path('mnist5k'))
  fids = _fids(net, mnist, ladder, LADDER_CHECKS[ladder])
  assert fids[0] < fids[1] < fids[2], fids
  assert fids[2] > 3 * fids[0] + 1.0, fids


def test_a_broken_feature_net_fails_the_monotonicity_check(mnist):
  import jax  # pylint: disable=g-import-not-at-top
  net = feature_net.load(feature_net.shipped_path('mnist5k'))
  dead = feature_net.FeatureNetwork(net.module, jax.tree.map(lambda p: p * 0, net.params),
                                    net.metadata, net.feature_scale)
  fids = _fids(dead, mnist, 'blur', LADDER_CHECKS['blur'], n=100)
  assert not fids[0] < fids[1] < fids[2]


def test_script_writes_table_json_and_figures(tmp_path, data_dir, monkeypatch):
  import metric_sanity as ms  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv('VAEGAN_JAX_INCEPTION', raising=False)
  out = str(tmp_path / 'sanity')
  result = ms.run(out, num_images=40, replicates=2, ladders=('blur',),
                  data_dir=data_dir, echo=lambda *_: None)
  for name in (ms.RESULTS, ms.TABLE, ms.FIGURE, ms.EXAMPLES):
    assert os.path.getsize(os.path.join(out, name)) > 500, name
  saved = json.load(open(os.path.join(out, ms.RESULTS)))
  assert saved['passed'].keys() == ms.METRICS.keys()
  assert np.shape(saved['values']['fid']['blur']) == (5, 2)
  assert saved['judged']['recall']['ladders']['blur']['in_scope'] is False
  assert saved['feature_net']['sha256'] == feature_net.load(
      feature_net.shipped_path('mnist5k')).metadata['sha256']
  assert 'not available' in saved['inception']
  text = open(os.path.join(out, ms.TABLE)).read()
  assert '| FID |' in text and 'Inception metrics: not available' in text
  assert result['judged']['fid']['ladders']['blur']['in_scope']
  ms.rewrite(out)  # Re-judging the stored values gives the same table.
  assert open(os.path.join(out, ms.TABLE)).read() == text
  with pytest.raises(ms.UsageError, match='unknown fog'):
    ms.run(out, ladders=('fog',), data_dir=data_dir)


def test_committed_ladder_is_current():
  """The committed ladder ran with the shipped net, every ladder, and says
  which metrics failed."""
  import metric_sanity as ms  # pylint: disable=g-import-not-at-top
  saved = json.load(open(os.path.join(COMMITTED, ms.RESULTS)))
  net = feature_net.load(feature_net.shipped_path('mnist5k'))
  assert saved['feature_net']['sha256'] == net.metadata['sha256']
  assert saved['ladders'] == list(degradations.LADDERS)
  assert saved['replicates'] >= 2 and saved['num_images'] >= 1000
  assert saved['passed']['fid'] and saved['passed']['kid']
  text = open(os.path.join(COMMITTED, ms.TABLE)).read()
  for key, ok in saved['passed'].items():
    if not ok:
      assert f'- **{ms.METRICS[key][0]}**' in text  # Named under "Not to be trusted".
  for name in (ms.FIGURE, ms.EXAMPLES):
    assert os.path.getsize(os.path.join(COMMITTED, name)) > 5000
