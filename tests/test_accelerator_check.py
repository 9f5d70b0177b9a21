"""experiments/accelerator_check.sh --dry_run on CPU (so the GPU script cannot
rot), and the FLOPs / MFU fields that it and experiments/throughput.py report."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp

from conftest import ROOT

import throughput  # pylint: disable=g-import-not-at-top,wrong-import-position

SCRIPT = os.path.join(ROOT, 'experiments', 'accelerator_check.sh')


def test_step_flops_of_a_matmul_is_2mnk():
  m, k, n = 16, 32, 8
  compiled = jax.jit(jnp.matmul).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
  assert throughput.step_flops(compiled) == 2 * m * n * k


def test_flops_fields():
  f = throughput.flops_fields(2e12, 500.0, peak_tflops=8.0)  # 2 TFLOP in 0.5 s = 4 TFLOP/s.
  assert f == {'model_flops_per_step': 2e12, 'tflops_per_s': 4.0, 'mfu': 0.5}
  assert throughput.flops_fields(2e12, 500.0)['mfu'] is None
  assert throughput.flops_fields(None, 500.0)['tflops_per_s'] is None


def test_dry_run_on_cpu(tmp_path):
  env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  # The dry run takes about 25 s on a quiet 2-core machine (one test file, two
  # compiled smoke steps, 5 s of training); the timeout only catches a hang.
  # Its speed is not asserted: shared machines are too noisy for timed tests.
  proc = subprocess.run([SCRIPT, '--dry_run', '--peak_tflops=2', f'--out_dir={tmp_path}'],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
                        check=False)
  assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
  rows = [json.loads(line) for line in open(tmp_path / 'accelerator_check.jsonl')]
  kinds = [r['kind'] for r in rows]
  assert kinds[0] == 'tests' and rows[0]['rc'] == 0 and rows[0]['backend'] == 'cpu'
  assert 'passed' in rows[0]['summary']
  bench = [r for r in rows if r['kind'] == 'bench']
  assert sorted(r['dtype'] for r in bench) == ['bfloat16', 'float32']
  for r in bench:
    assert r['finite'] and r['dry_run'] and r['backend'] == 'cpu'
    assert r['images_per_s'] > 0 and r['step_ms'] > 0 and r['compile_s'] > 0
    assert r['model_flops_per_step'] > 0
    assert math.isclose(r['mfu'], r['tflops_per_s'] / 2, rel_tol=1e-3, abs_tol=1e-6)
  train = [r for r in rows if r['kind'] == 'train']
  assert len(train) >= 2 and train[0]['step'] == 1
  assert all(math.isfinite(r[k]) for r in train for k in ('d_loss', 'g_loss'))
  summary = rows[-1]
  assert summary['kind'] == 'train_summary' and summary['finite'] and summary['steps'] > 1
  assert summary['seconds'] >= 5.0
  # The script's own stdout carries the bench and summary lines too.
  assert proc.stdout.count('"kind": "bench"') == 2 and 'train_summary' in proc.stdout
