"""Shared fixtures: tiny configs, a session-wide embedded-data dir."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'configs'))
sys.path.insert(0, os.path.join(ROOT, 'tests'))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


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
