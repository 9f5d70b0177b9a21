"""Training on a folder with no flag but its name: native size, class-balanced
grids, the metrics that need no feature network, the best-checkpoint fallback
and the input pipeline's numbers in the log."""

import json
import os

import numpy as np
from PIL import Image

import mock_data
from conftest import load_config
from vaegan_jax import train
from vaegan_jax.data import sources
from vaegan_jax.metrics import generative


def test_vae_on_a_folder_reports_nll_psnr_and_keeps_a_fallback_best(tmp_path, monkeypatch,
                                                                    capsys):
  monkeypatch.setenv('VAEGAN_JAX_CACHE', str(tmp_path / 'cache'))
  sources.scan_folder.cache_clear()
  root = mock_data.digit_folder(tmp_path / 'digits')
  grids = []
  real_write_grid = train.write_grid

  def spy(grid_fn, state, key, test_images, path, test_labels=None, *args, **kwargs):
    grids.append(np.asarray(test_labels))
    return real_write_grid(grid_fn, state, key, test_images, path, test_labels, *args, **kwargs)

  monkeypatch.setattr(train, 'write_grid', spy)
  config = load_config('vae', 'smoke')
  config.data.name = f'folder:{root}'  # No other data flag: image_size stays 0.
  config.train.batch_size = 8
  config.train.num_steps = 2
  config.train.log_every_steps = 1
  config.train.sample_every_steps = config.train.eval_every_steps = 2
  config.eval.num_samples = 8
  workdir = tmp_path / 'run'
  state = train.train_and_evaluate(config, str(workdir))
  assert int(state.step) == 2
  stored = json.load(open(workdir / 'config.json'))
  assert stored['data']['image_size'] == 28  # The size chosen is saved with the run.
  rows = [json.loads(l) for l in open(workdir / 'metrics.jsonl')]
  evals = [r for r in rows if 'eval/elbo' in r]
  assert evals and all(k in evals[-1] for k in ('eval/psnr', 'eval/recon_mse', 'eval/nll_nats'))
  assert 'eval/fid' not in evals[-1]
  train_rows = [r for r in rows if 'loss' in r or 'elbo' in r]
  assert train_rows and all('data_wait_fraction' in r for r in train_rows)
  out = capsys.readouterr().out
  assert "note: best checkpoint by nll_nats (min) instead of config.eval.best_metric='fid'" in out
  assert os.listdir(workdir / 'checkpoints_best')
  # The grid's test images: every class, though path order starts with class 0.
  assert grids and set(grids[0]) == {0, 1, 2, 3}


class _Stub:
  def __init__(self, sample_metrics, iwae_k):
    self.sample_metrics, self.iwae_k = sample_metrics, iwae_k


def test_best_metric_falls_back_per_family(capsys):
  from vaegan_jax import families  # pylint: disable=g-import-not-at-top
  vae, gan, vaegan = (families.get(f) for f in ('vae', 'gan', 'vaegan'))
  config = load_config('vae')
  assert generative.best_metric(config, vae, _Stub(True, 10)) == ('fid', 'min')
  assert generative.best_metric(config, vae, _Stub(False, 10)) == ('nll_nats', 'min')
  assert generative.best_metric(config, vae, _Stub(False, 0)) == ('elbo', 'max')
  config = load_config('vaegan')
  assert generative.best_metric(config, vaegan, _Stub(False, 0)) == ('psnr', 'max')
  config = load_config('gan')
  assert generative.best_metric(config, gan, None)[0] == ''
  out = capsys.readouterr().out
  assert out.count('note: best checkpoint by') == 3 and out.count('no best checkpoint') == 1
  config.eval.generative_metrics = False  # Turned off on purpose: no note.
  assert generative.best_metric(config, gan, None)[0] == ''
  assert not capsys.readouterr().out


