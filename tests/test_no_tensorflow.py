"""TensorFlow stays optional: the package imports and trains without it, and
what needs it says in one line what to install.

Each check runs in a subprocess whose PYTHONPATH starts with
tests/no_tensorflow/, whose sitecustomize makes `import tensorflow` fail as in
a virtualenv without it (CI also runs the whole suite in one).
"""

import json
import os
import subprocess
import sys

from conftest import ROOT

NO_TF = os.path.join(ROOT, 'tests', 'no_tensorflow')


def run_without_tf(args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join([NO_TF, ROOT, os.environ.get('PYTHONPATH', '')]))
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout, check=False)


def test_tensorflow_is_really_blocked():
  proc = run_without_tf(['-c', 'import importlib.util, sys; '
                         'assert importlib.util.find_spec("tensorflow") is None; '
                         'import tensorflow'])
  assert proc.returncode == 1 and "No module named 'tensorflow'" in proc.stderr


def test_package_imports_and_trains_without_tensorflow(tmp_path, data_dir):
  workdir = tmp_path / 'run'
  proc = run_without_tf([
      '-m', 'vaegan_jax.main',
      '--config=configs/vae.py:smoke', f'--workdir={workdir}',
      '--config.train.num_steps=2', f'--config.data.data_dir={data_dir}',
      '--config.eval.num_samples=50'])
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
  rows = [json.loads(l) for l in open(workdir / 'metrics.jsonl')]
  assert [r['step'] for r in rows if 'loss' in r] == [2]
  assert any('eval/fid' in r for r in rows)  # The feature net trained too.
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir))
  assert os.listdir(workdir / 'samples') == ['step_0000002.png']


def test_keras_reference_says_what_to_install(data_dir):
  proc = run_without_tf([os.path.join('experiments', 'throughput.py'),
                         '--config=configs/bench/convvae28.py:tiny', '--batch=8',
                         '--reference=keras', '--steps=1', '--warmup=0', '--rounds=1',
                         f'--data_dir={data_dir}'])
  assert proc.returncode == 1, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last == ('error: The Keras reference needs TensorFlow: pip install -r '
                  'requirements-tf.txt (or pass --reference=none).')
