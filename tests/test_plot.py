"""`python -m vaegan_jax.plot`: a run's curves, one axis per metric group."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from conftest import ROOT
from vaegan_jax import plot
from vaegan_jax import viz
from vaegan_jax.errors import UserError


def test_plot_of_a_smoke_run(smoke_run, tmp_path):
  workdir, _ = smoke_run
  rows = plot.read_metrics(workdir)
  keys = {k for r in rows for k in r if k != 'step'}
  # One axis per group: 'elbo' with 'eval/elbo', 'kid' with 'eval/kid_std', ...
  groups = {k.replace('eval/', '').replace('_std', '') for k in keys}
  assert {'elbo', 'kl', 'loss', 'fid', 'kid', 'nll_nats', 'psnr', 'steps_per_s'} <= groups
  fig = viz.curves_figure(rows)
  titles = [ax.get_title() for ax in fig.axes]
  assert sorted(titles) == sorted(groups)
  elbo = fig.axes[titles.index('elbo')]
  assert [l.get_label() for l in elbo.lines] == ['train', 'test']
  np.testing.assert_allclose(elbo.lines[1].get_ydata(),
                             [r['eval/elbo'] for r in rows if 'eval/elbo' in r])
  out = plot.run(workdir, str(tmp_path / 'c.png'))
  with Image.open(out) as img:
    assert img.size[0] >= viz.MIN_WIDTH and img.size[1] > 200
    assert np.asarray(img.convert('L')).std() > 10


def test_cli_default_out_and_errors(smoke_run, tmp_path):
  workdir, _ = smoke_run
  proc = subprocess.run([sys.executable, '-m', 'vaegan_jax.plot', f'--workdir={workdir}'],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == f'Wrote {os.path.join(workdir, "curves.png")}'
  assert proc.stderr == ''
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(UserError, match='No metrics.jsonl'):
    plot.run(str(empty))
  (empty / 'metrics.jsonl').write_text('{"step": 1, "loss"')  # Cut short by a kill.
  with pytest.raises(UserError, match='no logged step'):
    plot.run(str(empty))
  (empty / 'metrics.jsonl').write_text(json.dumps({'step': 1, 'loss': 2.0}) + '\n{"st')
  assert len(plot.read_metrics(str(empty))) == 1


def test_rows_logged_again_after_a_resume_supersede_the_earlier_ones(tmp_path):
  rows = [{'step': 1, 'loss': 3.0}, {'step': 2, 'loss': 2.0}, {'step': 2, 'eval/loss': 2.5},
          {'step': 3, 'loss': 1.0},  # Never saved: the run resumed from step 2.
          {'step': 3, 'loss': 1.5}, {'step': 4, 'loss': 0.5}]
  (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  got = plot.read_metrics(str(tmp_path))
  assert got == [rows[0], rows[1], rows[2], rows[4], rows[5]]
  fig = viz.curves_figure(got)
  loss = fig.axes[[ax.get_title() for ax in fig.axes].index('loss')]
  np.testing.assert_array_equal(loss.lines[0].get_xdata(), [1, 2, 3, 4])  # No zig-zag.