def test_reconstruct_reads_the_folder_with_the_runs_channel_count(tmp_path, monkeypatch):
  """A grey folder trained with data.channels=3: `sample --mode=reconstruct`
  feeds the networks 3-channel test images, as training did."""
  from vaegan_jax import sample  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('VAEGAN_JAX_CACHE', str(tmp_path / 'cache'))
  sources.scan_folder.cache_clear()
  sample._test_split.cache_clear()
  root = mock_data.digit_folder(tmp_path / 'digits', classes=2, per_class=12)
  config = load_config('vae', 'smoke')
  config.data.name = f'folder:{root}'
  config.data.channels = 3
  config.train.batch_size = 8
  config.train.num_steps = 1
  config.eval.generative_metrics = False
  config.eval.train_iwae_k = 0
  workdir = tmp_path / 'run'
  train.train_and_evaluate(config, str(workdir))
  result = sample.run(str(workdir), mode='reconstruct', num=4, out=str(tmp_path / 'r.png'),
                      echo=lambda *a: None)
  assert np.isfinite(result['psnr'])
  image = np.asarray(Image.open(tmp_path / 'r.png'))
  assert image.ndim == 3 and image.shape[-1] == 3


class _Extra:
  def __init__(self, bb):
    self.bb = bb


def _backbone(name):
  from vaegan_jax.metrics import backbones  # pylint: disable=g-import-not-at-top
  title, suffix, fd = {'inception': ('Inception', '_inception', 'FID'),
                       'dinov2': ('DINOv2 ViT-L/14', '_dinov2', 'FD')}[name]
  return backbones.Backbone(name, title, suffix, 'x', 'sha', None, fd_name=fd)


def test_best_metric_maps_to_the_backbone_of_eval_features(capsys):
  """A folder (no own feature net) with config.eval.features = inception or
  dinov2: best_metric 'fid' becomes that backbone's FD, said once; other
  sample metrics map likewise; a metric the run has keeps its name."""
  from vaegan_jax import families  # pylint: disable=g-import-not-at-top
  from vaegan_jax.metrics import backbones  # pylint: disable=g-import-not-at-top
  vae, gan = families.get('vae'), families.get('gan')
  config = load_config('gan')
  config.data.name = 'folder:/nowhere'
  for name, key in (('inception', 'fid_inception'), ('dinov2', 'fd_dinov2')):
    config.eval.features = name
    evaluator = backbones.TrainingEvaluator(None, _Extra(_backbone(name)))
    assert key in generative.available_metrics(gan, evaluator)
    assert generative.best_metric(config, gan, evaluator) == (key, 'min')
    out = capsys.readouterr().out
    assert out.count('note: best checkpoint by') == 1 and f'by {key} (min)' in out
    assert f"config.eval.features={name!r}" in out
  config.eval.best_metric, config.eval.best_mode = 'precision', 'max'
  evaluator = backbones.TrainingEvaluator(None, _Extra(_backbone('dinov2')))
  assert generative.best_metric(config, gan, evaluator) == ('precision_dinov2', 'max')
  # A VAE with its own (likelihood) evaluator and a backbone: still the backbone's FD
  # for 'fid', not the NLL fallback.
  config = load_config('vae')
  config.data.name = 'folder:/nowhere'
  config.eval.features = 'inception'
  evaluator = backbones.TrainingEvaluator(_Stub(False, 10), _Extra(_backbone('inception')))
  assert generative.best_metric(config, vae, evaluator) == ('fid_inception', 'min')
  # Without a backbone the fallback is as before.
  assert generative.best_metric(config, vae, _Stub(False, 10)) == ('nll_nats', 'min')
  # Where the own feature net exists, 'fid' stays the own FID.
  evaluator = backbones.TrainingEvaluator(_Stub(True, 10), _Extra(_backbone('inception')))
  capsys.readouterr()
  assert generative.best_metric(config, vae, evaluator) == ('fid', 'min')
  assert not capsys.readouterr().out
