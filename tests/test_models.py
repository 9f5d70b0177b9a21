"""Output shapes of every family's networks for 28x28x1, 32x32x3 and 64x64x3."""

import functools

import jax
import numpy as np
import pytest

from conftest import load_config
from vaegan_jax import families

SHAPES = {'mnist': (28, 28, 1), 'cifar10': (32, 32, 3), 'celeb_a': (64, 64, 3)}


@pytest.mark.parametrize('family', ['vae', 'gan', 'vaegan'])
@pytest.mark.parametrize('dataset', list(SHAPES))
def test_samples_have_the_dataset_shape_and_range(family, dataset):
  config = load_config(family, 'smoke')
  config.data.name = dataset
  module = families.get(family)
  state = jax.eval_shape(functools.partial(module.init_state, config), jax.random.PRNGKey(0))
  out = jax.eval_shape(functools.partial(module.sample, config, n=3), state,
                       jax.random.PRNGKey(1))
  assert out.shape == (3, *SHAPES[dataset]) and out.dtype == np.float32


@pytest.mark.parametrize('dataset', list(SHAPES))
def test_vae_encoder_and_decoder_shapes(dataset):
  config = load_config('vae', 'smoke')
  config.data.name = dataset
  vae = families.get('vae')
  state = vae.init_state(config, jax.random.PRNGKey(0))
  x = np.random.RandomState(0).rand(2, *SHAPES[dataset]).astype(np.float32)
  mean, logvar = vae.encode(config, state, x)
  assert mean.shape == logvar.shape == (2, config.model.latent_dim)
  recon = vae.reconstruct(config, state, x)
  assert recon.shape == x.shape
  assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0
