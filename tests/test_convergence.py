"""experiments/convergence.py: the study's convergence rule, stability, collapse."""

import math
import os

import numpy as np
import pytest

from conftest import ROOT

import convergence  # pylint: disable=g-import-not-at-top,wrong-import-position

STEPS = list(range(250, 4001, 250))  # 16 evaluations, 4 per quarter.


def _curves(fn, seeds=3):
  return [{'eval_step': STEPS, 'fid': [fn(t) + s * 0.3 for t in STEPS]}
          for s in range(seeds)]


def _learnt(fn):
  """`fn` after training has started: 50 worse at the first evaluation."""
  return lambda t: fn(t) + (50.0 if t == STEPS[0] else 0.0)


def test_a_still_falling_curve_has_not_converged():
  # FID falls by 1 per 1000 steps: the last quarter is 1 below the third.
  result = convergence.convergence(_curves(lambda t: 20 - t / 1000), 4000)
  assert result['converged'] is False
  assert result['drop'] == pytest.approx(1.0)
  assert result['q3'] - result['q4'] == pytest.approx(1.0)


def test_a_flat_curve_has_converged_and_a_rising_one_too():
  flat = convergence.convergence(_curves(_learnt(lambda t: 5.0)), 4000)
  assert flat['converged'] is True and flat['learned'] is True
  assert flat['first'] == pytest.approx(55.3) and flat['gain'] == pytest.approx(50.0)
  rising = convergence.convergence(_curves(_learnt(lambda t: 5 + t / 1000)), 4000)
  assert rising['converged'] is True and rising['drop'] < 0


def test_a_curve_that_never_learned_has_not_converged():
  # Flat from the first evaluation on (an untrained or stuck model): settled,
  # but it has not improved, so the rule does not call it converged.
  never = convergence.convergence(_curves(lambda t: 5.0), 4000)
  assert never['learned'] is False and never['converged'] is False
  assert never['drop'] == pytest.approx(0.0)
  # A gain within the noise is no gain either.
  small = convergence.convergence(_curves(lambda t: 5.0 + (0.01 if t == STEPS[0] else 0)), 4000)
  assert small['learned'] is False


def test_noise_decides_a_small_drop():
  # A drop of 0.2 is beyond the noise of seeds that agree to 0.01, within
  # that of seeds spread by 3.
  slope = lambda t: 10 - 0.2 * t / 1000
  tight = [{'eval_step': STEPS, 'fid': [slope(t) + 0.01 * s for t in STEPS]} for s in range(3)]
  loose = [{'eval_step': STEPS, 'fid': [_learnt(slope)(t) + 3.0 * s for t in STEPS]}
           for s in range(3)]
  assert convergence.convergence(tight, 4000)['converged'] is False
  assert convergence.convergence(loose, 4000)['converged'] is True
  # Higher-is-better metrics: a rising curve is still improving.
  up = [{'eval_step': STEPS, 'recall': [t / 4000 + 0.001 * s for t in STEPS]} for s in range(3)]
  assert convergence.convergence(up, 4000, 'recall', lower_is_better=False)['converged'] is False


def test_evaluation_noise_floors_the_standard_error():
  # Three identical seeds (std 0) whose curves jump by +-2 between evaluations:
  # a drop of 0.5 is within that noise.
  jitter = [2.0 if i % 2 else -2.0 for i in range(len(STEPS))]
  curve = [_learnt(lambda t: 10 - 0.5 * t / 1000)(t) + j for t, j in zip(STEPS, jitter)]
  result = convergence.convergence([{'eval_step': STEPS, 'fid': curve}] * 3, 4000)
  assert result['seed_std'] == 0 and result['eval_noise'] > 1
  assert result['converged'] is True


def test_a_family_with_a_diverged_run_has_not_converged():
  curves = _curves(_learnt(lambda t: 5.0))
  curves[2] = {'eval_step': STEPS[:3], 'fid': curves[2]['fid'][:3]}  # Stopped at step 750.
  result = convergence.convergence(curves, 4000)
  assert result['unfinished'] == 1 and result['seeds'] == 2
  assert result['converged'] is False and result['learned'] is True
  assert convergence.convergence(_curves(_learnt(lambda t: 5.0)), 4000)['unfinished'] == 0


def test_missing_quarters_and_non_finite_values():
  sparse = [{'eval_step': [1000, 4000], 'fid': [3.0, 2.0]}]  # No third-quarter evaluation.
  assert convergence.convergence(sparse, 4000)['converged'] is None
  stopped = [{'eval_step': [1000], 'fid': [3.0]}]  # Ended before the budget: diverged.
  assert convergence.convergence(stopped, 4000)['converged'] is False
  bad = _curves(lambda t: 5.0)
  bad[1]['fid'][-1] = float('nan')
  assert convergence.convergence(bad, 4000)['converged'] is False


def test_oscillation_and_collapse():
  flat = _curves(lambda t: 5.0)
  assert convergence.oscillation(flat, 4000) == pytest.approx(0.0)
  zigzag = [{'eval_step': STEPS, 'fid': [10 + (2 if i % 2 else -2) for i in range(16)]}]
  assert convergence.oscillation(zigzag, 4000) == pytest.approx(
      np.std([8, 12, 8, 12], ddof=1) / 10)
  assert convergence.collapsed({'fid': 30.0, 'modes_covered': 3})
  assert not convergence.collapsed({'fid': 30.0, 'modes_covered': 4})
  assert convergence.collapsed({'fid': math.inf, 'modes_covered': 10})


