"""Test-set likelihood of the VAE: ELBO and the importance-weighted bound.

With z_1..z_k ~ q(z|x) and log-weights
  log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x),
the ELBO is E[log w] and the IWAE bound (Burda, Grosse & Salakhutdinov 2016,
"Importance Weighted Autoencoders", eq. 8)
  L_k = E[log (1/k) Σ_i w_i]
satisfies ELBO = L_1 <= L_k <= L_{k+1} <= log p(x), so -L_k for a large k is
the usual estimate of -log p(x) (the "NLL" of VAE papers).

Units: nats per image, and bits per dimension = nats / (H·W·C · ln 2). Both
are of the decoder's density on pixels in [0, 1]: a Bernoulli likelihood
treats grey levels as probabilities (the MNIST convention), and a Gaussian
one is a density, so its bits/dim are not those of a discretised 8-bit model.
Numbers are comparable between models with the same likelihood.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from vaegan_jax import input_pipeline
from vaegan_jax import objectives
from vaegan_jax import progress
from vaegan_jax import sharding
from vaegan_jax.families import vae

_LOG_2PI = math.log(2.0 * math.pi)
_LIKELIHOOD_KEY = 0x1A3E  # Fixed purpose: the same z's at every evaluation.


def _std_normal_log_density(z):
  """log N(z | 0, I), summed over the last axis; (B, Z) -> (B,)."""
  return -0.5 * jnp.sum(jnp.square(z) + _LOG_2PI, axis=-1)


def _gaussian_log_density(z, mean, logvar):
  """log N(z | mean, exp(logvar)), summed over the last axis; (B, Z) -> (B,)."""
  return -0.5 * jnp.sum(jnp.square(z - mean) * jnp.exp(-logvar) + logvar + _LOG_2PI,
                        axis=-1)


def log_weights(config, params, x, key, k: int, chunk: int | None = None):
  """Importance log-weights log p(x, z_i) - log q(z_i|x) for k posterior draws.

  Args:
    config: the VAE config.
    params: {'encoder': …, 'decoder': …}.
    x: images (B, H, W, C) in [0, 1].
    key: PRNG key; draw i uses `split(key, k)[i]`.
    k: number of importance samples.
    chunk: draws decoded together (vmapped); default keeps chunk·B near 1024.

  Returns:
    float32 (k, B), nats.
  """
  encoder, decoder = vae.models(config)
  mean, logvar = encoder.apply({'params': params['encoder']}, x)

  def one(draw_key):
    z = objectives.reparameterize(draw_key, mean, logvar)
    out = decoder.apply({'params': params['decoder']}, z)
    log_px = vae.log_likelihood(config, params['decoder'], out, x)
    return log_px + _std_normal_log_density(z) - _gaussian_log_density(z, mean, logvar)

  chunk = chunk or max(1, min(k, 1024 // max(x.shape[0], 1)))
  return jax.lax.map(one, jax.random.split(key, k), batch_size=chunk)


def bounds(config, params, x, key, k: int, chunk: int | None = None):
  """Per-image ELBO and IWAE bound L_k from the same k draws.

  Returns:
    (elbo, iwae), each float32 (B,), nats; elbo = mean_i log w_i,
    iwae = logsumexp_i log w_i - log k.
  """
  lw = log_weights(config, params, x, key, k, chunk)
  return jnp.mean(lw, axis=0), jax.nn.logsumexp(lw, axis=0) - math.log(k)


def make_batch_fn(config, k: int, mesh=None):
  """Jitted (params, batch, key) -> (sum of ELBO, sum of L_k) over real rows.

  `batch` is as from `input_pipeline.eval_batches` ('image', 'mask'),
  split over the 'data' axis of `mesh`; build once, call per batch.
  """
  mesh = mesh or sharding.make_mesh()

  def fn(params, batch, key):
    elbo, iwae = bounds(config, params, batch['image'], key, k)
    mask = batch['mask']
    return jnp.sum(mask * elbo), jnp.sum(mask * iwae)

  return jax.jit(fn, out_shardings=sharding.replicated(mesh))


def evaluate(config, state, images, k: int = 100, key=None, batch_size: int = 100,
             mesh=None, batch_fn=None) -> dict:
  """ELBO and IWAE estimate of -log p(x) over a whole split.

  Batches are jitted and split over the 'data' axis of `mesh` like training
  batches; the last one is zero-padded and masked.

  Args:
    config: the VAE config.
    state: a VAE TrainState.
    images: uint8 (N, H, W, C), e.g. the test split.
    k: importance samples per image (k = 1 gives the ELBO).
    key: PRNG key; default a fixed key from `config.seed`, so repeated
      evaluations use the same draws.
    batch_size: images per jitted call; rounded up to a multiple of the
      device count.
    mesh: device mesh; default `sharding.make_mesh()`.
    batch_fn: `make_batch_fn(config, k, mesh)`, to reuse its compilation.

  Returns:
    {'elbo': mean ELBO (nats), 'nll_nats': -mean L_k (nats),
     'bits_per_dim': nll_nats / (H·W·C · ln 2)}, Python floats.
  """
  if k < 1:
    raise ValueError(f'k must be >= 1; got {k}.')
  mesh = mesh or sharding.make_mesh()
  n_dev = mesh.devices.size
  batch_size = -(-batch_size // n_dev) * n_dev
  if key is None:
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), _LIKELIHOOD_KEY)
  batch_fn = batch_fn or make_batch_fn(config, k, mesh)
  elbo_sum = iwae_sum = 0.0
  count = 0
  labels = np.zeros((len(images),), np.int32)
  with progress.bar(len(images), f'IWAE bound, k={k}', 'img') as bar:
    for i, (batch, valid) in enumerate(input_pipeline.eval_batches(
        images, labels, batch_size, sharding.data_sharding(mesh))):
      e, w = sharding.to_host(batch_fn(state.params, batch, jax.random.fold_in(key, i)))
      elbo_sum += float(e)
      iwae_sum += float(w)
      count += valid
      bar.update(valid)
  nll = -iwae_sum / count
  dims = math.prod(images.shape[1:])
  return {'elbo': elbo_sum / count, 'nll_nats': nll,
          'bits_per_dim': nll / (dims * math.log(2.0))}
