"""The training loop end to end on tiny configs: outputs, resume, errors."""

import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, load_config
from mock_data import mock_tfds
from vaegan_jax import checkpoint
from vaegan_jax import families
from vaegan_jax import run_config
from vaegan_jax import sharding
from vaegan_jax import train
from vaegan_jax.errors import UserError


def tiny_vae(data_dir, num_steps=6):
  config = load_config('vae', 'smoke')
  config.data.data_dir = data_dir
  config.train.batch_size = 16
  config.train.num_steps = num_steps
  config.train.log_every_steps = 2
  config.train.checkpoint_every_steps = 3
  config.train.sample_every_steps = 3
  config.train.eval_every_steps = 3
  return config


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_vae_smoke_run_writes_the_workdir(tmp_path, data_dir):
  workdir = str(tmp_path / 'w')
  state = train.train_and_evaluate(tiny_vae(data_dir), workdir)
  assert int(state.step) == 6
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']
  assert sorted(os.listdir(os.path.join(workdir, 'samples'))) == [
      'step_0000003.png', 'step_0000006.png']
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir))
  rows = read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  train_rows = [r for r in rows if 'elbo' in r]
  eval_rows = [r for r in rows if 'eval/elbo' in r]
  assert [r['step'] for r in train_rows] == [2, 4, 6]
  assert [r['step'] for r in eval_rows] == [3, 6]
  for r in train_rows:  # elbo = recon - kl, per image, in nats.
    np.testing.assert_allclose(r['elbo'], r['recon'] - r['kl'], rtol=1e-4)
    assert r['elbo'] < 0
  assert run_config.load(workdir).model.family == 'vae'


def test_resume_continues_and_matches_an_uninterrupted_run(tmp_path, data_dir):
  straight = train.train_and_evaluate(tiny_vae(data_dir, 6), str(tmp_path / 'a'))
  workdir = str(tmp_path / 'b')
  train.train_and_evaluate(tiny_vae(data_dir, 3), workdir)
  resumed = train.train_and_evaluate(tiny_vae(data_dir, 6), workdir)
  steps = [r['step'] for r in read_jsonl(os.path.join(workdir, 'metrics.jsonl')) if 'elbo' in r]
  assert steps == [2, 3, 4, 6]  # The second run starts at step 3.
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.params),
               jax.device_get(resumed.params))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.opt_state),
               jax.device_get(resumed.opt_state))


def test_checkpoint_save_restore_equality(tmp_path):
  config = load_config('vae', 'smoke')
  family = families.get('vae')
  state = family.init_state(config, jax.random.PRNGKey(1))
  mngr = checkpoint.manager(str(tmp_path), keep=2)
  checkpoint.save(mngr, 7, state)
  mngr.wait_until_finished()
  mesh = sharding.make_mesh()
  abstract = jax.eval_shape(functools.partial(family.init_state, config), jax.random.PRNGKey(0))
  restored = checkpoint.restore(mngr, 7, abstract, sharding.state_sharding(mesh, abstract))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), jax.device_get(restored))
  mngr.close()


def test_three_channel_smoke_run_on_mock_data(tmp_path):
  config = load_config('vae', 'smoke')
  config.data.name = 'cifar10'
  config.train.num_steps = 4
  config.train.batch_size = 8
  with mock_tfds(num_examples=24):
    state = train.train_and_evaluate(config, str(tmp_path))
  assert state.params['decoder']['Conv_0']['kernel'].shape[-1] == 3
  rows = read_jsonl(str(tmp_path / 'metrics.jsonl'))
  assert np.isfinite([r['eval/elbo'] for r in rows if 'eval/elbo' in r]).all()


def test_changed_architecture_is_refused_with_a_diff(tmp_path, data_dir):
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_vae(data_dir, 2), workdir)
  config = tiny_vae(data_dir, 4)
  config.model.latent_dim = 4
  with pytest.raises(UserError, match=r'model.latent_dim: 8 -> 4'):
    train.train_and_evaluate(config, workdir)


def run_main(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'vaegan_jax.main', *args], cwd=ROOT,
                        capture_output=True, text=True, env=env, timeout=120)


def test_cli_rejects_a_misspelt_config_key(tmp_path):
  result = run_main('--config=configs/vae.py:smoke', f'--workdir={tmp_path}',
                    '--config.train.num_stepz=3')
  assert result.returncode != 0
  assert 'num_stepz' in result.stderr


def test_cli_rejects_an_unknown_dataset_with_one_line(tmp_path):
  result = run_main('--config=configs/vae.py:smoke', f'--workdir={tmp_path}',
                    '--config.data.name=mnist_typo')
  assert result.returncode == 2  # Bad usage: refused by vaegan_jax/validation.py.
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and 'mnist5k' in errors[0]
  assert 'Traceback' not in result.stderr


def test_run_says_and_stores_its_convolutions_and_falls_back_with_one_note(tmp_path):
  """conv_impl 'auto' is resolved once per run: one line says which and why,
  the run's config.json stores it. Without a compiler (simulated: an empty
  build cache, CXX naming nothing) the run trains on 'gemm' with that one
  line as its only note; a restart where oneDNN builds runs 'onednn' and
  says that the steps so far ran 'gemm'."""
  from vaegan_jax.kernels import conv_onednn  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'run'
  home = tmp_path / 'home'  # A fresh ~/.cache: no cached oneDNN build.
  home.mkdir()
  env = dict(os.environ, JAX_PLATFORMS='cpu', HOME=str(home), CXX='/nonexistent/c++')
  result = subprocess.run([sys.executable, '-m', 'vaegan_jax.main', '--config=configs/vae.py:smoke',
                           f'--workdir={workdir}', '--config.train.num_steps=10'],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  output = result.stdout + result.stderr
  notes = [l for l in output.splitlines() if 'onednn' in l.lower()]
  assert notes == ["Convolutions: conv_impl='gemm' (oneDNN unavailable: C++ compiler "
                   "CXX='/nonexistent/c++' not found)."], notes
  assert run_config.load(str(workdir)).model.conv_impl == 'gemm'
  if not conv_onednn.available():
    return  # This machine cannot build it either: the rest does not apply.
  result = run_main('--config=configs/vae.py:smoke', f'--workdir={workdir}',
                    '--config.train.num_steps=20')
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.splitlines()
  assert "Convolutions: conv_impl='onednn' (oneDNN's CPU convolutions)." in lines
  assert any(l.startswith("note: the steps so far ran with conv_impl='gemm'") for l in lines)
  assert 'Resuming from checkpoint at step 10.' in lines
  assert run_config.load(str(workdir)).model.conv_impl == 'onednn'
