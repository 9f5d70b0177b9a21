"""The VAE family: ELBO training of a convolutional VAE.

ELBO(x) = E_q(z|x)[log p(x|z)] - KL(q(z|x) || N(0, I))   (Kingma & Welling 2014)
The training loss is -(E_q[log p(x|z)] - β_t KL) with β_t the linearly warmed-up
KL weight (β-VAE, Higgins et al. 2017; warm-up, Bowman et al. 2016). Reported
`elbo` always uses β = 1, so it is a bound on log p(x) in nats per image.
"""

import jax
import jax.numpy as jnp

from vaegan_jax import families
from vaegan_jax import input_pipeline
from vaegan_jax import objectives
from vaegan_jax import state as state_lib
from vaegan_jax.models import vae as vae_models

CONSOLE_METRICS = ("loss", "elbo", "recon", "kl")
LIKELIHOODS = ('bernoulli', 'gaussian')  # config.vae.likelihood; see log_likelihood.

# Purposes for step keys (state_lib.step_key).
_Z = 0


def compute_dtype(config):
  return families.compute_dtype(config)


def models(config):
  """(encoder, decoder) Flax modules for `config`."""
  m = config.model
  dtype = compute_dtype(config)
  kernel = m.get('kernel_size', 4)  # Optional keys: configs/bench/convvae28.py.
  encoder = vae_models.Encoder(latent_dim=m.latent_dim, width=m.width,
                               hidden=m.hidden, dtype=dtype, conv_impl=m.conv_impl,
                               kernel_size=kernel)
  decoder = vae_models.Decoder(
      image_shape=input_pipeline.image_shape(config), width=m.width,
      hidden=m.get('decoder_hidden', m.hidden), dtype=dtype, conv_impl=m.conv_impl,
      kernel_size=kernel,
      learn_scale=config.vae.likelihood == 'gaussian' and config.vae.learn_scale)
  return encoder, decoder


def optimizer(config):
  return state_lib.adam(config.optim)


def init_state(config, key) -> state_lib.TrainState:
  encoder, decoder = models(config)
  k_enc, k_dec = jax.random.split(jax.random.fold_in(key, 1))
  x = jnp.zeros((1, *input_pipeline.image_shape(config)), jnp.float32)
  z = jnp.zeros((1, config.model.latent_dim), jnp.float32)
  params = {'encoder': encoder.init(k_enc, x)['params'],
            'decoder': decoder.init(k_dec, z)['params']}
  return state_lib.TrainState(
      step=jnp.zeros((), jnp.int32), key=key, params=params, batch_stats={},
      opt_state={'vae': optimizer(config).init(params)}, ema_params={})


def log_likelihood(config, decoder_params, out, x):
  """log p(x|z) per image (B,) from decoder output `out`."""
  if config.vae.likelihood == 'bernoulli':
    return objectives.bernoulli_log_likelihood(out, x)
  if config.vae.likelihood == 'gaussian':
    log_scale = (decoder_params['log_scale'] if config.vae.learn_scale
                 else jnp.log(config.vae.gaussian_scale))
    return objectives.gaussian_log_likelihood(x, out, log_scale)
  raise ValueError(f'Unknown likelihood {config.vae.likelihood!r}')


def elbo_terms(config, params, x, key):
  """Per-image (log p(x|z), KL), each (B,), with one z ~ q(z|x)."""
  encoder, decoder = models(config)
  mean, logvar = encoder.apply({'params': params['encoder']}, x)
  z = objectives.reparameterize(key, mean, logvar)
  out = decoder.apply({'params': params['decoder']}, z)
  return log_likelihood(config, params['decoder'], out, x), objectives.gaussian_kl(mean, logvar)


def train_step(config, state, batch):
  x = batch['image']
  beta = objectives.kl_weight(state.step, config.vae.beta, config.vae.kl_warmup_steps)

  def loss_fn(params):
    recon, kl = elbo_terms(config, params, x, state_lib.step_key(state, _Z))
    loss = -jnp.mean(recon - beta * kl)
    return loss, (jnp.mean(recon), jnp.mean(kl))

  (loss, (recon, kl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  params, opt_state = state_lib.update(optimizer(config), grads,
                                       state.opt_state['vae'], state.params)
  metrics = {'loss': loss, 'elbo': recon - kl, 'recon': recon, 'kl': kl,
             'beta': beta, 'grad_norm': state_lib.global_norm(grads),
             'param_norm': state_lib.global_norm(params)}
  return state.replace(step=state.step + 1, params=params,
                       opt_state={'vae': opt_state}), metrics


def eval_step(config, state, batch):
  """Sums over the real rows of a test batch: elbo, recon, kl."""
  key = jax.random.fold_in(state.key, 2**31 - 1)
  recon, kl = elbo_terms(config, state.params, batch['image'], key)
  mask = batch['mask']
  return {'elbo': jnp.sum(mask * (recon - kl)), 'recon': jnp.sum(mask * recon),
          'kl': jnp.sum(mask * kl)}


def to_images(config, out):
  """Decoder output -> images in [0, 1]: the likelihood's mean."""
  if config.vae.likelihood == 'bernoulli':
    return jax.nn.sigmoid(out)
  return jnp.clip(out, 0.0, 1.0)


def encode(config, state, x):
  """x (B, H, W, C) in [0, 1] -> (mean, logvar), each (B, Z)."""
  encoder, _ = models(config)
  return encoder.apply({'params': state.params['encoder']}, x)


def decode(config, state, z):
  """z (B, Z) -> images (B, H, W, C) in [0, 1] (the likelihood's mean)."""
  _, decoder = models(config)
  return to_images(config, decoder.apply({'params': state.params['decoder']}, z))


def reconstruct(config, state, x):
  """Decoded posterior mean: x -> images in [0, 1]."""
  return decode(config, state, encode(config, state, x)[0])


def latent_dim(config):
  return config.model.latent_dim


def sample(config, state, key, n):
  """n prior samples, images (n, H, W, C) in [0, 1]."""
  return decode(config, state, jax.random.normal(key, (n, latent_dim(config))))


def grid_panels(config, state, key, images):
  """Prior samples beside test images and their reconstructions."""
  n = images.shape[0]
  return [sample(config, state, key, n), images, reconstruct(config, state, images)]
