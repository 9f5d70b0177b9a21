"""Bad settings are refused in one line before training; faults end in one line.

The table-driven test walks every key of every config file (all variants), so
a key added later fails `test_every_key_has_a_rule` until it gets a line in
`validation.RULES`, and is then checked by `test_every_rule_refuses_...`.
"""

import errno
import glob
import importlib.util
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import types

import jax
import ml_collections
import numpy as np
import pytest

from conftest import ROOT, load_config, restore_latest
from vaegan_jax import checkpoint
from vaegan_jax import cli
from vaegan_jax import input_pipeline
from vaegan_jax import run_config
from vaegan_jax import train
from vaegan_jax import validation
from vaegan_jax.errors import UsageError, UserError, WorkerError

FAMILIES = ('vae', 'gan', 'vaegan')


def _config_files():
  files = [f for f in sorted(glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'), recursive=True))
           if os.path.basename(f) != 'common.py']
  assert len(files) >= 5, files
  return files


def _variants(path):
  """(name, config) for the default and every variant a config file accepts.

  Variant names are tried from the dataset registry, the usual ones and every
  quoted word in the file (so `arg == 'conditional'` or a dict of literature
  variants is found); a config file refuses an unknown one with ValueError.
  """
  spec = importlib.util.spec_from_file_location(f'cfg_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  out = [(f'{os.path.relpath(path, ROOT)}', module.get_config())]
  words = re.findall(r"'(\w+)'", open(path).read())
  candidates = dict.fromkeys(('smoke', 'tiny', *getattr(input_pipeline, 'DATASETS', {}), *words))
  for arg in candidates:
    try:
      out.append((f'{os.path.relpath(path, ROOT)}:{arg}', module.get_config(arg)))
    except ValueError:
      pass
  return out


ALL_CONFIGS = [c for f in _config_files() for c in _variants(f)]


def test_every_key_has_a_rule():
  missing = {name: validation.unruled_keys(c) for name, c in ALL_CONFIGS}
  missing = {k: v for k, v in missing.items() if v}
  assert not missing, (
      f'config keys without a rule in vaegan_jax/validation.py RULES: {missing}')


@pytest.mark.parametrize('name,config', ALL_CONFIGS, ids=[n for n, _ in ALL_CONFIGS])
def test_every_shipped_config_passes(name, config):
  del name
  validation.validate(config)


def _with(config, key, value):
  d = config.to_dict()
  node = d
  *path, last = key.split('.')
  for p in path:
    node = node[p]
  node[last] = value
  return ml_collections.ConfigDict(d)


def _cases():
  for family in FAMILIES:
    config = load_config(family)
    for key, default in validation.flatten(config.to_dict()).items():
      rule = validation.rule_for(key)
      assert rule is not None, key
      kinds = [kind for kind, _ in rule.refused()]
      assert 'type' in kinds, key
      if isinstance(rule, (validation.OneOf, validation.Dataset)):
        assert 'unknown' in kinds, key
      elif not isinstance(rule, (validation.Str, validation.Bool)):
        assert 'range' in kinds, key
      for kind, value in rule.refused():
        yield family, key, kind, value, default


CASES = list(_cases())


def test_the_table_covers_every_key():
  covered = {(f, k) for f, k, *_ in CASES}
  for family in FAMILIES:
    for key in validation.flatten(load_config(family).to_dict()):
      assert (family, key) in covered


@pytest.mark.parametrize('family', FAMILIES)
def test_every_rule_refuses_a_wrong_type_a_range_and_an_unknown_value(family, monkeypatch):
  monkeypatch.setattr(cli, 'config_source', lambda: f'configs/{family}.py')
  config = load_config(family)
  checked = 0
  for fam, key, kind, value, _ in CASES:
    if fam != family:
      continue
    t0 = time.time()
    with pytest.raises(validation.ConfigError) as info:
      validation.validate(_with(config, key, value))
    line, code = cli.error_line(info.value)
    assert time.time() - t0 < 10
    assert info.value.key == key, (key, kind, value, line)
    assert code == cli.EXIT_USAGE
    assert '\n' not in line and line.startswith(f'config.{key}='), line
    assert 'allowed:' in line and f'(config file configs/{family}.py)' in line, line
    if kind == 'type':
      assert 'wrong type' in line, line
    checked += 1
  assert checked >= 3 * 20


def test_allowed_values_come_from_the_code():
  from vaegan_jax import families, objectives  # pylint: disable=g-import-not-at-top
  from vaegan_jax.families import vae  # pylint: disable=g-import-not-at-top
  from vaegan_jax.models import layers  # pylint: disable=g-import-not-at-top
  assert validation.rule_for('gan.loss').choices is objectives.GAN_LOSSES
  assert validation.rule_for('vaegan.gan_loss').choices is objectives.GAN_LOSSES
  assert validation.rule_for('vae.likelihood').choices is vae.LIKELIHOODS
  assert validation.rule_for('model.conv_impl').choices is layers.IMPLS
  assert validation.rule_for('model.family').choices is families.FAMILIES
  assert set(validation.rule_for('train.compute_dtype').choices) == set(families.COMPUTE_DTYPES)
  config = load_config('vae')
  with pytest.raises(validation.ConfigError, match="'mnist_typo' is not allowed"):
    validation.validate(_with(config, 'data.name', 'mnist_typo'))


def test_an_int_is_a_float_but_a_bool_is_not_a_number():
  config = load_config('vae')
  validation.validate(_with(config, 'vae.beta', 2))
  with pytest.raises(validation.ConfigError, match='wrong type'):
    validation.validate(_with(config, 'train.batch_size', True))
  with pytest.raises(validation.ConfigError, match='not finite'):
    validation.validate(_with(config, 'optim.learning_rate', float('inf')))


# ---------------------------------------------------------------------------
# Cross-field rules.
# ---------------------------------------------------------------------------


def test_batch_must_divide_over_devices_and_processes():
  config = load_config('vae', 'smoke')
  config.train.batch_size = 30
  with pytest.raises(validation.ConfigError,
                     match=r'batch_size=30 is not divisible by the number of devices \(4\)'):
    validation.check_devices(config, device_count=4, process_count=1)
  with pytest.raises(validation.ConfigError, match=r'number of processes \(4\)'):
    validation.check_devices(config, device_count=1, process_count=4)
  config.train.batch_size = 32
  validation.check_devices(config, device_count=4, process_count=2)


@pytest.mark.parametrize('family,refused', [('gan', True), ('vaegan', True), ('vae', False)])
def test_image_size_must_fit_the_architecture(family, refused, monkeypatch):
  monkeypatch.setattr(input_pipeline, 'image_shape', lambda config: (48, 48, 3))
  config = load_config(family, 'smoke')
  if refused:
    with pytest.raises(validation.ConfigError, match=r'48x48 images.*28, 32, 64'):
      validation.validate(config, devices=False)
  else:
    validation.validate(config, devices=False)


def test_warmup_must_be_shorter_than_decay():
  config = load_config('gan')
  config.optim.g.decay_steps = 100
  config.optim.g.warmup_steps = 100
  with pytest.raises(validation.ConfigError, match=r'optim.g.warmup_steps=100 is not below'):
    validation.validate(config, devices=False)
  config.optim.g.warmup_steps = 10
  validation.validate(config, devices=False)
  config = load_config('vae')  # The VAE's one optimiser has the same keys.
  config.optim.decay_steps = 50
  config.optim.warmup_steps = 50
  with pytest.raises(validation.ConfigError, match=r'optim.warmup_steps=50 is not below'):
    validation.validate(config, devices=False)


@pytest.mark.parametrize('family', ['vae', 'gan', 'vaegan'])
def test_every_optimiser_follows_its_cosine_schedule(family):
  # decay_steps=3 (warm-up 1): lr 0 at count 0, the peak at 1, half at 2, 0 at 3,
  # so updates 1 and 2 move the parameters and updates 0 and 3 do not.
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vaegan_jax import state as state_lib  # pylint: disable=g-import-not-at-top
  config = load_config(family)
  sections = ([config.optim] if 'learning_rate' in config.optim
              else [config.optim[k] for k in config.optim.keys()])
  assert sections
  for section in sections:
    section.decay_steps = 3
    tx = state_lib.adam(section)
    params = {'w': jnp.ones(3)}
    opt_state = tx.init(params)
    moved = []
    for _ in range(4):
      new, opt_state = state_lib.update(tx, {'w': jnp.ones(3)}, opt_state, params)
      moved.append(bool(jnp.any(new['w'] != params['w'])))
      params = new
    assert moved == [False, True, True, False], (family, moved)


def test_conditional_needs_labels():
  config = _with(load_config('gan'), 'data.name', 'celeb_a')
  d = config.to_dict()
  d['model']['conditional'] = True
  with pytest.raises(validation.ConfigError, match='needs class labels'):
    validation.validate(ml_collections.ConfigDict(d), devices=False)


# ---------------------------------------------------------------------------
# The command line: the rows, one line, exit 2, seconds.
# ---------------------------------------------------------------------------


def _main(*args, env=None):
  env = dict(os.environ, JAX_PLATFORMS='cpu', **(env or {}))
  t0 = time.time()
  proc = subprocess.run([sys.executable, '-m', 'vaegan_jax.main', *args], cwd=ROOT,
                        capture_output=True, text=True, env=env, timeout=120)
  return proc, time.time() - t0


@pytest.mark.parametrize('override,key', [
    ('--config.train.batch_size=-4', 'train.batch_size'),  # Once a hang.
    ('--config.vae.likelihood=poisson', 'vae.likelihood'),
    ('--config.train.checkpoint_every_steps=0', 'train.checkpoint_every_steps'),
    ('--config.train.batch_size=abc', 'train.batch_size'),  # Refused by the parser.
])
def test_cli_refuses_a_bad_value_in_one_line(override, key, tmp_path):
  proc, _ = _main('--config=configs/vae.py:smoke', f'--workdir={tmp_path}/w', override)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and key in errors[0], proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  if 'abc' not in override:
    assert '(config file configs/vae.py:smoke)' in errors[0], errors[0]
  # Refused before any work: no workdir (a hang, as once with a negative
  # batch, would hit _main's timeout; wall time is not asserted on a shared
  # machine).
  assert not os.path.exists(tmp_path / 'w')


def test_cli_workdir_that_is_a_file_is_one_line(tmp_path):
  path = tmp_path / 'a_file'
  path.write_text('x')
  proc, _ = _main('--config=configs/vae.py:smoke', f'--workdir={path}')
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      f'error: --workdir={path}: {path} is a file, not a directory; choose another --workdir.')
  assert 'Traceback' not in proc.stderr


def test_traceback_on_request(tmp_path):
  proc, _ = _main('--config=configs/vae.py:smoke', f'--workdir={tmp_path}',
                  '--config.vae.likelihood=poisson', env={cli.TRACEBACK_ENV: '1'})
  assert proc.returncode == 2
  assert 'Traceback' in proc.stderr and 'ConfigError' in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("error: config.vae.likelihood='poisson'")


def test_unexpected_exception_is_one_line_with_a_hint(monkeypatch):
  monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
  line, code = cli.error_line(ZeroDivisionError('integer modulo by zero'))
  assert code == cli.EXIT_FAILURE and '\n' not in line
  assert line.startswith('unexpected ZeroDivisionError: integer modulo by zero')
  assert '--verbosity=1' in line and cli.TRACEBACK_ENV in line
  assert cli.error_line(UserError('x'))[1] == cli.EXIT_FAILURE
  assert cli.error_line(UsageError('x'))[1] == cli.EXIT_USAGE
  assert cli.error_line(train.Interrupted('x'))[1] == cli.EXIT_INTERRUPTED


# ---------------------------------------------------------------------------
# Worker threads, Ctrl-C, the workdir and the disk.
# ---------------------------------------------------------------------------


def tiny(data_dir, num_steps=12):
  config = load_config('vae', 'smoke')
  config.data.data_dir = data_dir
  config.train.batch_size = 16
  config.train.num_steps = num_steps
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = 3
  config.train.sample_every_steps = 100
  config.train.eval_every_steps = 100
  config.train.keep_checkpoints = 10
  config.eval.generative_metrics = False
  return config


def test_input_worker_exception_reaches_the_main_thread():
  images = np.zeros((10, 28, 28, 1), np.uint8)
  labels = np.zeros((10,), np.int32)
  mesh = jax.make_mesh((1,), ('data',), devices=jax.devices()[:1])
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))

  class Faulty(input_pipeline.TrainIterator):
    def host_batch(self, step):  # The seam: the worker's per-batch function.
      if step == 2:
        raise ValueError('negative dimensions are not allowed')
      return super().host_batch(step)

  it = Faulty(images, labels, 2, 0, sharding)
  next(it), next(it)
  t0 = time.time()
  with pytest.raises(WorkerError, match='failed at step 2: ValueError: negative dimensions'):
    next(it)
  assert time.time() - t0 < 60  # Not a hang (a generous bound: shared machines are slow).
  it.close()


