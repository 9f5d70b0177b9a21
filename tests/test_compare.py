"""The comparison study (experiments/compare.py, report.py) and vmapped seeds."""

import functools
import json
import math
import os
import re
import shutil
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, load_config

sys.path.insert(0, os.path.join(ROOT, 'experiments'))

from vaegan_jax import families  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax import vmap_seeds  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax.errors import UserError  # pylint: disable=g-import-not-at-top,wrong-import-position


def _study_config(arg='smoke'):
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = os.path.join(ROOT, 'experiments', 'configs', 'compare.py')
  spec = importlib.util.spec_from_file_location('_compare_study_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


# ---------------------------------------------------------------------------
# Seeds as a batch dimension.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('family_name', ['vae', 'gan'])
def test_vmapped_seeds_equal_one_by_one(family_name):
  """Two seeds vmapped reach the params of the same seeds trained one by one."""
  config = load_config(family_name, 'smoke')
  config.train.batch_size = 8
  family = families.get(family_name)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
  labels = np.zeros((40,), np.int32)
  seeds = [3, 5]
  stacked = vmap_seeds.init_states(config, seeds)
  vstep = vmap_seeds.make_train_step(config)
  step = jax.jit(functools.partial(family.train_step, config))
  singles = [family.init_state(config, jax.random.PRNGKey(s)) for s in seeds]
  for t in range(3):
    batches = vmap_seeds.seed_batches(images, labels, 8, seeds, t)
    stacked, metrics = vstep(stacked, batches)
    singles = [step(state, vmap_seeds.unstack(batches, i))[0]
               for i, state in enumerate(singles)]
    assert all(np.shape(v) == (2,) for v in jax.tree.leaves(metrics))
  for i, single in enumerate(singles):
    vmapped = vmap_seeds.unstack(stacked, i)
    assert int(vmapped.step) == int(single.step) == 3
    for a, b in zip(jax.tree.leaves(vmapped.params), jax.tree.leaves(single.params)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-5)
    for a, b in zip(jax.tree.leaves(vmapped.batch_stats), jax.tree.leaves(single.batch_stats)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-5)
  # The seeds really differ (init and data order), so the comparison means something.
  diff = max(float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree.leaves(singles[0].params), jax.tree.leaves(singles[1].params)))
  assert diff > 0.1


def test_seed_batches_follow_each_seeds_data_order():
  from vaegan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  images = np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1) * 5
  labels = np.arange(50, dtype=np.int32)
  batch = vmap_seeds.seed_batches(images, labels, 8, [0, 1], 7)
  assert batch['image'].shape == (2, 8, 1, 1, 1)
  for i, seed in enumerate([0, 1]):
    np.testing.assert_array_equal(
        batch['label'][i], input_pipeline.global_batch_indices(50, 8, seed, 7))
  assert not np.array_equal(batch['label'][0], batch['label'][1])


def test_vmapped_configs_must_differ_only_in_seed():
  a, b = load_config('vae', 'smoke'), load_config('vae', 'smoke')
  b.seed = 1
  vmap_seeds._check_same_config([a, b])  # pylint: disable=protected-access
  b.train.batch_size = 64
  with pytest.raises(UserError, match='except `seed`'):
    vmap_seeds._check_same_config([a, b])  # pylint: disable=protected-access


# ---------------------------------------------------------------------------
# Study configs.
# ---------------------------------------------------------------------------


def test_run_config_applies_budget_and_overrides():
  import compare  # pylint: disable=g-import-not-at-top
  study = _study_config()
  study.overrides.gan = {'gan': {'ema_decay': 0.5}}
  for name in study.families:
    config = compare.run_config(study, name, 1)
    assert config.model.family == name
    assert config.seed == 1
    assert config.train.batch_size == study.batch_size
    assert config.train.num_steps == study.num_steps
  assert compare.run_config(study, 'gan', 0).gan.ema_decay == 0.5
  study.overrides.gan = {'gan': {'ema_decayy': 0.5}}
  with pytest.raises(UserError, match='overrides.gan.gan.ema_decayy'):
    compare.run_config(study, 'gan', 0)


def test_full_study_config():
  study = _study_config(None)
  assert list(study.families) == ['vae', 'gan', 'vaegan']
  assert study.seeds == 3
  assert study.dataset == 'mnist5k'
  with pytest.raises(ValueError):
    _study_config('nope')


def test_summary_calls_noise():
  import report  # pylint: disable=g-import-not-at-top

  def fam(values):
    return {'params': {'total': 1}, 'loss_keys': [],
            'runs': {str(i): {'fid': v} for i, v in enumerate(values)}}

  results = {'families': {'a': fam([10.0, 10.5, 9.5]), 'b': fam([20.0, 21.0, 19.0]),
                          'c': fam([10.4, 12.0, 8.8])}}
  c = report.compare_top_two(results, 'fid', 'min')
  assert c['winner'] == 'c' or c['winner'] == 'a'
  assert not c['significant']  # a vs c: 0.0 / 0.2 apart, noise ~2.
  results['families'].pop('c')
  c = report.compare_top_two(results, 'fid', 'min')
  assert c['winner'] == 'a' and c['runner_up'] == 'b' and c['significant']
  assert c['noise'] == pytest.approx(2 * math.sqrt(0.5**2 / 3 + 1.0**2 / 3))


