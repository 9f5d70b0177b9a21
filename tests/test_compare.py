"""The comparison study: experiments/compare.py, experiments/report.py."""

import json
import math
import os
import re
import shutil
import time

import pytest

from conftest import ROOT


from vaegan_jax.errors import UserError  # pylint: disable=g-import-not-at-top,wrong-import-position


def _study_config(arg='smoke'):
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = os.path.join(ROOT, 'experiments', 'configs', 'compare.py')
  spec = importlib.util.spec_from_file_location('_compare_study_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


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


def test_lr_schedule_decays_every_optimiser_over_the_budget(tmp_path, monkeypatch):
  import compare  # pylint: disable=g-import-not-at-top
  study = _study_config('')
  assert study.lr_schedule == 'constant'
  study.lr_schedule = 'cosine'
  names = {'vae': ['optim'], 'gan': ['optim.d', 'optim.g'],
           'vaegan': ['optim.dec', 'optim.dis', 'optim.enc']}
  for name in study.families:
    sections = compare.optimiser_sections(compare.run_config(study, name, 0))
    assert len(sections) == len(names[name])
    assert [s.decay_steps for s in sections] == [study.num_steps] * len(sections)
  study.lr_schedule = 'constant'
  for name in study.families:  # The families' own: constant.
    sections = compare.optimiser_sections(compare.run_config(study, name, 0))
    assert [s.decay_steps for s in sections] == [0] * len(sections)
  study.lr_schedule = 'linear'
  with pytest.raises(UserError, match="lr_schedule='linear' must be one of"):
    compare.check_study(study)

  # A run with checkpoints does not go on under another decay length.
  study.lr_schedule = 'cosine'
  config = compare.run_config(study, 'gan', 0)
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  stored = config.to_dict()
  stored['optim']['g']['decay_steps'] = 2000
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(stored, f)
  monkeypatch.setattr(compare, '_start_step', lambda w: 250)  # A checkpoint at 250.
  with pytest.raises(UserError, match='schedule would change mid-run'):
    compare.check_schedule(config, workdir)
  stored['optim']['g']['decay_steps'] = study.num_steps
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(stored, f)
  compare.check_schedule(config, workdir)  # The same schedule: resumes.
  monkeypatch.setattr(compare, '_start_step', lambda w: 0)
  stored['optim']['g']['decay_steps'] = 2000
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(stored, f)
  compare.check_schedule(config, workdir)  # No checkpoint yet: starts afresh.


def test_report_command_line_reproduces_non_default_study_keys():
  import report  # pylint: disable=g-import-not-at-top
  study = _study_config('').to_dict()
  assert report.study_flags(study) == ''
  study.update(lr_schedule='cosine', seeds=5, out='/elsewhere')
  assert report.study_flags(study) == ' --config.lr_schedule=cosine --config.seeds=5'
  smoke = _study_config('smoke').to_dict()
  assert report.study_flags(smoke) == ''  # Compared with the smoke variant's defaults.


def test_a_diverged_run_is_recorded_and_not_trained_again(tmp_path, monkeypatch):
  import compare  # pylint: disable=g-import-not-at-top
  from vaegan_jax import train  # pylint: disable=g-import-not-at-top
  study = _study_config('smoke')
  study.vmap_seeds = False
  out = str(tmp_path)
  calls = []

  def fake_train(config, workdir):
    calls.append(config.seed)
    if config.seed == 1:
      raise train.NonFiniteError('Non-finite loss=nan at step 7; training stopped.', step=7)

  monkeypatch.setattr(train, 'train_and_evaluate', fake_train)
  monkeypatch.setattr(compare, 'trained', lambda w, n: False)
  compare.train_family(study, out, 'gan', echo=lambda m: None)
  assert calls == [0, 1]  # Seed 1 diverged; the study went on.
  record = compare.diverged(compare.run_dir(out, 'gan', 1))
  assert record['step'] == 7 and 'Non-finite loss' in record['message']
  assert compare.diverged(compare.run_dir(out, 'gan', 0)) is None
  assert _sessions(compare.run_dir(out, 'gan', 1))[0]['end_step'] == 7
  calls.clear()
  compare.train_family(study, out, 'gan', echo=lambda m: None)
  assert calls == [0]  # Not trained again: it would diverge at the same step.


def test_a_stopped_session_still_counts_in_the_study_time(tmp_path, monkeypatch):
  import compare  # pylint: disable=g-import-not-at-top
  import report  # pylint: disable=g-import-not-at-top
  study = _study_config('smoke')
  out = str(tmp_path)

  head = ['aaaaaaa']
  monkeypatch.setattr(compare, '_git_commit', lambda: head[0])
  # An earlier study's results lie in `out` without its runs (a committed
  # report in a fresh checkout): its session is not this study's time.
  with open(os.path.join(out, compare.RESULTS), 'w') as f:
    json.dump({'sessions': [{'seconds': 5000.0}]}, f)

  def interrupted(*args, **kwargs):
    head[0] = 'bbbbbbb'  # A commit lands while the study runs.
    time.sleep(0.05)
    raise KeyboardInterrupt

  monkeypatch.setattr(compare, 'train_family', interrupted)
  with pytest.raises(KeyboardInterrupt):
    compare.run_study(study, out, echo=lambda m: None)
  results = compare._read_json(os.path.join(out, compare.RESULTS))
  [session] = results['sessions']
  assert session['stopped'] == 'KeyboardInterrupt: ' and session['seconds'] >= 0.05
  assert session['git_commit'] == 'aaaaaaa'  # The code this process loaded.
  assert session['stage_seconds']['train/vae'] >= 0.05
  assert report._stopped_sessions([session, {'seconds': 1.0}]) == (
      '; 1 of the 2 sessions stopped early, their time included (KeyboardInterrupt: )')
  assert report._stopped_sessions([{'seconds': 1.0}]) == ''
  with pytest.raises(UserError, match='no complete results.json'):
    compare.run_study(study, str(tmp_path / 'elsewhere'), report_only=True)
  os.makedirs(os.path.join(str(tmp_path / 'elsewhere')), exist_ok=True)
  with open(os.path.join(str(tmp_path / 'elsewhere'), compare.RESULTS), 'w') as f:
    json.dump(results, f)  # Only a stopped session: no report to write from it.
  with pytest.raises(UserError, match='no complete results.json'):
    compare.run_study(study, str(tmp_path / 'elsewhere'), report_only=True)


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
    if parts[0] in ('measure', 'cost', 'seeds trained', 'family', 'method'):  # Header rows.
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
  assert {'samples.png', 'curves_fid.png', 'curves_losses.png', 'curves_compute.png',
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
    # Every evaluation is a point of the quality-vs-compute curves.
    curves = fam['runs']['0']['curves']
    assert curves['eval_step'] == list(range(3, study.num_steps + 1, 3))
    assert all(math.isfinite(v) for k in ('fid', 'precision', 'recall')
               for v in curves[k])
    assert all(a < b for a, b in zip(curves['train_seconds'], curves['train_seconds'][1:]))
    assert fam['convergence']['converged'] in (True, False)
    assert fam['convergence']['seeds'] == study.seeds
    assert 0 <= fam['collapsed_runs'] <= study.seeds
  assert '## Convergence and stability' in text
  assert saved['ladder']['passed']['fid'] is True
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
  study = _study_config('smoke')
  study.conv_impl = 'cudnn'
  with pytest.raises(UserError, match="vae runs would train with config.model.conv_impl='cudnn' "
                     'is not allowed'):
    compare.run_study(study, str(tmp_path))
  study = _study_config('smoke')
  study.overrides.vaegan = {'optim': {'dis': {'b1': 1.5}}}
  with pytest.raises(UserError, match=r'vaegan runs would train with config.optim.dis.b1=1.5'):
    compare.run_study(study, str(tmp_path))
  study = _study_config('smoke')
  study.eval_every_steps = study.num_steps
  with pytest.raises(UserError, match='one per quarter'):
    compare.run_study(study, str(tmp_path))


def test_committed_full_study_report():
  """The committed mnist5k report: the default study, complete, within 90
  min, in the feature space the metric ladder checked, with the convergence
  rule's verdict per family as the committed curves give it; the summary
  ranks only the families that converged."""
  import convergence  # pylint: disable=g-import-not-at-top
  import report  # pylint: disable=g-import-not-at-top
  out = os.path.join(ROOT, 'experiments', 'results', 'mnist5k')
  with open(os.path.join(out, 'results.json')) as f:
    results = json.load(f)
  default = _study_config('')
  for key in ('num_steps', 'batch_size', 'seeds', 'eval_every_steps', 'curve_num_samples',
              'eval_num_samples', 'conv_impl', 'lr_schedule'):
    assert results['study'][key] == default[key], key
  assert sorted(results['families']) == sorted(default.families)
  for family in results['families'].values():
    assert len(family['runs']) == default.seeds
  assert sum(s['seconds'] for s in results['sessions']) <= 90 * 60
  for key in ('fid', 'kid', 'precision', 'recall'):
    assert report.ladder_status(results, key) == 'passed', key
  text = _check_report(out, list(results['families']))
  fid = results['families']['vae']['mean']['fid']
  assert f'{fid:.2f}' in text
  converged = []
  for name, family in results['families'].items():
    curves = [r['curves'] for r in family['runs'].values()]
    assert len(curves[0]['eval_step']) == default.num_steps // default.eval_every_steps
    verdict = convergence.convergence(curves, default.num_steps)
    assert verdict == family['convergence'], name
    assert verdict['converged'] is not None, name
    if verdict['converged']:
      converged.append(name)
  assert report.converged_families(results) == converged
  summary = '\n'.join(report.summary(results))
  provisional = len(converged) < 2
  assert ('**Provisional**' in summary) == provisional
  for name in results['families']:
    assert (f'**{name}** wins' in summary) == (provisional or name in converged), name


def test_committed_study_carries_the_applications():
  """The committed report answers which family restores noisy and holed
  digits best, and by how much over the median filter and biharmonic
  inpainting: its tables have every family and baseline as rows, n/a where a
  family cannot do a task, and the figure is there."""
  out = os.path.join(ROOT, 'experiments', 'results', 'mnist5k')
  with open(os.path.join(out, 'results.json')) as f:
    results = json.load(f)
  assert results['study']['applications']
  assert sorted(results['applications']['baselines']) == [
      'biharmonic', 'damaged', 'gaussian', 'median', 'nl_means']
  with open(os.path.join(out, 'report.md')) as f:
    text = f.read()
  section = text[text.index('## Applications'):text.index('## Training curves')]
  assert os.path.exists(os.path.join(out, 'applications.png'))
  assert '![applications](applications.png)' in section
  for family in results['families']:
    assert f'\n| {family} |' in section
    mean = results['families'][family]['mean']
    assert f"{mean['app/ppl/own']:.1f}" in section, family
    hole = mean['app/inpaint/center_0.25/psnr_hole']
    assert f'{hole:.2f}' in section, family
  assert '| gan | n/a |' in section  # No encoder: no denoising.
  for row in ('median filter 3x3', 'non-local means', 'biharmonic inpainting',
              'damaged input (unrestored)'):
    assert f'\n| {row} |' in section, row
  assert 'below the median filter' in section or 'above the median filter' in section
  assert 'above the biharmonic inpainting' in section or 'below the biharmonic' in section


def test_inception_features_in_study_and_report(tmp_path, monkeypatch):
  import compare  # pylint: disable=g-import-not-at-top
  import report  # pylint: disable=g-import-not-at-top
  study = _study_config('smoke')
  assert study.features == 'own'
  study.features = 'inception'
  monkeypatch.delenv('VAEGAN_JAX_INCEPTION', raising=False)
  monkeypatch.setenv('VAEGAN_JAX_CACHE', str(tmp_path / 'cache'))  # Offline: a refused
  monkeypatch.setenv('VAEGAN_JAX_WEIGHTS_MIRROR', 'http://127.0.0.1:9')  # loopback port.
  with pytest.raises(UserError, match='--inception_weights=PATH or set .VAEGAN_JAX_INCEPTION'):
    compare.run_study(study, str(tmp_path))
  study.features = 'clip'
  with pytest.raises(UserError, match="must be 'own', 'inception' or 'dinov2'"):
    compare.run_study(study, str(tmp_path))
  # An evaluation in the other feature space is not 'finished'.
  (tmp_path / compare.EVAL_FILE).write_text(json.dumps({'step': 3, 'num_samples': 10}))
  monkeypatch.setattr(compare, 'trained', lambda workdir, num_steps: True)
  assert compare.finished(str(tmp_path), 3, 10, 'own')
  assert not compare.finished(str(tmp_path), 3, 10, 'inception')

  def fam(fids):
    return {'params': {'total': 1}, 'loss_keys': [], 'runs': {str(i): {
        'fid': 1.0, 'fid_inception': v, 'is_inception': 2.0, 'num_samples': 50,
        'num_inception_reference': 60, 'inception_reference': 'train',
        'inception_source_sha256': '6726825d' + '0' * 56} for i, v in enumerate(fids)}}

  results = {'families': {'a': fam([10.0, 11.0]), 'b': fam([30.0, 31.0])}}
  lines = report.inception_section(results)
  text = '\n'.join(lines)
  assert 'feature space of the FID Inception' in text and '60 train images' in text
  assert "Every other table is in the project's own feature space" in text
  assert '| FID (Inception) ↓ | **10.50 ± 0.71** | 30.50 ± 0.71 |' in lines
  results = {'families': {'a': {'params': {'total': 1}, 'runs': {'0': {'fid': 1.0}}}}}
  assert report.inception_section(results) == []


def test_dinov2_study_names_backbone_resize_and_weights(tmp_path, data_dir, monkeypatch):
  """The :smoke study with features='dinov2' and resize='clean' (one family,
  one seed; a small DINOv2 with random weights through $VAEGAN_JAX_DINOV2):
  the evaluation takes both, the report's DINOv2 section names backbone,
  weights and resize, and a changed resize is evaluated again."""
  import backbone_weights  # pylint: disable=g-import-not-at-top
  import compare  # pylint: disable=g-import-not-at-top
  from vaegan_jax.metrics import weights  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('VAEGAN_JAX_CACHE', str(tmp_path / 'cache'))
  dino = backbone_weights.small_dinov2_npz(tmp_path)
  monkeypatch.setenv('VAEGAN_JAX_DINOV2', dino)
  study = _study_config('smoke')
  study.data_dir = data_dir
  study.families = ('vae',)
  study.overrides = {'vae': {}}
  study.seeds = 1
  study.vmap_seeds = False
  study.applications = False
  study.eval_num_samples = 16
  study.iwae_k = 0
  study.features, study.resize = 'dinov2', 'clean'
  study.inception_num_reference = 24
  study.resize = 'bilinear'
  with pytest.raises(UserError, match='config.resize'):
    compare.run_study(study, str(tmp_path / 'study'))
  study.resize = 'clean'
  out = str(tmp_path / 'study')
  results = compare.run_study(study, out)
  run = results['families']['vae']['runs']['0']
  assert math.isfinite(run['fd_dinov2']) and 'kd_dinov2' in run and 'coverage_dinov2' in run
  sha = weights.file_sha256(dino)
  assert run['protocol']['dinov2'] == {
      'backbone': 'dinov2', 'weights_sha256': sha, 'resize': 'clean', 'num_samples': 16,
      'reference': 'mnist5k train', 'num_reference': 24}
  text = open(os.path.join(out, 'report.md')).read()
  assert '## DINOv2 metrics' in text and '| FD (DINOv2) ↓ |' in text
  assert (f'backbone `dinov2`, weights sha256 {sha[:8]}, `clean` resize, 16 samples '
          'against 24 mnist5k train images') in text
  command = next(l for l in text.splitlines() if l.startswith('Generated by'))
  assert ' --config.features=dinov2 ' in command and ' --config.resize=clean ' in command
  workdir = compare.run_dir(out, 'vae', 0)
  assert compare.finished(workdir, study.num_steps, 16, 'dinov2', 'clean')
  assert not compare.finished(workdir, study.num_steps, 16, 'dinov2', '')  # dgm_eval's.
  assert not compare.finished(workdir, study.num_steps, 16, 'inception', 'clean')
