"""Exact resume after SIGKILL, the NaN guard, damaged checkpoints, safe loading."""

import functools
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, load_config, restore_latest
from vaegan_jax import checkpoint
from vaegan_jax import families
from vaegan_jax import sharding
from vaegan_jax import train

NUM_STEPS = 8


def tiny(family, data_dir):
  config = load_config(family, 'smoke')
  config.data.data_dir = data_dir
  config.train.batch_size = 16
  config.train.num_steps = NUM_STEPS
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = 3
  config.train.sample_every_steps = 100
  config.train.eval_every_steps = 100
  if 'eval' in config and 'generative_metrics' in config.eval:
    config.eval.generative_metrics = False
  return config


def overrides(config):
  flat = []
  for section in ('data', 'train'):
    for k, v in config[section].items():
      flat.append(f'--config.{section}.{k}={v}')
  if 'eval' in config and 'generative_metrics' in config.eval:
    flat.append('--config.eval.generative_metrics=False')
  return flat


def final_params(workdir, config):
  return jax.device_get(restore_latest(workdir, config))


@functools.lru_cache(maxsize=None)
def uninterrupted(family, data_dir, tmp_root):
  workdir = os.path.join(tmp_root, f'{family}_straight')
  config = tiny(family, data_dir)
  train.train_and_evaluate(config, workdir)
  return final_params(workdir, config)


@pytest.mark.parametrize('family', ['vae', 'gan'])
@pytest.mark.parametrize('point,step', [('step', 2), ('after_save', 3), ('during_save', 6)])
def test_sigkill_then_rerun_is_bit_identical(family, point, step, tmp_path, data_dir,
                                            tmp_path_factory):
  if not os.path.exists(os.path.join(ROOT, 'configs', f'{family}.py')):
    pytest.fail(f'configs/{family}.py is missing')
  config = tiny(family, data_dir)
  workdir = str(tmp_path / 'w')
  args = [f'--config=configs/{family}.py:smoke', f'--workdir={workdir}', *overrides(config)]
  killed = subprocess.run([sys.executable, 'tests/kill_run.py', point, str(step), '--', *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert killed.returncode == -9, killed.stderr[-2000:]
  ckpts = pathlib.Path(workdir, 'checkpoints')
  if point == 'step':
    assert not ckpts.exists() or not any(p.name.isdigit() for p in ckpts.iterdir())
  rerun = subprocess.run([sys.executable, '-m', 'vaegan_jax.main', *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  if point != 'step':
    assert 'Resuming from checkpoint at step 3' in rerun.stdout
  expected = uninterrupted(family, data_dir, str(tmp_path_factory.getbasetemp()))
  got = final_params(workdir, config)
  jax.tree.map(np.testing.assert_array_equal, expected, got)


def test_nan_stops_the_run_and_the_last_checkpoint_restores(tmp_path, data_dir, monkeypatch):
  family = families.get('vae')
  original = family.train_step

  def poisoned(config, state, batch):
    state, metrics = original(config, state, batch)
    bad = state.step == 5
    metrics['loss'] = jnp.where(bad, jnp.nan, metrics['loss'])
    params = jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p), state.params)
    return state.replace(params=params), metrics

  monkeypatch.setattr(family, 'train_step', poisoned)
  config = tiny('vae', data_dir)
  config.train.log_every_steps = 4  # The NaN at step 5 is seen at the save of 6.
  workdir = str(tmp_path)
  with pytest.raises(train.NonFiniteError, match=r'Non-finite loss=nan at step 5'):
    train.train_and_evaluate(config, workdir)
  mngr = checkpoint.manager(workdir, read_only=True)
  assert mngr.all_steps() == [3]
  mngr.close()
  params = final_params(workdir, config)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_cli_exit_code_and_message_on_nan(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'vaegan_jax.main', '--config=configs/vae.py:smoke',
       f'--workdir={tmp_path}', '--config.optim.learning_rate=1e30',
       '--config.train.num_steps=10', '--config.train.log_every_steps=1'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert re.search(r'^error: Non-finite \S+ at step \d+', result.stderr, re.M), result.stderr[-1500:]


def test_damaged_latest_checkpoint_falls_back_with_a_warning(tmp_path, data_dir, capsys):
  config = tiny('vae', data_dir)
  config.train.num_steps = 6
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir)
  # Truncate every data file of the latest checkpoint.
  for path in pathlib.Path(workdir, 'checkpoints', '6').rglob('*'):
    if path.is_file() and path.stat().st_size > 100 and 'metadata' not in path.name.lower():
      with open(path, 'r+b') as f:
        f.truncate(path.stat().st_size // 3)
  config.train.num_steps = 8
  capsys.readouterr()
  train.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert 'warning: checkpoint 6 is unreadable' in out and 'falling back to checkpoint 3' in out
  assert 'Resuming from checkpoint at step 3' in out


def test_no_readable_checkpoint_is_a_clear_error(tmp_path, data_dir):
  config = tiny('vae', data_dir)
  config.train.num_steps = 3
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir)
  for path in pathlib.Path(workdir, 'checkpoints', '3').rglob('*'):
    if path.is_file() and 'metadata' not in path.name:
      path.write_bytes(b'')
  config.train.num_steps = 6
  with pytest.raises(Exception, match='No readable checkpoint'):
    train.train_and_evaluate(config, workdir)


def test_checkpoint_of_another_family_is_refused(tmp_path, data_dir):
  config = tiny('vae', data_dir)
  config.train.num_steps = 3
  train.train_and_evaluate(config, str(tmp_path))
  other = load_config('vae', 'smoke')
  other.model.latent_dim = 5
  family = families.get('vae')
  abstract = jax.eval_shape(functools.partial(family.init_state, other), jax.random.PRNGKey(0))
  mngr = checkpoint.manager(str(tmp_path), read_only=True)
  with pytest.raises(Exception, match='written by another model.*shape differs'):
    checkpoint.restore(mngr, 3, abstract, sharding.state_sharding(sharding.make_mesh(), abstract))


def test_package_never_unpickles_or_evaluates():
  banned = re.compile(r'\b(import pickle|from pickle|pickle\.|import dill|dill\.|cloudpickle|'
                      r'(?<![\w.])eval\(|(?<![\w.])exec\()')
  # The one exception: the Inception weights converter reads pytorch-fid's
  # .pth through a restricted Unpickler that resolves only allow-listed names.
  converter = pathlib.Path(ROOT, 'vaegan_jax', 'metrics', 'convert_inception.py')
  offenders = []
  for path in pathlib.Path(ROOT, 'vaegan_jax').rglob('*.py'):
    if path == converter:
      continue
    for i, line in enumerate(path.read_text().splitlines(), 1):
      if banned.search(line):
        offenders.append(f'{path.relative_to(ROOT)}:{i}: {line.strip()}')
  assert not offenders, offenders
  text = converter.read_text()
  assert 'class _RestrictedUnpickler(pickle.Unpickler):' in text and 'def find_class' in text
  assert not re.search(r'pickle\.(loads?|Unpickler)\(', text)  # only the restricted one
