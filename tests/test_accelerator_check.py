"""experiments/accelerator_check.sh --dry_run on CPU (so the GPU script cannot
rot), and the FLOPs / MFU fields that it and experiments/throughput.py report."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp

from conftest import ROOT

import accelerator_check  # pylint: disable=g-import-not-at-top,wrong-import-position
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
  """Every part of the check, tiny, on CPU: the lines a GPU run will print."""
  env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  # About 1.5 min of CPU (six processes; two compiled smoke steps, every
  # literature config traced, three short training runs, Inception at 299 px);
  # the timeout only catches a hang. Speed is not asserted.
  proc = subprocess.run([SCRIPT, '--dry_run', '--peak_tflops=2', f'--out_dir={tmp_path}'],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
                        check=False)
  assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
  rows = [json.loads(line) for line in open(tmp_path / 'accelerator_check.jsonl')]
  kinds = [r['kind'] for r in rows]
  assert 'part_failed' not in kinds and 'bench_skipped' not in kinds, rows
  assert kinds[0] == 'tests' and rows[0]['rc'] == 0 and rows[0]['backend'] == 'cpu'
  assert 'passed' in rows[0]['summary']
  by_kind = {k: [r for r in rows if r['kind'] == k] for k in kinds}

  bench = by_kind['bench']
  assert sorted(r['dtype'] for r in bench) == ['bfloat16', 'float32']
  for r in bench:
    assert r['finite'] and r['dry_run'] and r['backend'] == 'cpu'
    assert r['images_per_s'] > 0 and r['step_ms'] > 0 and r['compile_s'] > 0
    assert r['model_flops_per_step'] > 0
    assert math.isclose(r['mfu'], r['tflops_per_s'] / 2, rel_tol=1e-3, abs_tol=1e-6)
  traced = {(r['config'], r['dtype']): r for r in by_kind['bench_traced']}
  assert len(traced) == 2 * len(accelerator_check.BENCH)  # Every literature config, both dtypes.
  assert traced[('vae.py:celeb_a64', 'float32')]['batch'] == 100
  assert all(r['params'] > 10**6 for r in traced.values())

  train = by_kind['train']
  assert len(train) >= 2 and train[0]['step'] == 1
  assert all(math.isfinite(r[k]) for r in train for k in ('d_loss', 'g_loss'))
  summary, = by_kind['train_summary']
  assert summary['finite'] and summary['steps'] > 1 and summary['seconds'] >= 5.0

  real, = by_kind['real_train']
  assert [s for s, _ in real['loss_curve']] == [1, 2, 3, 4] and real['finite']
  assert 'eval/elbo' in real['eval']
  resume, = by_kind['resume']
  assert resume['bit_exact'] and resume['max_abs_diff'] == 0 and resume['resumed_at'] == 2
  assert resume['leaves'] > 10 and '--xla_gpu_deterministic_ops=true' in resume['xla_flags']

  features = {r['backbone']: r for r in by_kind['features'] + by_kind.get('features_skipped', [])}
  assert features['inception']['kind'] == 'features'
  assert features['inception']['feature_dim'] == 2048 and features['inception']['finite']
  assert features['inception']['weights'] == 'random' and features['inception']['images_per_s'] > 0
  dino = features['dinov2']  # Measured where vaegan_jax/metrics/dinov2.py exists.
  if importlib.util.find_spec('vaegan_jax.metrics.dinov2') is None:
    assert dino['kind'] == 'features_skipped' and 'absent' in dino['reason']
  else:
    assert dino['kind'] == 'features' and dino['finite'] and dino['images_per_s'] > 0

  pipeline = {r['source']: r for r in by_kind['pipeline']}
  assert sorted(pipeline) == ['array_record', 'memory']
  assert all(r['images_per_s'] > 0 and r['batch'] == 16 for r in pipeline.values())
  # The script's own stdout carries every line too.
  assert proc.stdout.count('"kind": "bench"') == 2
  for kind in ('train_summary', 'real_train', 'resume', 'features', 'pipeline'):
    assert f'"kind": "{kind}"' in proc.stdout
