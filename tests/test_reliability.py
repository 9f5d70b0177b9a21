"""Exact resume after SIGKILL, the NaN guard, damaged checkpoints, safe loading."""

import functools
import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, load_config, restore_latest
from vaegan_jax import checkpoint
from vaegan_jax import families
from vaegan_jax import input_pipeline
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


# ---------------------------------------------------------------------------
# Ctrl-C and SIGTERM: the step reached is saved, and a rerun ends bit for bit
# where a run never stopped ends (train.StopRequest).
# ---------------------------------------------------------------------------

TIMING = ('steps_per_s', 'images_per_s', 'data_wait_fraction', 'decode_images_per_s')


def interrupt_config(data_dir):
  config = tiny('vae', data_dir)
  config.train.log_every_steps = 2   # Step metrics not yet logged at a stop.
  config.train.eval_every_steps = 4  # Evaluations at steps 4 and 8 (the last).
  config.train.keep_checkpoints = 10
  return config


def rows_without_timing(workdir):
  if not os.path.exists(os.path.join(workdir, 'metrics.jsonl')):
    return []
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(l) for l in f]
  return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@functools.lru_cache(maxsize=None)
def never_stopped(data_dir, tmp_root):
  workdir = os.path.join(tmp_root, 'never_stopped')
  config = interrupt_config(data_dir)
  state = train.train_and_evaluate(config, workdir)
  return jax.device_get((state.params, state.opt_state)), rows_without_timing(workdir)


def signal_at(monkeypatch, sig, step, during_eval=False):
  """Sends `sig` to this process when the input pipeline hands out batch
  `step`, or after the first batch of the evaluation of step `step`."""
  if during_eval:
    original_evaluate, original_batches = train.evaluate, input_pipeline.eval_batches

    def batches(*args, **kwargs):
      for i, b in enumerate(original_batches(*args, **kwargs)):
        yield b
        if i == 0:
          os.kill(os.getpid(), sig)

    def evaluate(config, family, eval_fn, state, *args, **kwargs):
      at = int(jax.device_get(state.step)) == step
      monkeypatch.setattr(input_pipeline, 'eval_batches', batches if at else original_batches)
      return original_evaluate(config, family, eval_fn, state, *args, **kwargs)
    monkeypatch.setattr(train, 'evaluate', evaluate)
  else:
    original_next = input_pipeline.TrainIterator.__next__

    def next_and_signal(self):
      if self.step == step:
        os.kill(os.getpid(), sig)
      return original_next(self)
    monkeypatch.setattr(input_pipeline.TrainIterator, '__next__', next_and_signal)


@pytest.mark.parametrize('sig,step,during_eval', [
    (signal.SIGINT, 1, False),    # Early: the first step.
    (signal.SIGTERM, 5, False),   # Mid-run, between two logged steps.
    (signal.SIGINT, 4, True),     # During an evaluation: abandoned, done on rerun.
    (signal.SIGTERM, 8, True),    # During the last step's evaluation.
], ids=['sigint_early', 'sigterm_mid', 'sigint_eval', 'sigterm_last_eval'])
def test_interrupt_saves_the_step_reached_and_the_rerun_is_bit_identical(
    sig, step, during_eval, tmp_path, data_dir, tmp_path_factory, monkeypatch, capsys):
  expected, expected_rows = never_stopped(data_dir, str(tmp_path_factory.getbasetemp()))
  config = interrupt_config(data_dir)
  workdir = str(tmp_path)
  handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  signal_at(monkeypatch, sig, step, during_eval)
  error = train.Terminated if sig == signal.SIGTERM else train.Interrupted
  what = r'Terminated \(SIGTERM\)' if sig == signal.SIGTERM else r'Interrupted \(Ctrl-C\)'
  with pytest.raises(error, match=rf'^{what} at step {step}; saved it; the last good '
                                  rf'checkpoint is step {step} in .*rerun the same command'):
    train.train_and_evaluate(config, workdir)
  assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
  assert checkpoint.last_good_step(workdir) == step
  rows = rows_without_timing(workdir)
  assert not any(r['step'] == step and 'eval/elbo' in r for r in rows) or not during_eval
  monkeypatch.undo()
  capsys.readouterr()
  resumed = train.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert f'Resuming from checkpoint at step {step}.' in out
  if step == config.train.num_steps:
    assert f'Done: step {step} had its evaluation still to do' in out
  got = jax.device_get((resumed.params, resumed.opt_state))
  jax.tree.map(np.testing.assert_array_equal, expected, got)
  # The same rows as a run never stopped: the interrupted evaluation is done
  # on the rerun, and the logged means cover the same steps.
  assert rows_without_timing(workdir) == expected_rows


def test_resume_drops_the_rows_of_steps_never_saved(tmp_path, data_dir):
  config = interrupt_config(data_dir)
  config.train.num_steps = 6
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir)
  path = os.path.join(workdir, 'metrics.jsonl')
  with open(path, 'a') as f:  # Rows of steps 7-8 of a run killed before it saved them.
    f.write(json.dumps({'step': 7, 'loss': 1.0}) + '\n' + json.dumps({'step': 8, 'loss': 2.0}))
  config.train.num_steps = 8
  train.train_and_evaluate(config, workdir)
  steps = [r['step'] for r in rows_without_timing(workdir)]
  assert steps == sorted(steps) and steps.count(8) == 2  # Train and eval rows, once each.


def _run_killed(point, step, workdir, config, *extra):
  args = [f'--config=configs/vae.py:smoke', f'--workdir={workdir}', *overrides(config),
          '--config.train.eval_every_steps=4', '--config.train.keep_checkpoints=10']
  return subprocess.run([sys.executable, 'tests/kill_run.py', point, str(step), *extra, '--',
                         *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))


def test_cli_sigterm_exits_143_and_a_second_ctrl_c_stops_at_once(tmp_path, data_dir):
  config = tiny('vae', data_dir)
  proc = _run_killed('sigterm', 5, tmp_path / 'term', config)
  assert proc.returncode == 143, proc.stderr[-2000:]
  [line] = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert re.fullmatch(r'error: Terminated \(SIGTERM\) at step 5; saved it; the last good '
                      r'checkpoint is step 5 in \S+; rerun the same command to resume '
                      r'from it\.', line), line
  assert 'Traceback' not in proc.stderr
  assert checkpoint.last_good_step(str(tmp_path / 'term')) == 5
  # A second Ctrl-C while the first one's save runs: at once, saying what it skipped.
  proc = _run_killed('sigint_twice', 5, tmp_path / 'twice', config)
  assert proc.returncode == 130, proc.stderr[-2000:]
  [line] = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert re.fullmatch(r'error: Interrupted \(Ctrl-C twice\) at step 5: stopped at once, '
                      r'leaving the save of step 5 unfinished; the last good checkpoint is '
                      r'step 3 in \S+; rerun the same command to resume from it\.', line), line
