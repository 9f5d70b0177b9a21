"""Model families: a small registry of modules with the same plain functions.

Each family module provides:
  init_state(config, key) -> TrainState
  train_step(config, state, batch) -> (state, metrics)       pure, jittable
  eval_step(config, state, batch) -> dict of per-batch sums  (masked rows)
  sample(config, state, key, n) -> images (n, H, W, C) in [0, 1]
  grid_panels(config, state, key, images) -> list of image batches for grids
and, for families with an encoder, encode / decode / reconstruct; and the
constants CONSOLE_METRICS (training metrics on each console line),
EVAL_CONSOLE_METRICS (an evaluation's headline metrics on the console) and
GRID_TITLES (the titles of grid_panels' panels).
"""

import importlib

from vaegan_jax.errors import UserError

FAMILIES = ('vae', 'gan', 'vaegan')

# config.train.compute_dtype -> the dtype of activations and matmuls (params,
# optimiser states and losses stay float32).
COMPUTE_DTYPES = {'float32': 'float32', 'bfloat16': 'bfloat16'}


def compute_dtype(config):
  """The jnp dtype named by config.train.compute_dtype (default float32)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return jnp.dtype(COMPUTE_DTYPES[config.train.get('compute_dtype', 'float32')])


def get(name: str):
  """Returns the family module `vaegan_jax.families.<name>`."""
  if name not in FAMILIES:
    raise UserError(f'Unknown model family {name!r}; known: {", ".join(FAMILIES)}.')
  return importlib.import_module(f'vaegan_jax.families.{name}')
