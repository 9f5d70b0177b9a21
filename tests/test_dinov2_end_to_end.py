"""`--features=dinov2` end to end on a tiny run of a folder dataset: training
with config.eval.features='dinov2' (its FD keeps the best checkpoint), then
`python -m vaegan_jax.evaluate --features=dinov2` and `python -m
vaegan_jax.fid WORKDIR FOLDER --features=dinov2`: fd_dinov2, kd_dinov2 and
precision/recall/density/coverage in that space, the protocol fields and the
line to paste. The weights: a small DINOv2 ViT/14 in the released layout with
seeded random weights (tests/backbone_weights.py; the ViT-L/14 port itself is
checked against the reference code in test_dinov2.py)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import backbone_weights
import mock_data
from conftest import ROOT, load_config
from vaegan_jax import train
from vaegan_jax.data import sources
from vaegan_jax.metrics import weights as weights_lib

KEYS = ('fd_dinov2', 'kd_dinov2', 'kd_dinov2_std', 'precision_dinov2', 'recall_dinov2',
        'density_dinov2', 'coverage_dinov2')
TITLE = 'DINOv2 ViT/14 (width 64, depth 1)'


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A VAE trained 2 steps on a folder, evaluated in DINOv2 during training."""
  tmp = tmp_path_factory.mktemp('dinov2_run')
  dino = backbone_weights.small_dinov2_npz(tmp)
  env = {'VAEGAN_JAX_CACHE': str(tmp / 'cache'), 'VAEGAN_JAX_DINOV2': dino}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  sources.scan_folder.cache_clear()
  try:
    root = mock_data.digit_folder(tmp / 'digits', classes=3)
    config = load_config('vae', 'smoke')
    config.data.name = f'folder:{root}'
    config.train.batch_size = 8
    config.train.num_steps = 2
    config.train.checkpoint_every_steps = config.train.eval_every_steps = 1
    config.train.sample_every_steps = 2
    config.eval.num_samples = 8
    config.eval.train_iwae_k = 0
    config.eval.features = 'dinov2'  # best_metric stays 'fid': it becomes fd_dinov2.
    workdir = str(tmp / 'run')
    train.train_and_evaluate(config, workdir)
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  return {'workdir': workdir, 'folder': root, 'env': env, 'weights': dino, 'tmp': tmp}


def _cli(module, args, env):
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT,
                        env={**os.environ, **env}, capture_output=True, text=True,
                        timeout=300)


def test_training_logs_dinov2_and_keeps_the_best_by_its_fd(run):
  with open(os.path.join(run['workdir'], 'metrics.jsonl')) as f:
    rows = [json.loads(l) for l in f]
  evals = [r for r in rows if 'eval/fd_dinov2' in r]
  assert len(evals) == 2 and all(np.isfinite(r['eval/fd_dinov2']) for r in evals)
  assert evals[-1]['eval/protocol_dinov2/backbone'] == 'dinov2'
  assert evals[-1]['eval/protocol_dinov2/resize'] == 'dgm_eval'
  best = min(evals, key=lambda r: r['eval/fd_dinov2'])['step']
  kept = [d for d in os.listdir(os.path.join(run['workdir'], 'checkpoints_best'))
          if d.isdigit()]
  assert kept == [str(best)]  # Kept by FD-DINOv2.


def test_evaluate_features_dinov2_cli(run, tmp_path):
  out = str(tmp_path / 'eval.json')
  proc = _cli('vaegan_jax.evaluate', [
      f'--workdir={run["workdir"]}', '--features=dinov2', '--num_samples=16',
      '--num_reference=20', '--iwae_k=0', f'--out={out}', '--step=best'], run['env'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out) as f:
    result = json.load(f)
  for key in KEYS:
    assert np.isfinite(result[key]), key
  assert 0 <= result['precision_dinov2'] <= 1 and 0 <= result['coverage_dinov2'] <= 1
  assert 'fid' not in result  # A folder has no feature net of the project.
  assert 'psnr' in result  # What needs none is still there.
  proto = result['protocol']['dinov2']
  assert proto == {'backbone': 'dinov2',
                   'weights_sha256': weights_lib.file_sha256(run['weights']),
                   'resize': 'dgm_eval', 'num_samples': 16,
                   'reference': f'folder:{run["folder"]} train', 'num_reference': 20}
  line = (f'FD-16 ({TITLE}, dgm_eval resize, vs folder:{run["folder"]} train 20) = '
          f'{result["fd_dinov2"]:.4g}')
  assert result['lines'] == [line]
  assert proc.stdout.rstrip().splitlines()[-1] == line
  # Another resize is another protocol and another reference cache entry.
  proc = _cli('vaegan_jax.evaluate', [
      f'--workdir={run["workdir"]}', '--features=dinov2', '--num_samples=16',
      '--num_reference=20', '--iwae_k=0', '--resize=clean'], run['env'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.rstrip().splitlines()[-1].startswith(f'FD-16 ({TITLE}, clean resize,')
  refs = os.listdir(os.path.join(run['env']['VAEGAN_JAX_CACHE'], 'fid_refs'))
  assert sum('dgm_eval' in r for r in refs) >= 1 and sum('clean' in r for r in refs) == 1


def test_fid_command_features_dinov2(run, tmp_path):
  out = str(tmp_path / 'fid.json')
  proc = _cli('vaegan_jax.fid', [run['workdir'], run['folder'], '--features=dinov2',
                                 '--num=16', f'--out={out}'], run['env'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out) as f:
    result = json.load(f)
  for key in KEYS:
    assert np.isfinite(result[key]), key
  proto = result['protocol']['dinov2']
  assert (proto['num_samples'], proto['num_reference']) == (16, 120)
  assert proto['weights_sha256'] == weights_lib.file_sha256(run['weights'])
  assert proto['resize'] == 'dgm_eval' and proto['reference'] == 'digits'
  assert result['line'].startswith(f'FD-16 ({TITLE}, dgm_eval resize, run vs digits 120) = ')
  assert proc.stdout.rstrip().splitlines()[-1] == result['line']
