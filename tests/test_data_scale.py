"""experiments/data_scale.py on tiny sizes: JSON lines for each size, the
written file's size, and the stream reading what was written."""

import json
import os
import subprocess
import sys

import numpy as np

from conftest import ROOT

import data_scale  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_written_records_read_back_as_images(tmp_path):
  path = str(tmp_path / 'x.array_record')
  data_scale.write(path, 5)
  source = data_scale.RecordSource(path)
  images, labels = source.read([4, 0])
  assert len(source) == 5 and images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
  assert not np.array_equal(images[0], images[1])
  np.testing.assert_array_equal(labels, [-1, -1])


def test_cli_prints_one_line_per_size(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'data_scale.py'),
       '--sizes=300,1200', '--steps=4', '--batch=16', f'--dir={tmp_path}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [json.loads(l) for l in proc.stdout.splitlines()]
  assert [r['num_images'] for r in rows] == [300, 1200]
  for r in rows:
    assert r['images_per_s'] > 0 and r['peak_rss_mb'] >= r['rss_before_mb'] > 0
  assert rows[1]['dataset_mb'] > rows[0]['dataset_mb']
  assert not os.listdir(tmp_path)  # The temporary datasets are deleted.
