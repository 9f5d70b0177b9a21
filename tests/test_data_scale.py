"""experiments/data_scale.py on tiny sizes: the records and their ids, one
epoch of the training stream reading every example exactly once (in one
process with bounded memory, and over two processes resumed mid-epoch), the
training run on a streamed file, and the growing-sizes lines.

Run as a script, this file is the worker of the two-process test:
  python tests/test_data_scale.py DATASET OUT.npz BATCH RESUME_AT PORT PROCESS_ID
"""

import json
import math
import os
import socket
import subprocess
import sys

import numpy as np

if __name__ != '__main__':
  from conftest import ROOT  # pylint: disable=g-import-not-at-top
else:  # The two-process test's worker (module docstring), outside pytest's path.
  ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.path[:0] = [ROOT, os.path.join(ROOT, 'experiments')]

import data_scale  # pylint: disable=g-import-not-at-top,wrong-import-position

SCRIPT = os.path.join(ROOT, 'experiments', 'data_scale.py')


def _run(*flags, env=None, timeout=300):
  proc = subprocess.run([sys.executable, SCRIPT, *flags], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, check=False, env=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return [json.loads(l) for l in proc.stdout.splitlines() if l.startswith('{')]


def test_written_records_read_back_as_images_with_their_ids(tmp_path):
  path = str(tmp_path / 'x.array_record')
  data_scale.write(path, 5)
  source = data_scale.RecordSource(path)
  images, labels = source.read([4, 0, 3])
  assert len(source) == 5 and images.shape == (3, 64, 64, 3) and images.dtype == np.uint8
  assert not np.array_equal(images[0], images[1])
  np.testing.assert_array_equal(labels, [-1, -1, -1])
  np.testing.assert_array_equal(data_scale.example_ids(images), [4, 0, 3])
  # The ids survive the pipeline's float32 decoding.
  np.testing.assert_array_equal(data_scale.example_ids(images.astype(np.float32) / 255), [4, 0, 3])
  big = np.zeros((1, 64, 64, 3), np.uint8)
  big.reshape(-1)[:4] = np.frombuffer((3_000_000).to_bytes(4, 'little'), np.uint8)
  assert data_scale.example_ids(big)[0] == 3_000_000


def test_count_epoch_finds_missing_and_duplicated_examples():
  n = 6
  positions = np.arange(8)  # Positions 6, 7 belong to epoch 1.
  ok = data_scale.count_epoch(positions, np.array([3, 1, 0, 5, 2, 4, 1, 2]), n)
  assert ok['exactly_once'] and ok['positions'] == 6 and ok['examples_read'] == 6
  bad = data_scale.count_epoch(positions, np.array([3, 1, 0, 5, 2, 3, 1, 2]), n)
  assert not bad['exactly_once'] and bad['missing'] == 1 and bad['duplicated'] == 1
  short = data_scale.count_epoch(positions[1:], np.array([1, 0, 5, 2, 4, 1, 2]), n)
  assert not short['exactly_once'] and short['missing'] == 1 and not short['positions_once']


def test_index_count_over_two_processes():
  counted = data_scale.index_count(203, 16, num_processes=2)  # Last batch runs into epoch 1.
  assert counted['exactly_once'] and counted['positions'] == counted['distinct'] == 203


def test_one_epoch_reads_every_example_once_in_bounded_memory(tmp_path):
  """Subprocess: a 200 MB file, one epoch of the training stream counted (in
  chunks of 50 steps, each read by an iterator started mid-epoch); the
  reading process grows by far less than the file."""
  rows = _run('--size_gb=0.2', '--train_steps=0', '--epoch_batch=64', '--epoch_chunk_steps=50',
              f'--dir={tmp_path}')
  assert [r['phase'] for r in rows] == ['write', 'dataset', 'epoch_indices', 'epoch']
  n = rows[0]['num_images']
  assert n == int(0.2e9) // 12288 and rows[1]['dataset_bytes'] >= n * 12288
  assert rows[2]['exactly_once'] and rows[2]['num_images'] == n and rows[2]['processes'] == 2
  epoch = rows[3]
  assert epoch['exactly_once'] and epoch['examples_read'] == epoch['distinct'] == n
  assert epoch['steps'] == math.ceil(n / 64) and epoch['missing'] == epoch['duplicated'] == 0
  assert epoch['resumed_at_step'] == 0 and epoch['positions'] == n
  growth_mb = epoch['peak_rss_mb'] - epoch['rss_before_mb']
  assert growth_mb < 0.5 * rows[1]['dataset_bytes'] / 2**20, epoch
  assert not os.listdir(tmp_path)  # The dataset is deleted.


def test_a_rerun_epoch_pass_resumes_from_its_counts(tmp_path):
  path = str(tmp_path / 'x.array_record')
  data_scale.write(path, 100)
  flags = (f'--dataset={path}', '--train_steps=0', '--epoch_batch=8', '--epoch_chunk_steps=5')
  first = _run(*flags)[-1]
  assert first['exactly_once'] and first['steps'] == 13 and first['resumed_at_step'] == 0
  second = _run(*flags)[-1]  # Everything was counted: nothing left to read.
  assert second['resumed_at_step'] == 13 and second['exactly_once']
  assert os.path.exists(path)  # --dataset files are kept.


def test_training_on_a_streamed_file(tmp_path):
  """The training run of --size_gb mode, on a tiny model and file."""
  rows = _run('--size_gb=0.01', '--skip_epoch', '--train_steps=8', '--config=vae.py:smoke',
              f'--dir={tmp_path}')
  train = rows[-1]
  assert train['phase'] == 'train' and train['steps'] == 8 and train['batch'] == 32
  assert train['images_per_s'] > 0 and 0 <= train['data_wait_fraction'] <= 1
  assert train['data_wait_fraction'] <= train['next_batch_fraction'] <= 1
  assert math.isfinite(train['last_loss'][1]) and train['peak_rss_mb'] > 0
  assert not os.listdir(tmp_path)


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_resumed_mid_epoch_read_every_example_once(tmp_path):
  """Two jax.distributed processes read one epoch of a streamed file, each its
  half of every global batch; each stops mid-epoch and resumes with a new
  iterator at that step. Together they read every example exactly once."""
  path = str(tmp_path / 'x.array_record')
  n, batch, resume_at = 203, 16, 5  # 13 steps; the last batch runs into epoch 1.
  data_scale.write(path, n)
  port = str(_free_port())
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
  env.pop('JAX_NUM_CPU_DEVICES', None)
  procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), path,
                             str(tmp_path / f'rows{i}.npz'), str(batch), str(resume_at), port,
                             str(i)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    outs = [p.communicate(timeout=240) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, (out + err)[-3000:]
  parts = [np.load(tmp_path / f'rows{i}.npz') for i in range(2)]
  steps = math.ceil(n / batch)
  for i, part in enumerate(parts):  # Each process read its own half of every batch.
    assert len(part['positions']) == steps * batch // 2
    assert ((part['positions'] % batch) // (batch // 2) == i).all()
  positions = np.concatenate([p['positions'] for p in parts])
  ids = np.concatenate([p['ids'] for p in parts])
  counted = data_scale.count_epoch(positions, ids, n)
  assert counted['exactly_once'] and counted['examples_read'] == n, counted
  # The same rows as one process reading the epoch without a break.
  from vaegan_jax import sharding  # pylint: disable=g-import-not-at-top
  one_pos, one_ids = data_scale.epoch_rows(data_scale.RecordSource(path), batch, 0,
                                           sharding.data_sharding(sharding.make_mesh()), 0, steps)
  order = np.argsort(positions)
  np.testing.assert_array_equal(positions[order], one_pos)
  np.testing.assert_array_equal(ids[order], one_ids)


def test_cli_prints_one_line_per_size(tmp_path):
  rows = _run('--sizes=300,1200', '--steps=4', '--batch=16', f'--dir={tmp_path}')
  assert [r['num_images'] for r in rows] == [300, 1200]
  for r in rows:
    assert r['images_per_s'] > 0 and r['peak_rss_mb'] >= r['rss_before_mb'] > 0
  assert rows[1]['dataset_mb'] > rows[0]['dataset_mb']
  assert not os.listdir(tmp_path)  # The temporary datasets are deleted.


def _worker(path, out, batch, resume_at, port, process_id):
  """One of two processes: steps [0, resume_at), then a fresh iterator (as a
  resumed run builds) for [resume_at, end of epoch 0]."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.distributed.initialize(f'localhost:{port}', 2, int(process_id))
  from vaegan_jax import sharding  # pylint: disable=g-import-not-at-top
  source = data_scale.RecordSource(path)
  data = sharding.data_sharding(sharding.make_mesh())
  steps = math.ceil(len(source) / batch)
  first = data_scale.epoch_rows(source, batch, 0, data, 0, resume_at)
  second = data_scale.epoch_rows(source, batch, 0, data, resume_at, steps)
  np.savez(out, positions=np.concatenate([first[0], second[0]]),
           ids=np.concatenate([first[1], second[1]]))
  jax.distributed.shutdown()


if __name__ == '__main__':
  _worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6])