def test_cli_worker_fault_ends_the_process_in_seconds(tmp_path):
  t0 = time.time()
  proc = subprocess.run(
      [sys.executable, 'tests/kill_run.py', 'worker_fault', '6', '--',
       '--config=configs/vae.py:smoke', f'--workdir={tmp_path}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  end = time.time()
  assert proc.returncode == 1, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert errors == [l for l in errors if 'input pipeline thread failed at step 6: '
                    'RuntimeError: injected fault at batch 6' in l] and len(errors) == 1, \
      proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  injected = float(proc.stdout.split('fault injected at ')[1].split()[0])
  # Not a hang: the process ends soon after the fault (a generous bound, as
  # shared machines are slow; a hang would run into the 300 s timeout).
  assert end - injected < 60, (end - injected, end - t0)


def test_ctrl_c_saves_the_step_reached_and_resumes_exactly(tmp_path, data_dir, monkeypatch):
  config = tiny(data_dir)
  straight = train.train_and_evaluate(config, str(tmp_path / 'straight'))
  original = input_pipeline.TrainIterator.__next__

  def interrupt_at_8(self):
    if self.step == 7:
      raise KeyboardInterrupt
    return original(self)

  monkeypatch.setattr(input_pipeline.TrainIterator, '__next__', interrupt_at_8)
  workdir = str(tmp_path / 'interrupted')
  with pytest.raises(train.Interrupted,
                     match=r'Interrupted \(Ctrl-C\) at step 7; saved it; the last good '
                           r'checkpoint is step 7 in .*rerun the same command to resume '
                           r'from it') as info:
    train.train_and_evaluate(config, workdir)
  assert cli.error_line(info.value)[1] == 130
  assert checkpoint.finalized_steps(checkpoint.checkpoint_dir(workdir)) == [3, 6, 7]
  assert int(jax.device_get(restore_latest(workdir, config).step)) == 7
  monkeypatch.setattr(input_pipeline.TrainIterator, '__next__', original)
  resumed = train.train_and_evaluate(config, workdir)  # From step 7: as if never stopped.
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.params),
               jax.device_get(resumed.params))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.opt_state),
               jax.device_get(resumed.opt_state))


