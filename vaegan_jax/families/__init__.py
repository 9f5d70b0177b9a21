"""Model families: a small registry of modules with the same plain functions.

Each family module provides:
  init_state(config, key) -> TrainState
  train_step(config, state, batch) -> (state, metrics)       pure, jittable
  eval_step(config, state, batch) -> dict of per-batch sums  (masked rows)
  sample(config, state, key, n) -> images (n, H, W, C) in [0, 1]
  grid_panels(config, state, key, images) -> list of image batches for grids
and, for families with an encoder, encode / decode / reconstruct
(`has_encoder`; `has_likelihood` for the VAE's ELBO terms); and the
constants CONSOLE_METRICS (training metrics on each console line),
EVAL_CONSOLE_METRICS (an evaluation's headline metrics on the console) and
GRID_TITLES (the titles of grid_panels' panels).
"""

import importlib

from vaegan_jax import rules
from vaegan_jax.errors import UserError

FAMILIES = ('vae', 'gan', 'vaegan')

# config.train.compute_dtype -> the dtype of activations and matmuls (params,
# optimiser states and losses stay float32).
COMPUTE_DTYPES = {'float32': 'float32', 'bfloat16': 'bfloat16'}

RULES = {
    'model.family': rules.OneOf(FAMILIES),
    'train.compute_dtype': rules.OneOf(tuple(COMPUTE_DTYPES)),
}


def compute_dtype(config):
  """The jnp dtype named by config.train.compute_dtype (default float32)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return jnp.dtype(COMPUTE_DTYPES[config.train.get('compute_dtype', 'float32')])


def has_encoder(family) -> bool:
  """Whether a family module encodes: defines encode and reconstruct (the VAE
  and the VAE-GAN)."""
  return hasattr(family, 'encode') and hasattr(family, 'reconstruct')


def has_likelihood(family) -> bool:
  """Whether the family defines p(x) through the VAE's ELBO terms (the VAE;
  the VAE-GAN's decoder is trained adversarially and has no likelihood)."""
  return hasattr(family, 'elbo_terms') and hasattr(family, 'log_likelihood')


def get(name: str):
  """Returns the family module `vaegan_jax.families.<name>`."""
  if name not in FAMILIES:
    raise UserError(f'Unknown model family {name!r}; known: {", ".join(FAMILIES)}.')
  return importlib.import_module(f'vaegan_jax.families.{name}')