# ---------------------------------------------------------------------------
# The smoke study end to end: report, resume.
# ---------------------------------------------------------------------------

_NUMBER = re.compile(r'^-?[\d,]+(\.\d+)?( ± [\d,]+(\.\d+)?)?$')


def _check_report(out, family_names):
  text = open(os.path.join(out, 'report.md')).read()
  rows = [l for l in text.splitlines() if l.startswith('|')]
  assert len(rows) > 20
  cells = 0
  for row in rows:
    parts = [p.strip() for p in row.strip('|').split('|')]
    if set(''.join(parts)) <= set('-:'):  # The separator row.
      continue
    if parts[0] in ('measure', 'cost', 'seeds trained', 'family'):  # Header rows.
      continue
    first_data = 2 if parts[0] in family_names else 1  # Per-seed rows: family | seed.
    for cell in parts[first_data:]:
      cell = cell.strip('*')
      assert cell == 'n/a' or _NUMBER.match(cell), (cell, row)
      if cell != 'n/a':
        assert all(math.isfinite(float(x.replace(',', ''))) for x in cell.split(' ± '))
      cells += 1
  assert cells > 50
  images = re.findall(r'!\[[^\]]*\]\(([^)]+)\)', text)
  assert {'samples.png', 'curves_fid.png', 'curves_losses.png',
          'reconstructions.png'} <= set(images)
  for image in images:
    path = os.path.join(out, image)
    assert os.path.getsize(path) > 1000, image
  return text


def _sessions(workdir):
  with open(os.path.join(workdir, 'timing.json')) as f:
    return json.load(f)['sessions']


def test_smoke_study_report_and_resume(tmp_path, data_dir):
  import compare  # pylint: disable=g-import-not-at-top
  study = _study_config('smoke')
  study.data_dir = data_dir
  out = str(tmp_path / 'study')
  results = compare.run_study(study, out)

  text = _check_report(out, study.families)
  assert 'n/a' in text  # The GAN has no reconstructions.
  with open(os.path.join(out, 'results.json')) as f:
    saved = json.load(f)
  assert set(saved['families']) == set(study.families)
  for name, fam in saved['families'].items():
    assert len(fam['runs']) == study.seeds
    assert fam['params']['total'] > 0
    for run in fam['runs'].values():
      assert math.isfinite(run['fid']) and run['step'] == study.num_steps
      assert run['num_samples'] == study.eval_num_samples
      assert run['train_images_per_s'] > 0 and run['wall_seconds'] > 0
    assert math.isfinite(fam['mean']['fid']) and math.isfinite(fam['std']['fid'])
  assert 'recon_mse' not in saved['families']['gan']['mean']
  assert 'nll_nats' in saved['families']['vae']['mean']
  for name in study.families:
    assert saved['speed'][name]['ratio'] > 0
  assert results['families'].keys() == saved['families'].keys()

  # Rerun after losing the final checkpoints of both VAE seeds (vmapped resume)
  # and of GAN seed 1 (resumed alone, one by one): only those runs train again,
  # from the last common checkpoint.
  runs = os.path.join(out, 'runs')
  lost = [('vae', 0), ('vae', 1), ('gan', 1)]
  for name, seed in lost:
    workdir = os.path.join(runs, name, f'seed_{seed}')
    shutil.rmtree(os.path.join(workdir, 'checkpoints', str(study.num_steps)))
  compare.run_study(study, out)
  half = study.num_steps - study.checkpoint_every_steps
  for name in study.families:
    for seed in range(study.seeds):
      sessions = _sessions(os.path.join(runs, name, f'seed_{seed}'))
      if (name, seed) in lost:
        assert len(sessions) == 2 and sessions[1]['start_step'] == half, (name, seed)
      else:
        assert len(sessions) == 1, (name, seed)
  assert _sessions(os.path.join(runs, 'vae', 'seed_0'))[1]['mode'] == 'vmap'
  assert _sessions(os.path.join(runs, 'gan', 'seed_1'))[1]['mode'] == 'sequential'
  _check_report(out, study.families)


def test_study_config_errors(tmp_path):
  import compare  # pylint: disable=g-import-not-at-top
  study = _study_config('smoke')
  study.families = ('vae', 'flow')
  with pytest.raises(UserError, match='flow'):
    compare.run_study(study, str(tmp_path))
  study = _study_config('smoke')
  study.eval_num_samples = 5
  with pytest.raises(UserError, match='too small'):
    compare.run_study(study, str(tmp_path))