def test_ctrl_c_that_kills_a_starting_worker_saves(tmp_path, data_dir, monkeypatch):
  """Ctrl-C reaches the whole process group: an input worker still starting
  (before it ignores the signal) dies of it, and the next batch fails. The
  run saves the step reached and stops as for Ctrl-C, not with the worker's
  error."""
  original = input_pipeline.TrainIterator.__next__

  def interrupt_and_fail_at_8(self):
    if self.step == 7:
      os.kill(os.getpid(), signal.SIGINT)
      raise WorkerError('The input pipeline worker process failed at step 7: '
                        'RuntimeError: Worker process was terminated unexpectedly')
    return original(self)

  monkeypatch.setattr(input_pipeline.TrainIterator, '__next__', interrupt_and_fail_at_8)
  workdir = str(tmp_path)
  with pytest.raises(train.Interrupted,
                     match=r'Interrupted \(Ctrl-C\) at step 7; saved it; the last good '
                           r'checkpoint is step 7 in '):
    train.train_and_evaluate(tiny(data_dir), workdir)
  assert checkpoint.finalized_steps(checkpoint.checkpoint_dir(workdir)) == [3, 6, 7]
  # Without a stop request, the same failure is the run's error.
  def fail(self):
    raise WorkerError(f'The input pipeline worker process failed at step {self.step}')

  monkeypatch.setattr(input_pipeline.TrainIterator, '__next__', fail)
  with pytest.raises(WorkerError, match='failed at step 7'):
    train.train_and_evaluate(tiny(data_dir), workdir)


