"""Evaluation: metric sanity on mnist5k, IWAE bounds, the evaluator, best
checkpoints and the `vaegan_jax.evaluate` CLI."""

import json
import math
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, load_config
from vaegan_jax import checkpoint
from vaegan_jax import evaluate
from vaegan_jax import families
from vaegan_jax import input_pipeline
from vaegan_jax import train
from vaegan_jax.errors import UsageError
from vaegan_jax.errors import UserError
from vaegan_jax.metrics import feature_net
from vaegan_jax.metrics import generative
from vaegan_jax.metrics import likelihood


# ------------------------------------------------------------------ sanity


@pytest.fixture(scope='module')
def mnist(data_dir):
  """Shipped feature net, both splits and their features."""
  net = feature_net.load(feature_net.shipped_path('mnist5k'))
  train_x, _ = input_pipeline.load_split('mnist5k', 'train', data_dir)
  test_x, test_y = input_pipeline.load_split('mnist5k', 'test', data_dir)
  train_f, train_p = net.compute(train_x)
  test_f, _ = net.compute(test_x)
  return dict(net=net, train_x=train_x, test_x=test_x, test_y=test_y,
              train_f=train_f, train_p=train_p, test_f=test_f)


def test_fid_sanity_on_mnist5k(mnist):
  """Real vs real is small; noise and one repeated digit are far off."""
  net, test_f = mnist['net'], mnist['test_f']
  real = generative.feature_metrics(test_f, mnist['train_f'], mnist['train_p'], 10)
  noise_x = np.random.default_rng(0).integers(0, 256, (1000, 28, 28, 1), dtype=np.uint8)
  noise = generative.feature_metrics(test_f, *net.compute(noise_x), 10)
  one_x = np.repeat(mnist['test_x'][:1], 1000, axis=0)
  one = generative.feature_metrics(test_f, *net.compute(one_x), 10)

  assert real['fid'] < 1.0
  assert noise['fid'] > 100 * real['fid'] and one['fid'] > 50 * real['fid']
  # KID(train vs test) is consistent with zero.
  assert abs(real['kid']) < 2 * real['kid_std']
  assert noise['kid'] > 100 * real['kid_std'] and one['kid'] > 10 * real['kid_std']
  # Real data: every class covered, high precision and recall.
  assert real['modes_covered'] == 10 and real['class_kl'] < 0.01
  assert real['precision'] > 0.7 and real['recall'] > 0.7 and real['coverage'] > 0.9
  assert real['classifier_score'] > 8.0
  # One repeated digit: one mode, no recall, no coverage, classifier score 1.
  assert one['modes_covered'] == 1 and one['recall'] < 0.05 and one['coverage'] < 0.05
  assert one['classifier_score'] < 1.1
  assert noise['precision'] < 0.05 and noise['recall'] < 0.05


# ------------------------------------------------------------- tiny VAE


def tiny_vae_config(data_dir):
  config = load_config('vae', 'smoke')
  config.data.data_dir = data_dir
  config.vae.kl_warmup_steps = 0
  config.eval.num_samples = 200
  config.eval.iwae_k = 8
  return config


@pytest.fixture(scope='module')
def trained_vae(data_dir, mnist):
  """A smoke-size VAE after 100 steps, and its untrained initial state."""
  config = tiny_vae_config(data_dir)
  family = families.get('vae')
  init = family.init_state(config, jax.random.PRNGKey(config.seed))
  step = jax.jit(lambda s, b: family.train_step(config, s, b))
  state = init
  for i in range(100):
    idx = input_pipeline.global_batch_indices(4500, config.train.batch_size, 0, i)
    state, _ = step(state, {'image': jnp.asarray(input_pipeline.to_float(mnist['train_x'][idx]))})
  return config, family, init, state


def test_iwae_bound_is_above_the_elbo_and_grows_with_k(trained_vae, mnist):
  config, _, _, state = trained_vae
  images = mnist['test_x'][:64]
  res = {k: likelihood.evaluate(config, state, images, k=k, batch_size=32)
         for k in (1, 10, 100)}
  # k = 1: the IWAE bound is the ELBO itself.
  assert res[1]['nll_nats'] == pytest.approx(-res[1]['elbo'], rel=1e-6)
  for k in (10, 100):  # L_k >= ELBO (same draws).
    assert -res[k]['nll_nats'] > res[k]['elbo'] + 0.5
  # L_1 < L_10 < L_100, by clear margins.
  assert res[1]['nll_nats'] > res[10]['nll_nats'] + 0.5 > res[100]['nll_nats'] + 1.0
  # Three ELBO estimates agree, and bits/dim are nats over 784 ln 2.
  assert max(r['elbo'] for r in res.values()) - min(r['elbo'] for r in res.values()) < 3.0
  assert res[100]['bits_per_dim'] == pytest.approx(
      res[100]['nll_nats'] / (784 * math.log(2)), rel=1e-6)
  assert 0 < res[100]['nll_nats'] < 400


