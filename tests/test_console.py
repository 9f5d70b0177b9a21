"""What a command prints: the project's own lines first, no library chatter,
a compact eval block; --verbosity brings the libraries' lines back."""

import logging
import re
import subprocess
import sys

from absl import logging as absl_logging

from conftest import ROOT, user_env
from vaegan_jax import checkpoint
from vaegan_jax import console

CHATTER = ('I0000', 'port.cc', 'absl::InitializeLog', 'Unknown size',
           'Downloading and preparing', 'Variant folder', 'dataset_info.json',
           'read_only', 'read only', 'Metadata file', 'WARNING', 'Traceback', '\r')
ABSL_LINE = re.compile(r'^[IWEF]\d{4} ')  # absl's (C++ and Python) log-line prefix.


def test_first_run_prints_only_the_projects_lines(smoke_run):
  _, output = smoke_run
  lines = output.splitlines()
  assert lines[0].startswith('Training the vae model on mnist5k for 10 steps'), lines[:3]
  assert lines[1].startswith('Convolutions: conv_impl='), lines[:3]
  assert lines[2].startswith('Building the embedded dataset mnist5k into '), lines[:3]
  for marker in CHATTER:
    assert marker not in output, (marker, output[:3000])
  assert not [l for l in lines if ABSL_LINE.match(l)], output[:3000]
  # The eval: a header and the VAE's five headline metrics, values aligned.
  start = next(i for i, l in enumerate(lines) if l.startswith('eval at step 10 '))
  assert re.match(r'eval at step 10 \(5 of \d+ metrics; all in metrics.jsonl', lines[start])
  block = lines[start + 1:start + 6]
  assert [l.split()[0] for l in block] == ['elbo', 'nll_nats', 'fid', 'kid', 'psnr']
  value_ends = {l.index(l.split()[1]) + len(l.split()[1]) for l in block}
  assert len(value_ends) == 1, block  # Right-aligned numbers.
  assert lines[start + 6].startswith(('step ', 'Done: ')), lines[start + 6]
  assert 'eval/coverage' not in output  # The rest stays in metrics.jsonl.


def test_verbosity_brings_the_library_lines_back(smoke_run):
  workdir, _ = smoke_run
  proc = subprocess.run(
      [sys.executable, '-m', 'vaegan_jax.main', '--config=configs/vae.py:smoke',
       f'--workdir={workdir}', '--config.train.num_steps=10', '--verbosity=0',
       f'--config.data.data_dir={workdir}/../tfds'],
      cwd=ROOT, env=user_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Nothing to do' in proc.stdout
  infos = [l for l in proc.stderr.splitlines() if ABSL_LINE.match(l)]
  assert any('orbax' in l or 'checkpoint' in l for l in infos), proc.stderr[-3000:]
  # C++ INFO logs of XLA too: TF_CPP_MIN_LOG_LEVEL went back to 0.
  assert any('.cc:' in l for l in infos), proc.stderr[-3000:]


def _records_of(fn):
  """The absl records that `fn()` logs and the 'absl' logger lets through."""
  records = []
  handler = logging.Handler(logging.DEBUG)
  handler.emit = records.append
  log = logging.getLogger('absl')
  log.addHandler(handler)
  try:
    fn()
  finally:
    log.removeHandler(handler)
  return [r.getMessage() for r in records]


def test_quiet_drops_orbax_notices_and_keeps_warnings(tmp_path):
  level = absl_logging.get_verbosity()

  def open_read_only():
    (tmp_path / 'checkpoints').mkdir(exist_ok=True)
    checkpoint.manager(str(tmp_path), read_only=True).close()
    absl_logging.warning('a real warning')

  try:
    console.set_verbose(False)
    with console.quiet_notices():  # As vaegan_jax.load does: the CLI's filter stays.
      pass
    quiet = _records_of(open_read_only)
    console.set_verbose(True)
    verbose = _records_of(open_read_only)
  finally:
    console.set_verbose(False)
    logging.getLogger('absl').removeFilter(console._NOTICES)  # pylint: disable=protected-access
    absl_logging.set_verbosity(level)
  assert 'a real warning' in quiet and 'a real warning' in verbose
  assert not [m for m in quiet if 'read_only' in m or 'read only' in m], quiet
  assert [m for m in verbose if 'read_only' in m or 'read only' in m], verbose


def test_eval_block_is_aligned_and_ordered():
  scalars = {'eval/fid': 12.345678, 'eval/elbo': -109.33, 'eval/coverage': 0.5,
             'eval/cond_accuracy': 0.44, 'eval/psnr': 18.5}
  text = console.eval_block(1500, scalars, ('elbo', 'nll_nats', 'fid', 'psnr'))
  lines = text.splitlines()
  assert lines[0] == ('eval at step 1500 (4 of 5 metrics; all in metrics.jsonl '
                      'and TensorBoard)')
  assert [l.split()[:2] for l in lines[1:]] == [
      ['elbo', '-109.3'], ['fid', '12.35'], ['psnr', '18.5'], ['cond_accuracy', '0.44']]
  assert len({l.index(l.split()[1]) + len(l.split()[1]) for l in lines[1:]}) == 1
  assert 'coverage' not in text
  assert console.eval_block(3, {'eval/x': 1.0}, ('fid',)).count('\n') == 0
  # A backbone's distance (config.eval.features) follows the headline.
  text = console.eval_block(9, {'eval/nll_nats': 90.0, 'eval/fd_dinov2': 512.25,
                                'eval/kd_dinov2': 0.5}, ('elbo', 'nll_nats', 'fid'))
  assert [l.split()[:2] for l in text.splitlines()[1:]] == [
      ['nll_nats', '90'], ['fd_dinov2', '512.2']]
  assert 'DINOv2' in text and '(2 of 3 metrics;' in text