def test_sigterm_saves_the_step_reached_like_ctrl_c(tmp_path, data_dir, monkeypatch):
  """SIGTERM (a scheduler's preemption) during training saves the step
  reached and stops with exit code 143; the handler is the previous one
  again afterwards."""
  original = input_pipeline.TrainIterator.__next__

  def terminate_at_8(self):
    if self.step == 7:
      os.kill(os.getpid(), signal.SIGTERM)
    return original(self)

  monkeypatch.setattr(input_pipeline.TrainIterator, '__next__', terminate_at_8)
  before = signal.getsignal(signal.SIGTERM)
  workdir = str(tmp_path)
  with pytest.raises(train.Terminated,
                     match=r'Terminated \(SIGTERM\) at step 7; saved it; the last good '
                           r'checkpoint is step 7 in .*rerun the same command to resume '
                           r'from it') as info:
    train.train_and_evaluate(tiny(data_dir), workdir)
  assert cli.error_line(info.value)[1] == 143
  assert checkpoint.finalized_steps(checkpoint.checkpoint_dir(workdir)) == [3, 6, 7]
  assert signal.getsignal(signal.SIGTERM) is before


def test_entry_points_exit_143_on_sigterm_and_130_on_ctrl_c():
  """cli.run ends a SIGTERM that reached it (the vmapped study loop re-raises
  it after saving) with one line and status 143, Ctrl-C with 130."""
  for exc, line, code in [('SigTerm', 'error: terminated (SIGTERM).', 143),
                          ('KeyboardInterrupt', 'error: interrupted (Ctrl-C).', 130)]:
    script = ('from vaegan_jax import cli\n'
              'from vaegan_jax.errors import SigTerm\n'
              'def main(argv):\n'
              f'  raise {exc}()\n'
              'cli.run(main)\n')
    proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS='cpu'))
    assert proc.returncode == code, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == line