def test_bounds_per_image_with_shared_draws(trained_vae, mnist):
  config, _, _, state = trained_vae
  x = jnp.asarray(input_pipeline.to_float(mnist['test_x'][:20]))
  elbo, iwae = likelihood.bounds(config, state.params, x, jax.random.PRNGKey(3), 50)
  assert elbo.shape == iwae.shape == (20,)
  assert bool(jnp.all(iwae >= elbo - 1e-4))  # Jensen, per image.


def _real_digit_family(train_x):
  """A stand-in family whose 'model' samples real training digits."""
  images = jnp.asarray(input_pipeline.to_float(train_x))
  sample = lambda config, state, key, n: images[jax.random.choice(key, len(images), (n,))]
  return types.SimpleNamespace(sample=sample)


def test_evaluator_tells_real_digits_from_an_untrained_vae(trained_vae, mnist):
  config, family, init, state = trained_vae
  perfect = generative.Evaluator(config, _real_digit_family(mnist['train_x']),
                                 mnist['test_x'], net=mnist['net'], batch_size=96)
  real = perfect(None, 300)  # 4 batches, the last one cut.
  assert set(real) == set(generative.METRIC_KEYS) | {'class_kl'}  # No encoder, no p(x).
  evaluator = generative.Evaluator(config, family, mnist['test_x'], net=mnist['net'])
  before, after = evaluator(init, 200), evaluator(state, 200)
  for result in (before, after):
    assert set(generative.METRIC_KEYS) <= set(result)
    assert {'recon_mse', 'psnr', 'elbo', 'nll_nats', 'bits_per_dim'} <= set(result)
    assert all(isinstance(v, float) and math.isfinite(v) for v in result.values())
  assert real['fid'] < 2.0 and before['fid'] > 30 * real['fid']
  assert real['modes_covered'] == 10 and before['modes_covered'] <= 2
  assert real['precision'] > 0.7 and real['recall'] > 0.7 and before['recall'] < 0.05
  # 100 steps of the smoke VAE: far better reconstructions and likelihood.
  assert after['recon_mse'] < 0.5 * before['recon_mse'] and after['psnr'] > before['psnr'] + 3
  assert after['nll_nats'] < before['nll_nats'] - 100
  assert after['elbo'] <= -after['nll_nats']
  # Fixed keys: the same state gives the same numbers.
  assert evaluator(state, 200)['fid'] == after['fid']


