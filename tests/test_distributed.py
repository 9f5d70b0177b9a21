"""bfloat16 compute for every family; one-line errors for device and multi-host flags."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT
from vaegan_jax import train
import train_families

FAMILIES = ('vae', 'gan', 'vaegan')


def env_with_devices(n):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={n}')
  env.pop('JAX_NUM_CPU_DEVICES', None)
  return env


@pytest.mark.parametrize('family', FAMILIES)
def test_bfloat16_trains_with_finite_losses(family, tmp_path, data_dir):
  config = train_families.tiny_config(family, data_dir, compute_dtype='bfloat16')
  config.train.num_steps = 3
  state = train.train_and_evaluate(config, str(tmp_path))
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(state.params))
  import json  # pylint: disable=g-import-not-at-top
  rows = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  values = [v for r in rows for k, v in r.items() if k != 'step']
  assert values and np.isfinite(values).all()


def test_inconsistent_multihost_flags_are_one_error_line(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'vaegan_jax.main', '--config=configs/vae.py:smoke',
       f'--workdir={tmp_path}', '--num_processes=2'],
      cwd=ROOT, capture_output=True, text=True, timeout=120, env=env_with_devices(1))
  assert result.returncode == 1
  assert [l for l in result.stderr.splitlines() if l.startswith('error:')] == [
      'error: --coordinator_address, --num_processes and --process_id go together: '
      'give all three, or none for auto-detection.']


def test_batch_not_divisible_by_devices_is_one_error_line(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'vaegan_jax.main', '--config=configs/vae.py:smoke',
       f'--workdir={tmp_path}', '--config.train.batch_size=30'],
      cwd=ROOT, capture_output=True, text=True, timeout=120, env=env_with_devices(4))
  assert result.returncode == 1
  assert 'error: config.train.batch_size=30 is not divisible by the number of devices (4)' \
      in result.stderr
