"""One code path for 1 device, 4 devices and 2 processes; bfloat16; one-line errors.

The device runs train each family's default config, shrunk in steps and sizes
only (tests/train_families.py), with everything on: evaluation with the
generative metrics, sample grids, the best checkpoint. Sampling and features
split over 4 devices or 2 processes equal one device's (tests/sharded_eval.py),
the evaluate and sample commands run on a two-process checkpoint and in two
processes, and no module reads a global array on the host except through
`sharding.to_host`.

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

import re

from conftest import ROOT, restore_latest
from vaegan_jax import run_config
from vaegan_jax import train
import train_families

FAMILIES = ('vae', 'gan', 'vaegan')
NAMES = (*FAMILIES, 'vae:conditional')  # Each family's default, and a conditional one.
TIMEOUT_S = 1500  # Generous: a guard against hangs on a loaded 2-core machine.


def env_with_devices(n):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={n}')
  env.pop('JAX_NUM_CPU_DEVICES', None)
  return env


VMAPPED = 'seeds:vae'  # The default VAE's seeds as one vmapped step (two processes).


def _script(root, data_dir, *flags, names=NAMES):
  return [sys.executable, os.path.join(ROOT, 'tests', 'train_families.py'), str(root),
          data_dir, *names, *flags]


def _two_processes(args, env_devices=2, cwd=ROOT):
  """Two processes of `args` (a command line) joined through jax.distributed."""
  address = f'localhost:{_free_port()}'
  procs = [subprocess.Popen(
      [*args, f'--coordinator_address={address}', '--num_processes=2', f'--process_id={i}'],
      cwd=cwd, env=env_with_devices(env_devices), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  return _reap(procs, TIMEOUT_S)


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
  """Each config trained in this process on one device."""
  assert jax.device_count() == 1
  root = tmp_path_factory.mktemp('one_device')
  grids = {}
  for name in NAMES:
    config = train_families.tiny_config(name, data_dir)
    # What 'auto' runs under several devices (layers.auto_impl; the runs
    # compared with this one store it, `_assert_same_training` checks): the
    # comparison is of device layouts, not of convolution implementations.
    config.model.conv_impl = 'gemm'
    state = train.train_and_evaluate(config, str(root / train_families.workdir_name(name)))
    grids[name] = train_families.grid(config, state)
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
  outs = _two_processes(_script(root, data_dir, names=(*NAMES, VMAPPED)))
  assert all('devices 4 processes 2' in out for out in outs)
  return root


def _flatten(config, prefix=''):
  out = {}
  for key, value in config.items():
    if hasattr(value, 'items'):
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


@pytest.mark.parametrize('name', NAMES)
def test_device_runs_use_the_default_config_shrunk(name, data_dir):
  """Only steps, sizes and the data dir differ from configs/<family>.py's
  default: evaluation, grids and the best checkpoint stay on."""
  default = _flatten(train_families.default_config(name))
  tiny = _flatten(train_families.tiny_config(name, data_dir))
  assert tiny.keys() == default.keys()
  changed = {k for k in tiny if tiny[k] != default[k]}
  assert changed <= train_families.CHANGED_KEYS, changed - train_families.CHANGED_KEYS
  assert tiny['eval.generative_metrics'] and tiny['eval.best_metric'] == 'fid'


def _max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _eval_rows(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  return [r for r in rows if any(k.startswith('eval/') for k in r)]


def _assert_same_training(single, other_root, name, data_dir):
  root, grids = single
  sub = train_families.workdir_name(name)
  config = train_families.tiny_config(name, data_dir)
  assert run_config.stored_value(str(other_root / sub), 'model.conv_impl') == 'gemm'
  config.model.conv_impl = 'gemm'
  ref = restore_latest(str(root / sub), config)
  got = restore_latest(str(other_root / sub), config)  # Restores onto 1 device.
  assert int(ref.step) == int(got.step) == train_families.NUM_STEPS
  assert jax.tree.structure(ref.params) == jax.tree.structure(got.params)
  assert _max_diff(ref.params, got.params) <= 1e-5
  # Optimiser moments and batch statistics are sums of per-device partial
  # results, in another order: equal up to float32 rounding of their magnitude.
  for a, b in zip(jax.tree.leaves((ref.opt_state, ref.batch_stats)),
                  jax.tree.leaves((got.opt_state, got.batch_stats))):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)
  # The checkpoint samples the same images here as the single-device state.
  np.testing.assert_allclose(train_families.grid(config, got), grids[name], atol=1e-4)
  # And the multi-device run's own grid (sampled on its devices) agrees too.
  np.testing.assert_allclose(np.load(other_root / sub / 'grid.npy'), grids[name],
                             atol=1e-4)
  # Only one process wrote the logs: one row per step.
  rows = [json.loads(l) for l in open(other_root / sub / 'metrics.jsonl')]
  train_steps = [r['step'] for r in rows if not any(k.startswith('eval/') for k in r)]
  assert train_steps == list(range(1, train_families.NUM_STEPS + 1))
  # The evaluations ran with the sample metrics (sampled and featurised on
  # every device) and agree with one device's.
  evals, ref_evals = _eval_rows(other_root / sub), _eval_rows(root / sub)
  steps = list(range(train_families.EVERY, train_families.NUM_STEPS + 1, train_families.EVERY))
  assert [r['step'] for r in evals] == [r['step'] for r in ref_evals] == steps
  for got_row, ref_row in zip(evals, ref_evals):
    assert {'eval/fid', 'eval/kid', 'eval/precision'} <= got_row.keys()
    assert got_row.keys() == ref_row.keys()
    for k in ref_row:
      if isinstance(ref_row[k], str):  # The evaluation protocol's notes.
        assert got_row[k] == ref_row[k], k
      elif k != 'eval/eval_seconds':
        np.testing.assert_allclose(got_row[k], ref_row[k], rtol=1e-3, atol=1e-4, err_msg=k)
  # Sample grids at every EVERY steps, and a best checkpoint by FID.
  assert sorted(os.listdir(other_root / sub / 'samples')) == [
      f'step_{s:07d}.png' for s in steps]
  best = other_root / sub / 'checkpoints_best'
  assert any(d.isdigit() for d in os.listdir(best))


@pytest.mark.parametrize('name', NAMES)
def test_four_devices_match_one_device(single, four_devices, name, data_dir):
  _assert_same_training(single, four_devices, name, data_dir)


@pytest.mark.parametrize('name', NAMES)
def test_two_processes_match_one_device(single, two_processes, name, data_dir):
  _assert_same_training(single, two_processes, name, data_dir)


def test_two_processes_train_vmapped_seeds_with_evaluation_on(single, two_processes, data_dir):
  """The default VAE's seeds 0 and 1 as one vmapped step in two processes:
  each seed's workdir has what a single run writes (evaluations with the
  sample metrics, grids, a best checkpoint, one log row per step), and seed
  0 trains as the single-device run of seed 0 does."""
  root, _ = single
  sub = train_families.workdir_name(VMAPPED)
  states = []
  for seed in train_families.SEEDS:
    config = train_families.tiny_config('vae', data_dir)
    config.seed = seed
    workdir = two_processes / sub / f'seed_{seed}'
    state = restore_latest(str(workdir), config)
    assert int(state.step) == train_families.NUM_STEPS
    states.append(state)
    rows = [json.loads(l) for l in open(workdir / 'metrics.jsonl')]
    train_steps = [r['step'] for r in rows if not any(k.startswith('eval/') for k in r)]
    assert train_steps == list(range(1, train_families.NUM_STEPS + 1))
    steps = list(range(train_families.EVERY, train_families.NUM_STEPS + 1,
                       train_families.EVERY))
    evals = _eval_rows(workdir)
    assert [r['step'] for r in evals] == steps
    assert all({'eval/fid', 'eval/kid', 'eval/precision'} <= r.keys() for r in evals)
    assert sorted(os.listdir(workdir / 'samples')) == [f'step_{s:07d}.png' for s in steps]
    assert any(d.isdigit() for d in os.listdir(workdir / 'checkpoints_best'))
  # Seed 0 vmapped in two processes = seed 0 alone on one device (to float
  # tolerance: a vmapped step sums in another order), its evaluations too.
  ref = restore_latest(str(root / 'vae'), train_families.tiny_config('vae', data_dir))
  assert _max_diff(ref.params, states[0].params) <= 1e-4
  ref_evals = _eval_rows(root / 'vae')
  for got_row, ref_row in zip(_eval_rows(two_processes / sub / 'seed_0'), ref_evals):
    assert got_row.keys() == ref_row.keys()
    for k in ('eval/elbo', 'eval/fid', 'eval/recon_mse'):
      if k in ref_row:
        np.testing.assert_allclose(got_row[k], ref_row[k], rtol=1e-3, atol=1e-3, err_msg=k)
  assert _max_diff(states[0].params, states[1].params) > 0.01  # Seed 1 is its own run.


# ---------------------------------------------------------------------------
# Sampling and features over devices and processes (vaegan_jax/sharding.py).
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def one_device_features(data_dir):
  import sharded_eval  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 1
  return sharded_eval.run(data_dir)


def _assert_same_features(want, path):
  with np.load(path) as got:
    assert sorted(got.files) == sorted(want)
    for k in want:
      # Features, probabilities, Inception outputs and metrics: equal to one
      # device's up to float32 rounding.
      np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)


def test_sharded_features_on_four_devices_match_one_device(one_device_features, data_dir,
                                                           tmp_path):
  out = tmp_path / 'four.npz'
  proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'tests', 'sharded_eval.py'),
                           str(out), data_dir], cwd=ROOT, env=env_with_devices(4),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert 'devices 4 processes 1' in _reap([proc], TIMEOUT_S)[0]
  _assert_same_features(one_device_features, out)


def test_sharded_features_in_two_processes_match_one_device(one_device_features, data_dir,
                                                            tmp_path):
  out = tmp_path / 'two.npz'
  outs = _two_processes([sys.executable, os.path.join(ROOT, 'tests', 'sharded_eval.py'),
                         str(out), data_dir])
  assert all('devices 4 processes 2' in o for o in outs)
  _assert_same_features(one_device_features, out)


def test_evaluate_and_sample_on_a_two_process_checkpoint(two_processes, tmp_path):
  """The commands read a checkpoint written by two processes, in one process
  and in two (evaluation split over both; the same numbers)."""
  workdir = str(two_processes / 'vae')
  evaluate = [sys.executable, '-m', 'vaegan_jax.evaluate', f'--workdir={workdir}',
              '--num_samples=32', '--iwae_k=2']
  one = subprocess.run([*evaluate, f'--out={tmp_path}/one.json'], cwd=ROOT,
                       capture_output=True, text=True, timeout=TIMEOUT_S,
                       env=env_with_devices(1))
  assert one.returncode == 0, one.stderr[-3000:]
  two = _two_processes([*evaluate, f'--out={tmp_path}/two.json'])
  want = json.load(open(tmp_path / 'one.json'))
  got = json.load(open(tmp_path / 'two.json'))
  assert all('"fid"' in o for o in two)  # Each process computed it.
  assert want['step'] == got['step'] == train_families.NUM_STEPS
  assert {'fid', 'kid', 'nll_nats', 'psnr'} <= want.keys()
  for k, v in want.items():
    if isinstance(v, float) and k != 'eval_seconds':
      np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-5, err_msg=k)
  sample = [sys.executable, '-m', 'vaegan_jax.sample', f'--workdir={workdir}',
            '--mode=reconstruct', '--num=8']
  one = subprocess.run([*sample, f'--out={tmp_path}/one.png'], cwd=ROOT,
                       capture_output=True, text=True, timeout=TIMEOUT_S,
                       env=env_with_devices(1))
  assert one.returncode == 0, one.stderr[-3000:]
  _two_processes([*sample, f'--out={tmp_path}/two.png'])
  assert open(tmp_path / 'one.png', 'rb').read() == open(tmp_path / 'two.png', 'rb').read()


# Host-side reads of device arrays, each of which fails on an array split over
# several processes' devices; only vaegan_jax/sharding.py may use them.
_HOST_READ = re.compile(r'jax\.device_get\(|jax\.device_put\(|\.addressable_data\(|'
                        r'process_allgather\(')
_ALLOWED = set()  # None: the training loop and vmap_seeds read through sharding.py too.


def test_every_host_read_of_a_global_array_goes_through_to_host():
  found = []
  for folder, _, files in os.walk(os.path.join(ROOT, 'vaegan_jax')):
    for f in files:
      path = os.path.relpath(os.path.join(folder, f), ROOT)
      if not f.endswith('.py') or path in _ALLOWED | {'vaegan_jax/sharding.py'}:
        continue
      for i, line in enumerate(open(os.path.join(ROOT, path)), 1):
        if _HOST_READ.search(line):
          found.append(f'{path}:{i}: {line.strip()}')
  assert not found, 'read global arrays with sharding.to_host / put:\n' + '\n'.join(found)


@pytest.mark.parametrize('family', FAMILIES)
def test_bfloat16_trains_with_finite_losses(family, tmp_path, data_dir):
  config = train_families.tiny_config(family, data_dir, compute_dtype='bfloat16')
  config.train.num_steps = 3
  state = train.train_and_evaluate(config, str(tmp_path))
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(state.params))
  rows = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  values = [v for r in rows for k, v in r.items()
            if k != 'step' and not isinstance(v, str)]  # Strings: the protocol's notes.
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