def test_training_never_trains_a_feature_net(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(feature_net, 'DEFAULT_CACHE_DIR', str(tmp_path))
  monkeypatch.setattr(feature_net, 'train', lambda *a, **k: pytest.fail('trained'))
  config = load_config('gan', 'smoke')
  family = families.get('gan')  # No metric needs no feature network: no evaluator.
  config.data.name = 'cifar10'  # Labelled, but no shipped or cached net.
  assert generative.training_evaluator(config, family, None, None) is None
  assert 'vaegan_jax.metrics.feature_net --dataset=cifar10' in capsys.readouterr().out
  config.data.name = 'celeb_a'  # No labels.
  assert generative.training_evaluator(config, family, None, None) is None
  assert 'no class labels' in capsys.readouterr().out
  config = load_config('vae', 'smoke')  # Reconstruction and likelihood need none.
  family = families.get('vae')
  config.data.name = 'cifar10'
  evaluator = generative.training_evaluator(
      config, family, np.zeros((4, 32, 32, 3), np.uint8), None)
  assert not evaluator.sample_metrics and evaluator.net is None
  assert generative.available_metrics(family, evaluator) == (
      'recon_mse', 'psnr', 'nll_nats', 'bits_per_dim')
  assert 'reconstruction and likelihood metrics are reported' in capsys.readouterr().out
  config.data.name = 'mnist5k'
  config.eval.generative_metrics = False
  assert generative.training_evaluator(config, family, None, None) is None


# -------------------------------------------------------- best checkpoints


def test_save_if_best_keeps_only_the_best(tmp_path):
  state = {'w': jnp.arange(3.0)}
  mngr = checkpoint.best_manager(str(tmp_path), 'fid', 'min')
  results = [checkpoint.save_if_best(mngr, step, {'w': state['w'] + step},
                                     {'eval/fid': fid, 'eval/kid': 0.0}, 'fid', 'min')
             for step, fid in ((10, 5.0), (20, 3.0), (30, 4.0), (40, float('nan')))]
  mngr.wait_until_finished()
  assert results == [True, True, False, False]
  assert mngr.all_steps() == [20] and mngr.best_step() == 20
  assert mngr.metrics(20)['fid'] == 3.0
  with pytest.raises(UserError, match="best_metric='fdi' is not an eval metric"):
    checkpoint.save_if_best(mngr, 50, state, {'eval/fid': 1.0}, 'fdi', 'min')
  mngr.close()

  mngr = checkpoint.best_manager(str(tmp_path / 'max'), 'precision', 'max')
  for step, p in ((1, 0.5), (2, 0.4), (3, 0.9)):
    checkpoint.save_if_best(mngr, step, state, {'precision': p}, 'precision', 'max')
  mngr.wait_until_finished()
  assert mngr.all_steps() == [3]
  mngr.close()
  with pytest.raises(UserError, match="best_mode='low'"):
    checkpoint.best_manager(str(tmp_path), 'fid', 'low')


# ------------------------------------------------------- training and CLI


@pytest.fixture(scope='module')
def vae_workdir(tmp_path_factory, data_dir):
  config = tiny_vae_config(data_dir)
  config.train.num_steps = 10
  config.train.log_every_steps = 5
  config.train.eval_every_steps = 5
  config.train.checkpoint_every_steps = 5
  config.train.sample_every_steps = 10
  config.eval.num_samples = 64
  config.eval.train_iwae_k = 2
  workdir = str(tmp_path_factory.mktemp('eval_run'))
  train.train_and_evaluate(config, workdir)
  return workdir


def test_training_logs_eval_metrics_and_keeps_the_best_checkpoint(vae_workdir):
  with open(os.path.join(vae_workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  evals = [r for r in rows if 'eval/fid' in r]
  assert [r['step'] for r in evals] == [5, 10]
  for key in ('fid', 'kid', 'precision', 'recall', 'density', 'coverage',
              'classifier_score', 'modes_covered', 'recon_mse', 'psnr', 'nll_nats'):
    assert f'eval/{key}' in evals[-1]
  mngr = checkpoint.best_manager(vae_workdir, read_only=True)
  best = min(evals, key=lambda r: r['eval/fid'])
  assert mngr.all_steps() == [best['step']]
  assert mngr.metrics(best['step'])['fid'] == pytest.approx(best['eval/fid'])
  mngr.close()


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'vaegan_jax.evaluate', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, check=False)


def test_evaluate_writes_the_flat_json(vae_workdir, tmp_path):
  """What the CLI runs, in-process (test_cli_error_is_one_line covers its flags)."""
  out = str(tmp_path / 'eval.json')
  result = evaluate.run(vae_workdir, num_samples=64, step='5', out=out, iwae_k=4,
                        echo=lambda m: None)
  with open(out) as f:
    assert json.load(f) == result
  expected = {'fid', 'kid', 'kid_std', 'precision', 'recall', 'density', 'coverage',
              'classifier_score', 'modes_covered', 'recon_mse', 'psnr', 'elbo',
              'nll_nats', 'bits_per_dim', 'step', 'num_samples', 'dataset'}
  assert expected <= set(result)
  assert (result['step'], result['num_samples'], result['dataset']) == (5, 64, 'mnist5k')
  assert result['iwae_k'] == 4 and result['elbo'] <= -result['nll_nats']
  assert result['feature_net_sha256'] == feature_net.load(
      feature_net.shipped_path('mnist5k')).metadata['sha256']
  with pytest.raises(UserError, match='num_samples=5 is too small'):
    evaluate.run(vae_workdir, num_samples=5)


def test_missing_or_unknown_checkpoints_are_clear_errors(vae_workdir, tmp_path):
  with pytest.raises(UserError, match=r'No checkpoint at step 7 in .*checkpoints; '
                                      r'available steps: 5, 10\.$'):
    evaluate.load_state(vae_workdir, 7)
  with pytest.raises(UserError, match="neither a step number nor 'best'"):
    evaluate.load_state(vae_workdir, 'latest')
  empty = tmp_path / 'empty'
  empty.mkdir()
  (empty / 'config.json').write_text(open(os.path.join(vae_workdir, 'config.json')).read())
  with pytest.raises(UserError, match='No checkpoints in .*train first'):
    evaluate.load_state(str(empty))
  with pytest.raises(UsageError, match='No config.json'):
    evaluate.load_state(str(tmp_path))
  _, _, _, step = evaluate.load_state(vae_workdir, 'best')
  assert step in (5, 10)


def test_cli_error_is_one_line(vae_workdir):
  proc = _cli(f'--workdir={vae_workdir}', '--step=7', '--num_samples=64')
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      f'error: No checkpoint at step 7 in {os.path.join(vae_workdir, "checkpoints")}; '
      'available steps: 5, 10.')
