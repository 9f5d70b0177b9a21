"""Shared fixtures: tiny configs, a session-wide embedded-data dir."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# pyproject.toml's [tool.pytest.ini_options] pythonpath puts the checkout, its
# configs/, tests/ and experiments/ on this process's path; the scripts the
# tests start (tests/*.py, experiments/*.py, `python -m vaegan_jax.*`, the
# notebook) import this checkout's vaegan_jax through PYTHONPATH, installed or not.
os.environ['PYTHONPATH'] = os.pathsep.join(
    [ROOT] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p])

# The test processes train in-process, under the host-memory policy that
# vaegan_jax.main sets for training (train.keep_host_memory); tests of glibc's
# default behaviour run in subprocesses.
from vaegan_jax import host_memory  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax import kernels  # pylint: disable=g-import-not-at-top,wrong-import-position

host_memory.keep_freed_memory()
kernels.setup()  # As the entry points do, before anything is compiled.


def load_config(name, arg=None):
  """configs/<name>.py:get_config(arg), unlocked for tests to edit."""
  import importlib  # pylint: disable=g-import-not-at-top
  module = importlib.import_module(name)
  return module.get_config(arg)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A TFDS data_dir holding the embedded mnist5k, built once per session."""
  path = str(tmp_path_factory.mktemp('tfds'))
  from vaegan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  input_pipeline.load_split('mnist5k', 'test', path)
  return path


def restore_latest(workdir, config):
  """The latest checkpoint in `workdir`, restored onto this process's devices."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from vaegan_jax import checkpoint, families, sharding  # pylint: disable=g-import-not-at-top
  family = families.get(config.model.family)
  abstract = jax.eval_shape(functools.partial(family.init_state, config), jax.random.PRNGKey(0))
  mngr = checkpoint.manager(workdir, read_only=True)
  state = checkpoint.restore(mngr, mngr.latest_step(), abstract,
                             sharding.state_sharding(sharding.make_mesh(), abstract))
  mngr.close()
  return state


# Variables that change what a command prints; a first run has none of them.
CONSOLE_ENV = ('TF_CPP_MIN_LOG_LEVEL', 'CI', 'VAEGAN_JAX_TRACEBACK')


def user_env():
  """os.environ as a new user's shell has it: without CONSOLE_ENV."""
  return {k: v for k, v in os.environ.items() if k not in CONSOLE_ENV}


@pytest.fixture(scope='session')
def smoke_run(tmp_path_factory):
  """A new user's first run: `python -m vaegan_jax.main --config=configs/vae.py:smoke`
  in a subprocess (10 steps, one evaluation), building the embedded dataset
  into an empty data_dir. Returns (workdir, its stdout and stderr together)."""
  tmp = tmp_path_factory.mktemp('smoke_run')
  proc = subprocess.run(
      [sys.executable, '-m', 'vaegan_jax.main', '--config=configs/vae.py:smoke',
       f'--workdir={tmp}/run', f'--config.data.data_dir={tmp}/tfds',
       '--config.train.num_steps=10'],
      cwd=ROOT, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:]
  return str(tmp / 'run'), proc.stdout