def test_train_seconds_integrates_the_logged_throughput():
  # Rows every 100 steps of batch 64: 64 img/s for the first (compilation),
  # then 640 img/s: 100 s, then 10 s per row.
  steps = [100, 200, 300, 400]
  seconds = convergence.train_seconds(steps, [64, 640, 640, 640], 64, [200, 400, 50])
  assert seconds[:2] == pytest.approx([110.0, 130.0])
  assert seconds[2] is None


def test_summary_ranks_converged_families_or_says_it_is_provisional():
  import report  # pylint: disable=g-import-not-at-top

  def fam(fids, converged):
    return {'params': {'total': 1}, 'loss_keys': [], 'convergence': {'converged': converged},
            'runs': {str(i): {'fid': v, 'feature_net_sha256': 'abc'} for i, v in enumerate(fids)}}

  ladder = {'passed': {'fid': True}, 'feature_net_sha256': 'abc', 'source': 'x'}
  results = {'ladder': ladder, 'families': {
      'a': fam([1.0, 1.1, 1.2], True), 'b': fam([5.0, 5.1, 5.2], True),
      'c': fam([0.1, 0.1, 0.1], False)}}
  text = '\n'.join(report.summary(results))
  # c has the best FID but did not converge: a wins among a and b.
  assert '**a** 1.10 vs b 5.10' in text and 'Not ranked: c' in text
  assert '**c** wins' not in text and '**Provisional**' not in text
  results['families']['b']['convergence']['converged'] = False
  text = '\n'.join(report.summary(results))
  assert text.startswith('In short (provisional)') and 'only a has converged' in text
  assert '**c** 0.10 vs a 1.10' in text
  # A metric the ladder failed is not ranked.
  ladder['passed']['fid'] = False
  text = '\n'.join(report.summary(results))
  assert 'Not ranked by FID' in text and '0.10 vs' not in text
  # A diverged run (no final evaluation, so no feature net) leaves the verdict as it is.
  results['families']['c']['runs']['3'] = {'fid': None, 'diverged_step': 9}
  assert report.ladder_status(results, 'fid') == 'failed'
  # Another feature net than the ladder's: unchecked, so ranked.
  ladder['feature_net_sha256'] = 'other'
  assert report.ladder_status(results, 'fid') == 'unchecked'


def test_summary_does_not_rank_a_family_whose_runs_collapsed():
  import report  # pylint: disable=g-import-not-at-top

  def fam(fids, collapsed_runs):
    return {'params': {'total': 1}, 'loss_keys': [], 'convergence': {'converged': True},
            'collapsed_runs': collapsed_runs,
            'runs': {str(i): {'fid': v, 'feature_net_sha256': 'abc'} for i, v in enumerate(fids)}}

  results = {'families': {'a': fam([1.0, 1.1, 1.2], 0), 'b': fam([5.0, 5.1, 5.2], 0),
                          'c': fam([0.1, 0.1, 0.1], 1)}}
  assert report.converged_families(results) == ['a', 'b', 'c']
  assert report.rankable_families(results) == ['a', 'b']
  text = '\n'.join(report.summary(results))
  assert '**a** 1.10 vs b 5.10' in text and 'Not ranked: c (runs collapsed)' in text
  results['families']['b']['collapsed_runs'] = 2
  text = '\n'.join(report.summary(results))
  assert '**Provisional**: only a has converged' in text and 'b (runs collapsed)' in text


def test_report_names_the_commits_that_trained_and_reported():
  import report  # pylint: disable=g-import-not-at-top
  results = {'environment': {'git_commit': 'bbb'}, 'sessions': [
      {'report_only': False, 'git_commit': 'aaa'}, {'report_only': True, 'git_commit': 'bbb'}]}
  assert report._code_at(results) == ', trained at aaa, report at bbb'  # pylint: disable=protected-access
  results['sessions'][0]['git_commit'] = 'bbb'
  assert report._code_at(results) == ', code at bbb'  # pylint: disable=protected-access
  results['sessions'] = [{'report_only': False}]  # Written before sessions kept commits.
  assert report._code_at(results) == ', code at bbb'  # pylint: disable=protected-access


def test_report_shows_a_diverged_run():
  import report  # pylint: disable=g-import-not-at-top
  curves = _curves(_learnt(lambda t: 5.0))
  runs = {'0': {'fid': 5.0, 'curves': curves[0], 'collapsed': False},
          '1': {'fid': None, 'diverged_step': 751, 'collapsed': True,
                'curves': {'eval_step': STEPS[:3], 'fid': curves[1]['fid'][:3]}}}
  fam = {'runs': runs, 'collapsed_runs': 1, 'params': {'total': 1}, 'loss_keys': [],
         'convergence': convergence.convergence([r['curves'] for r in runs.values()], 4000)}
  results = {'study': {'seeds': 2}, 'families': {'vaegan': fam}}
  text = '\n'.join(report.convergence_section(results))
  assert '| vaegan | **no** (1 run diverged) |' in text
  assert '| 1 (diverged: seed 1 at step 751) |' in text
  assert '| vaegan | 1 | diverged at step 751 |' in '\n'.join(report.per_seed_table(results))
  steps, mean, _, _ = report._mean_curve(list(runs.values()), 'eval_step', 'fid')  # pylint: disable=protected-access
  assert list(steps) == STEPS and mean[-1] == pytest.approx(5.0)  # The finished seed goes on.
