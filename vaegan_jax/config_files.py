"""Config files read by path, as `--config=FILE[:variant]` reads them.

ml_collections loads a config file by its path without touching sys.path, so
configs/*.py import their shared keys from the installed package
(`vaegan_jax.config_base`), and scripts that need a config file (the study,
the notebook, a config built on another one) read it here the same way.
"""

import importlib.util
import os

import ml_collections


def load(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the config file at `path`, as `--config=path:arg`
  reads it (a file path, not a module name: no sys.path needed)."""
  return load_module(path).get_config(arg)


def load_module(path: str):
  """The config file at `path` as a module (a new one per call)."""
  name = 'vaegan_jax_config_' + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None:
    raise FileNotFoundError(f'no config file {path}')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
