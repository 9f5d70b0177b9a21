"""experiments/colab_tpu.ipynb runs top to bottom on CPU at the smoke size."""

import json
import os

import nbformat
import pytest

from conftest import ROOT

NOTEBOOK = os.path.join(ROOT, 'experiments', 'colab_tpu.ipynb')


def _with_parameters(nb, **params):
  """Appends assignments to the cell tagged 'parameters' (as papermill does)."""
  cell, = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
  cell.source += '\n' + '\n'.join(f'{k} = {v!r}' for k, v in params.items())
  return nb


def test_notebook_runs_top_to_bottom_at_smoke_size(tmp_path, data_dir, monkeypatch):
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  nb = _with_parameters(nbformat.read(NOTEBOOK, as_version=4), SIZE='smoke',
                        WORKDIR=str(tmp_path / 'runs'), DATA_DIR=data_dir)
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')  # The kernel inherits the environment.
  NotebookClient(nb, timeout=300, kernel_name='python3',
                 resources={'metadata': {'path': os.path.join(ROOT, 'experiments')}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])]
  assert not [o for o in outputs if o.output_type == 'error']
  text = ''.join(o.get('text', '') for o in outputs if o.output_type == 'stream')
  assert 'size: smoke' in text
  assert 'GAN trained to step 20' in text and 'VAE trained to step 20' in text
  # Grids and curves were displayed inline.
  pngs = [o for o in outputs if o.output_type in ('display_data', 'execute_result')
          and 'image/png' in o.get('data', {})]
  assert len(pngs) >= 2 + 1 + 2 + 2 + 1
  # The evaluation ran on both checkpoints, reloaded from disk.
  table = text[text.index('model\tstep'):].splitlines()
  assert [row.split('\t')[:2] for row in table[1:3]] == [['gan', '20'], ['vae', '20']]
  for row in table[1:3]:
    fid = float(row.split('\t')[2])
    assert fid > 0
  with open(tmp_path / 'runs' / 'gan' / 'config.json') as f:
    assert json.load(f)['train']['num_steps'] == 20
