"""experiments/throughput.py on tiny configs: runs, prints valid JSON lines
with every key. No timing assertions (the machine's load decides those)."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import keras_reference  # pylint: disable=g-import-not-at-top,wrong-import-position
import throughput  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax.errors import UserError  # pylint: disable=g-import-not-at-top,wrong-import-position

SCRIPT = os.path.join(ROOT, 'experiments', 'throughput.py')
KEYS = ('framework', 'images_per_s', 'step_ms_median', 'step_ms_p10', 'step_ms_p90',
        'compile_s', 'data_wait_frac')


def _run(args, data_dir):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run(
      [sys.executable, SCRIPT, f'--data_dir={data_dir}', '--steps=2', '--warmup=1',
       '--rounds=2', *args], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=300, check=False)


def _check_line(result):
  for key in KEYS:
    assert key in result, (key, result)
  assert result['steps'] == 2, result
  assert result['images_per_s'] > 0 and math.isfinite(result['images_per_s'])
  assert 0 < result['step_ms_p10'] <= result['step_ms_median'] <= result['step_ms_p90']
  assert result['compile_s'] >= 0
  assert 0 <= result['data_wait_frac'] < 1


def _config(name, arg=None):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, 'configs', 'bench', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_cli_prints_json_lines(data_dir):
  proc = _run(['--config=configs/bench/convvae28.py:tiny', '--batch=8',
               '--reference=none'], data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
  assert len(results) == 1
  _check_line(results[0])
  assert results[0]['framework'] == 'vaegan_jax'
  assert results[0]['batch'] == 8 and results[0]['config'] == 'convvae28'
  assert 'img/s' in proc.stderr


# The Keras path exists only where requirements-tf.txt is installed, so this
# test is defined only there (not skipped elsewhere: absent). Without
# TensorFlow, tests/test_no_tensorflow.py checks the one-line message instead.
if importlib.util.find_spec('tensorflow') is not None:

  def test_gan_beside_keras(data_dir):
    config = _config('dcgan28', 'tiny')
    config.data.data_dir = data_dir
    results = throughput.measure(config, reference='keras', jax_impls=['xla'], steps=2,
                                 warmup=1, rounds=2, keras_xla=False, log=lambda _: None)
    assert [r['framework'] for r in results] == ['vaegan_jax[conv_impl=xla]', 'keras']
    for r in results:
      _check_line(r)
    assert 'vs keras' in throughput.summary(results)


def test_reference_all_without_tensorflow_times_the_others(data_dir, monkeypatch):
  def missing():
    raise UserError(keras_reference.TF_MISSING)
  monkeypatch.setattr(keras_reference, 'import_tf', missing)
  config = _config('convvae28', 'tiny')
  config.data.data_dir = data_dir
  messages = []
  results = throughput.measure(config, reference='all', jax_impls=['xla'], steps=1,
                               warmup=0, rounds=1, torch_compile=False, log=messages.append)
  assert 'keras' not in [r['framework'] for r in results]
  assert any('requirements-tf.txt' in m for m in messages)
  with pytest.raises(UserError, match='requirements-tf.txt'):
    throughput.measure(config, reference='keras', steps=1, warmup=0, rounds=1)


def test_bad_flag_is_one_line(data_dir):
  proc = _run(['--config=configs/bench/convvae28.py:tiny', '--batch=8',
               '--reference=none', '--steps=0'], data_dir)
  assert proc.returncode == 2  # Bad usage.
  assert proc.stderr.strip().splitlines()[-1].startswith('error: ')


@pytest.mark.parametrize('override', ['gan.loss="hinge"', 'gan.d_steps=2'])
def test_keras_reference_refuses_other_gans(override):
  config = _config('dcgan28')
  key, value = override.split('=')
  section, name = key.split('.')
  config[section][name] = json.loads(value)
  with pytest.raises(UserError, match='dcgan28'):
    keras_reference.check_gan(config)


def test_torch_reference_runs_where_torch_is_installed_else_says_so(data_dir):
  import importlib.util  # pylint: disable=g-import-not-at-top
  config = _config('convvae28', 'tiny')
  config.data.data_dir = data_dir
  lines = []
  results = throughput.measure(config, reference='torch', jax_impls=['xla'], steps=2,
                               warmup=0, rounds=1, torch_compile=False, log=lines.append)
  frameworks = [r['framework'] for r in results]
  if importlib.util.find_spec('torch') is not None:
    assert frameworks == ['vaegan_jax[conv_impl=xla]', 'torch']
  else:
    assert frameworks == ['vaegan_jax[conv_impl=xla]']
    assert 'torch is not importable: no PyTorch reference.' in lines
  for r in results:
    _check_line(r)


def test_conv_primitives_times_a_layer_and_the_ceiling():
  """experiments/conv_primitives.py runs (without TensorFlow: no TF column):
  the matmul ceiling, and one layer's rows."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  script = os.path.join(ROOT, 'experiments', 'conv_primitives.py')
  proc = subprocess.run([sys.executable, script, '--only=V5', '--batch=4', '--repeats=1'],
                        cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  assert lines[0].startswith('matmul ceiling (float32, 2048^3, jax.jit): ')
  assert any(l.lstrip().startswith('V5') for l in lines), lines
  assert lines[-1].startswith('ceiling again: ')