def test_ctrl_c_saves_nothing_it_cannot_trust(tmp_path, data_dir, monkeypatch):
  # A non-finite state is not saved on Ctrl-C: the message names the last
  # periodic checkpoint.
  original = input_pipeline.TrainIterator.__next__
  original_check = train.check_finite

  interrupted = []

  def interrupt_at_8(self):
    if self.step == 7:
      interrupted.append(True)
      raise KeyboardInterrupt
    return original(self)

  def nan_at_interrupt(pending, last_step, seeds=None):
    if interrupted:  # The check before the save on Ctrl-C finds a NaN.
      raise train.NonFiniteError('Non-finite loss=nan at step 7', step=7)
    return original_check(pending, last_step, seeds)

  monkeypatch.setattr(input_pipeline.TrainIterator, '__next__', interrupt_at_8)
  monkeypatch.setattr(train, 'check_finite', nan_at_interrupt)
  workdir = str(tmp_path)
  config = tiny(data_dir)
  with pytest.raises(train.Interrupted,
                     match=r'Interrupted \(Ctrl-C\) at step 7; the last good checkpoint is '
                           r'step 6 in .*rerun the same command to resume from it'):
    train.train_and_evaluate(config, workdir)
  assert checkpoint.finalized_steps(checkpoint.checkpoint_dir(workdir)) == [3, 6]


def test_workdir_checks(tmp_path, monkeypatch):
  a_file = tmp_path / 'f'
  a_file.write_text('')
  for bad in (a_file, a_file / 'sub'):
    with pytest.raises(UsageError, match=f'{a_file} is a file, not a directory'):
      run_config.check_workdir(str(bad))

  def refuse(**kwargs):
    raise PermissionError(errno.EACCES, 'Permission denied')

  monkeypatch.setattr(run_config.tempfile, 'mkstemp', refuse)
  with pytest.raises(UserError, match=r'is not writable \(Permission denied\)'):
    run_config.check_workdir(str(tmp_path / 'ro'))


def test_too_little_space_for_a_checkpoint_is_one_line_before_training(tmp_path, data_dir,
                                                                      monkeypatch):
  free = 300 * 1024
  monkeypatch.setattr(checkpoint.shutil, 'disk_usage',
                      lambda path: types.SimpleNamespace(total=10**9, used=10**9 - free, free=free))
  iterators = []
  monkeypatch.setattr(input_pipeline.TrainIterator, '__init__',
                      lambda self, *a, **k: iterators.append(1))
  with pytest.raises(UserError, match=r'has 0.3 MiB free, and a checkpoint of this model '
                                      r'needs about 1.1 MiB'):
    train.train_and_evaluate(tiny(data_dir), str(tmp_path))
  assert not iterators and not os.path.exists(checkpoint.checkpoint_dir(str(tmp_path)))
  config = tiny(data_dir)
  config.eval.generative_metrics = True  # A best checkpoint by FID: room for two.
  with pytest.raises(UserError, match=r'has 0.3 MiB free, and a checkpoint of this model and '
                                      r'its best-checkpoint copy \(2 in all\) need about 2.2 MiB'):
    train.train_and_evaluate(config, str(tmp_path))
  assert not iterators


