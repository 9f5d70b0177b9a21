"""Class conditioning shared by the families (`config.model.conditional`).

A conditional model takes the batch's 'label' (int32 (B,)) in its train and
eval steps, and an optional `labels` argument in sample / decode / encode /
reconstruct; the unconditional models ignore that argument. The layers live
in `vaegan_jax.models.conditioning`.

Configs made before conditioning existed have no `model.conditional` key; it
reads as False.
"""

import jax
import jax.numpy as jnp

from vaegan_jax import input_pipeline
from vaegan_jax import rules
from vaegan_jax.errors import UserError

_LABEL_KEY = 0x1ABE1  # Purpose of the key of sampled labels (folded into the z key).

RULES = {'model.conditional': rules.Bool()}  # Needs a labelled dataset (needs_labels).


def needs_labels(config, flat):
  """A class-conditional model needs a dataset with class labels."""
  if not flat.get('model.conditional'):
    return
  if not input_pipeline.get_spec(config.data.name).num_classes:
    raise rules.ConfigError('model.conditional', True, f'needs class labels and dataset '
                            f'{config.data.name!r} has none',
                            'False for this dataset, or a labelled dataset')


def aux_needs_conditional(config, flat):
  del config
  if flat.get('gan.aux_weight', 0) > 0 and not flat.get('model.conditional'):
    raise rules.ConfigError('gan.aux_weight', flat['gan.aux_weight'],
                            'needs model.conditional=True (the ACGAN class loss)',
                            '0 for an unconditional GAN')


def conditional_arch(config, flat):
  del config
  if flat.get('model.conditional') and flat.get('model.arch', 'tutorial') != 'tutorial':
    raise rules.ConfigError('model.arch', flat['model.arch'], 'has no class-conditional version',
                            "'tutorial' with model.conditional=True")


# What every family checks of a conditional model (its `check_config`).
CROSS_RULES = (needs_labels, aux_needs_conditional, conditional_arch)


def autoencoder_panels(config, sample, reconstruct, state, key, images, labels=None):
  """Prior samples | test images | their reconstructions: the grid of the
  families with an encoder (a conditional model samples classes 0, 1, … in
  turn and reconstructs with `labels`). `sample`, `reconstruct`: the family's."""
  n = images.shape[0]
  k = num_classes(config)
  return [sample(config, state, key, n, jnp.arange(n) % k if k else None), images,
          reconstruct(config, state, images, labels)]


def is_conditional(config) -> bool:
  return bool(config.model.get('conditional', False))


def num_classes(config) -> int:
  """K of a conditional config, 0 of an unconditional one.

  Raises:
    UserError: conditional=True on a dataset without class labels.
  """
  if not is_conditional(config):
    return 0
  name = config.data.name
  k = int(input_pipeline.get_spec(name).num_classes)
  if k <= 0:
    raise UserError(f'config.model.conditional=True needs class labels and {name} has '
                    'none; set model.conditional=False or pick a labelled dataset.')
  return k


def sample_labels(key, n: int, k: int):
  """n labels drawn uniformly from [0, k), from a purpose of `key`."""
  return jax.random.randint(jax.random.fold_in(key, _LABEL_KEY), (n,), 0, k, jnp.int32)


def labels_for(config, key, n: int, labels=None):
  """The labels (n,) int32 of n samples, or None for an unconditional config.

  Args:
    labels: None (drawn uniformly from `key`), an int (all n of that class)
      or an int array (n,).
  """
  k = num_classes(config)
  if not k:
    return None
  if labels is None:
    return sample_labels(key, n, k)
  return jnp.broadcast_to(jnp.asarray(labels, jnp.int32), (n,))


def need_labels(config, labels, what: str):
  """`labels` as int32, or a ValueError if a conditional model got none."""
  if not num_classes(config):
    return None
  if labels is None:
    raise ValueError(f'The class-conditional {config.model.family} model needs labels '
                     f'to {what}.')
  return jnp.asarray(labels, jnp.int32)
