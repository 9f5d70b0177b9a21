"""Preemption on every host: SIGTERM (or Ctrl-C) to one process of a
two-process run stops both at one agreed step, saved by both, with the same
line; the rerun ends bit for bit where a run never stopped ends.

The processes are subprocesses joined through `jax.distributed` on localhost
(as in tests/test_distributed.py); tests/kill_run.py sends the signal to one
process at a chosen step. Each is SIGKILLed on timeout.
"""

import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, restore_latest
from vaegan_jax import checkpoint
from vaegan_jax import train

NUM_STEPS = 12
TIMEOUT_S = 600


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _flags(workdir, data_dir):
  return ['--config=configs/vae.py:smoke', f'--workdir={workdir}',
          f'--config.data.data_dir={data_dir}', '--config.train.batch_size=16',
          f'--config.train.num_steps={NUM_STEPS}', '--config.train.log_every_steps=3',
          '--config.train.checkpoint_every_steps=6', '--config.train.sample_every_steps=100',
          '--config.train.eval_every_steps=100', '--config.train.keep_checkpoints=10']


def _two_processes(workdir, data_dir, kill=None, extra=()):
  """Runs both processes to the end; kill: (point, step, process) for
  tests/kill_run.py, or None for a plain run; extra: more flags (e.g.
  --seeds). Returns [(rc, stdout, stderr)]."""
  address = f'localhost:{_free_port()}'
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
  env.pop('JAX_NUM_CPU_DEVICES', None)
  procs = []
  for i in range(2):
    dist = [f'--coordinator_address={address}', '--num_processes=2', f'--process_id={i}']
    head = ([os.path.join('tests', 'kill_run.py'), kill[0], str(kill[1]), str(kill[2]), '--']
            if kill else ['-m', 'vaegan_jax.main'])
    procs.append(subprocess.Popen([sys.executable, *head, *_flags(workdir, data_dir), *extra,
                                   *dist],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  results = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=TIMEOUT_S)
      results.append((p.returncode, out, err))
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
      p.communicate()
    pytest.fail(f'the two-process run did not finish in {TIMEOUT_S} s')
  return results


def _config(data_dir, seed=0):
  from conftest import load_config  # pylint: disable=g-import-not-at-top
  config = load_config('vae', 'smoke')
  config.data.data_dir = data_dir
  config.seed = seed
  return config


@pytest.fixture(scope='module')
def never_stopped(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp('never_stopped')
  for rc, out, err in _two_processes(workdir, data_dir):
    assert rc == 0, (out + err)[-3000:]
  return jax.device_get(restore_latest(str(workdir), _config(data_dir)))


@pytest.mark.parametrize('point,step,process,agreed,code,what', [
    # SIGTERM to one process at step 3: both stop at the next agreement
    # step (train.AGREE_EVERY_STEPS), both save it, both exit 143.
    ('sigterm', 3, 1, train.AGREE_EVERY_STEPS, 143, r'Terminated \(SIGTERM\)'),
    # Ctrl-C to the other one during the evaluation of the last step: both
    # abandon it (the processes agree between evaluation batches) and save
    # that step; the rerun does the evaluation it owes.
    ('sigint_eval', NUM_STEPS, 0, NUM_STEPS, 130, r'Interrupted \(Ctrl-C\)'),
], ids=['sigterm_one_process', 'ctrl_c_during_eval'])
def test_a_signal_to_one_process_stops_both_at_one_step(
    point, step, process, agreed, code, what, never_stopped, tmp_path, data_dir):
  assert step < agreed <= NUM_STEPS or point.endswith('_eval')
  workdir = tmp_path / 'w'
  results = _two_processes(workdir, data_dir, kill=(point, step, process))
  lines = []
  for rc, out, err in results:
    assert rc == code, (out + err)[-3000:]
    [line] = [l for l in err.splitlines() if l.startswith('error:')]
    lines.append(line)
  assert lines[0] == lines[1], lines
  assert re.fullmatch(rf'error: {what} at step {agreed}; saved it; the last good checkpoint '
                      rf'is step {agreed} in \S+; rerun the same command to resume from it\.',
                      lines[0]), lines[0]
  assert checkpoint.last_good_step(str(workdir)) == agreed
  for rc, out, err in _two_processes(workdir, data_dir):
    assert rc == 0, (out + err)[-3000:]
    assert f'Resuming from checkpoint at step {agreed}.' in out
    if agreed == NUM_STEPS:
      assert f'Done: step {agreed} had its evaluation still to do' in out
  got = jax.device_get(restore_latest(str(workdir), _config(data_dir)))
  assert int(got.step) == NUM_STEPS
  jax.tree.map(np.testing.assert_array_equal, never_stopped, got)


# Vmapped seeds (`--seeds`): every seed's workdir is WORKDIR/seed_<s>.
SEEDS = (3, 5)
SEED_FLAGS = (f'--seeds={",".join(map(str, SEEDS))}',)


def _seed_states(workdir, data_dir):
  return [jax.device_get(restore_latest(str(workdir / f'seed_{s}'), _config(data_dir, s)))
          for s in SEEDS]


def test_sigterm_to_one_process_of_vmapped_seeds_saves_every_seed_and_resumes_exactly(
    tmp_path, data_dir):
  """Two processes train seeds 3 and 5 as one vmapped step; SIGTERM to one
  of them at step 3: both stop at the agreed step, every seed's state is
  saved there, both exit 143 with the same line; the rerun ends with the
  bits of a two-process vmapped run never stopped."""
  never = tmp_path / 'never'
  for rc, out, err in _two_processes(never, data_dir, extra=SEED_FLAGS):
    assert rc == 0, (out + err)[-3000:]
  want = _seed_states(never, data_dir)
  assert all(int(w.step) == NUM_STEPS for w in want)
  agreed = train.AGREE_EVERY_STEPS
  workdir = tmp_path / 'w'
  results = _two_processes(workdir, data_dir, kill=('sigterm', 3, 1), extra=SEED_FLAGS)
  lines = []
  for rc, out, err in results:
    assert rc == 143, (out + err)[-3000:]
    [line] = [l for l in err.splitlines() if l.startswith('error:')]
    lines.append(line)
  assert lines[0] == lines[1], lines
  assert re.fullmatch(rf'error: Terminated \(SIGTERM\) at step {agreed}; saved it for every '
                      rf'seed; the last good checkpoint of every seed is step {agreed} in '
                      rf'\S+, \S+; rerun the same command to resume from it\.', lines[0]), lines[0]
  for s in SEEDS:
    assert checkpoint.last_good_step(str(workdir / f'seed_{s}')) == agreed
  for rc, out, err in _two_processes(workdir, data_dir, extra=SEED_FLAGS):
    assert rc == 0, (out + err)[-3000:]
    assert f'Resuming every seed from checkpoint at step {agreed}.' in out
  for w, g in zip(want, _seed_states(workdir, data_dir)):
    jax.tree.map(np.testing.assert_array_equal, w, g)