def test_disk_full_mid_run_then_resume_matches_an_uninterrupted_run(tmp_path, data_dir,
                                                                   monkeypatch):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  config = tiny(data_dir)
  straight = train.train_and_evaluate(config, str(tmp_path / 'straight'))

  workdir = str(tmp_path / 'full')
  original, calls = ocp.CheckpointManager.save, []

  def save_until_the_disk_is_full(self, step, *args, **kwargs):
    calls.append(step)
    if len(calls) == 3:  # A partial write, then ENOSPC, as on a full disk.
      tmp = pathlib.Path(str(self.directory), f'{step}.orbax-checkpoint-tmp-1234')
      (tmp / 'default').mkdir(parents=True)
      (tmp / 'default' / 'partial').write_bytes(b'\0' * 100)
      raise OSError(errno.ENOSPC, 'No space left on device')
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', save_until_the_disk_is_full)
  with pytest.raises(checkpoint.CheckpointWriteError) as info:
    train.train_and_evaluate(config, workdir)
  line, code = cli.error_line(info.value)
  assert code == 1 and '\n' not in line
  assert 'No space left on device' in line and 'the last good checkpoint is step 6' in line
  assert 'free disk space and rerun the same command to resume from step 6' in line
  ckpts = checkpoint.checkpoint_dir(workdir)
  assert sorted(os.listdir(ckpts)) == ['3', '6']  # No temporary directory left.

  monkeypatch.setattr(ocp.CheckpointManager, 'save', original)  # Space freed.
  resumed = train.train_and_evaluate(config, workdir)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.params),
               jax.device_get(resumed.params))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.opt_state),
               jax.device_get(resumed.opt_state))


def test_an_asynchronous_save_failure_names_the_last_good_checkpoint(tmp_path):
  ckpts = tmp_path / 'checkpoints'
  for name in ('3', '6', '9.orbax-checkpoint-tmp-77'):
    (ckpts / name).mkdir(parents=True)

  class Manager:
    directory = str(ckpts)
    closed = False

    def wait_until_finished(self):
      raise ValueError('RESOURCE_EXHAUSTED: write failed')

    def close(self):
      Manager.closed = True

  with pytest.raises(checkpoint.CheckpointWriteError,
                     match='RESOURCE_EXHAUSTED.*the last good checkpoint is step 6.*free disk'):
    checkpoint.finish(Manager())
  assert Manager.closed and sorted(os.listdir(ckpts)) == ['3', '6']


@pytest.mark.parametrize('family, key, bad', [('gan', 'ema_decay', 1.0), ('gan', 'd_steps', 0),
                                              ('vaegan', 'feature_std', 0.0), ('vae', 'beta', -1.0)])
def test_a_family_building_its_state_applies_validations_rules(family, key, bad):
  # init_state (also behind vaegan_jax.load and evaluation) checks the family's
  # keys with its RULES (the same rules validate uses), and does not require
  # keys a stored config predates.
  from vaegan_jax import families  # pylint: disable=g-import-not-at-top
  fam = families.get(family)
  config = load_config(family)
  bad_config = config.copy_and_resolve_references()
  bad_config[family][key] = bad
  with pytest.raises(validation.ConfigError, match=rf'config\.{family}\.{key}={bad}'):
    fam.check_config(bad_config)
  old = config.copy_and_resolve_references()
  del old[family][key]  # A config from before the key: accepted.
  fam.check_config(old)


def test_each_rule_sits_with_its_owner_and_the_book_gathers_them_all():
  """Every family's table is the rule book's rule for each of its keys, and
  every owner's constant is what its rule allows."""
  from vaegan_jax import families  # pylint: disable=g-import-not-at-top
  table = validation.RULES
  for name in FAMILIES:
    family = families.get(name)
    for key, rule in family.RULES.items():
      assert table[key] == rule, key
  gathered = {}
  import importlib  # pylint: disable=g-import-not-at-top
  for owner in validation.OWNERS:
    gathered.update(importlib.import_module(owner).RULES)
  assert gathered == table
