"""One code path for 1 device, 4 devices and 2 processes; bfloat16; one-line errors.

The multi-device runs are subprocesses (the device count is fixed when JAX
starts); each is SIGKILLed on timeout, since jax.distributed traps SIGTERM.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, restore_latest
from vaegan_jax import train
import train_families

FAMILIES = ('vae', 'gan', 'vaegan')
TIMEOUT_S = 600


def env_with_devices(n):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={n}')
  env.pop('JAX_NUM_CPU_DEVICES', None)
  return env


def _script(root, data_dir, *flags):
  return [sys.executable, os.path.join(ROOT, 'tests', 'train_families.py'), str(root),
          data_dir, *FAMILIES, *flags]


def _reap(procs, timeout):
  """Waits for all; SIGKILLs every one still running after `timeout` seconds."""
  outputs = []
  try:
    for proc in procs:
      outputs.append(proc.communicate(timeout=timeout))
  except subprocess.TimeoutExpired:
    for proc in procs:
      proc.kill()
      proc.communicate()
    pytest.fail(f'multi-device training did not finish in {timeout} s')
  for proc, (out, err) in zip(procs, outputs):
    assert proc.returncode == 0, (out + err)[-3000:]
  return [out for out, _ in outputs]


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def single(tmp_path_factory, data_dir):
  """Each family trained in this process on one device."""
  assert jax.device_count() == 1
  root = tmp_path_factory.mktemp('one_device')
  grids = {}
  for family in FAMILIES:
    config = train_families.tiny_config(family, data_dir)
    state = train.train_and_evaluate(config, str(root / family))
    grids[family] = train_families.grid(config, state)
  return root, grids


@pytest.fixture(scope='module')
def four_devices(tmp_path_factory, data_dir):
  root = tmp_path_factory.mktemp('four_devices')
  proc = subprocess.Popen(_script(root, data_dir), cwd=ROOT, env=env_with_devices(4),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  out, = _reap([proc], TIMEOUT_S)
  assert 'devices 4 processes 1' in out
  return root


@pytest.fixture(scope='module')
def two_processes(tmp_path_factory, data_dir):
  root = tmp_path_factory.mktemp('two_processes')
  address = f'localhost:{_free_port()}'
  procs = [subprocess.Popen(
      _script(root, data_dir, f'--coordinator_address={address}', '--num_processes=2',
              f'--process_id={i}'),
      cwd=ROOT, env=env_with_devices(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  outs = _reap(procs, TIMEOUT_S)
  assert all('devices 4 processes 2' in out for out in outs)
  return root


def _max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _assert_same_training(single, other_root, family, data_dir):
  root, grids = single
  config = train_families.tiny_config(family, data_dir)
  ref = restore_latest(str(root / family), config)
  got = restore_latest(str(other_root / family), config)  # Restores onto 1 device.
  assert int(ref.step) == int(got.step) == train_families.NUM_STEPS
  assert jax.tree.structure(ref.params) == jax.tree.structure(got.params)
  assert _max_diff(ref.params, got.params) <= 1e-5
  # Optimiser moments and batch statistics are sums of per-device partial
  # results, in another order: equal up to float32 rounding of their magnitude.
  for a, b in zip(jax.tree.leaves((ref.opt_state, ref.batch_stats)),
                  jax.tree.leaves((got.opt_state, got.batch_stats))):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)
  # The checkpoint samples the same images here as the single-device state.
  np.testing.assert_allclose(train_families.grid(config, got), grids[family], atol=1e-4)
  # And the multi-device run's own grid (sampled on its devices) agrees too.
  np.testing.assert_allclose(np.load(other_root / family / 'grid.npy'), grids[family],
                             atol=1e-4)
  # Only one process wrote the logs: one row per step.
  rows = [json.loads(l) for l in open(other_root / family / 'metrics.jsonl')]
  train_steps = [r['step'] for r in rows if not any(k.startswith('eval/') for k in r)]
  assert train_steps == list(range(1, train_families.NUM_STEPS + 1))


@pytest.mark.parametrize('family', FAMILIES)
def test_four_devices_match_one_device(single, four_devices, family, data_dir):
  _assert_same_training(single, four_devices, family, data_dir)


@pytest.mark.parametrize('family', FAMILIES)
def test_two_processes_match_one_device(single, two_processes, family, data_dir):
  _assert_same_training(single, two_processes, family, data_dir)


@pytest.mark.parametrize('family', FAMILIES)
def test_bfloat16_trains_with_finite_losses(family, tmp_path, data_dir):
  config = train_families.tiny_config(family, data_dir, compute_dtype='bfloat16')
  config.train.num_steps = 3
  state = train.train_and_evaluate(config, str(tmp_path))
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(state.params))
  rows = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  values = [v for r in rows for k, v in r.items() if k != 'step']
  assert values and np.isfinite(values).all()


def test_inconsistent_multihost_flags_are_one_error_line(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'vaegan_jax.main', '--config=configs/vae.py:smoke',
       f'--workdir={tmp_path}', '--num_processes=2'],
      cwd=ROOT, capture_output=True, text=True, timeout=120, env=env_with_devices(1))
  assert result.returncode == 2  # Bad usage.
  assert [l for l in result.stderr.splitlines() if l.startswith('error:')] == [
      'error: --coordinator_address, --num_processes and --process_id go together: '
      'give all three, or none for auto-detection.']


def test_batch_not_divisible_by_devices_is_one_error_line(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'vaegan_jax.main', '--config=configs/vae.py:smoke',
       f'--workdir={tmp_path}', '--config.train.batch_size=30'],
      cwd=ROOT, capture_output=True, text=True, timeout=120, env=env_with_devices(4))
  assert result.returncode == 2  # Bad usage.
  assert 'error: config.train.batch_size=30 is not divisible by the number of devices (4)' \
      in result.stderr
