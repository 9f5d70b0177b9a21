"""The VAE family: ELBO training of a convolutional VAE.

ELBO(x) = E_q(z|x)[log p(x|z)] - KL(q(z|x) || N(0, I))   (Kingma & Welling 2014)
The training loss is -(E_q[log p(x|z)] - β_t KL) with β_t the linearly warmed-up
KL weight (β-VAE, Higgins et al. 2017; warm-up, Bowman et al. 2016). Reported
`elbo` always uses β = 1, so it is a bound on log p(x) in nats per image.

With config.model.conditional this is the CVAE (Sohn, Lee & Yan 2015): the
label enters the encoder and the decoder, q(z|x, y) and p(x|z, y), and the
ELBO bounds log p(x|y):
  ELBO(x|y) = E_q(z|x,y)[log p(x|z, y)] - KL(q(z|x, y) || N(0, I)).
The batch's 'label' is used in training and evaluation; sample / decode take
`labels` (drawn uniformly when not given), encode / reconstruct require them.
"""

import jax
import jax.numpy as jnp

from vaegan_jax import families
from vaegan_jax import input_pipeline
from vaegan_jax import objectives
from vaegan_jax import rules
from vaegan_jax import state as state_lib
from vaegan_jax.families import conditional
from vaegan_jax.models import vae as vae_models

CONSOLE_METRICS = ("loss", "elbo", "recon", "kl")
# Headline metrics of an evaluation on the console (all go to metrics.jsonl).
EVAL_CONSOLE_METRICS = ('elbo', 'nll_nats', 'fid', 'kid', 'psnr')
GRID_TITLES = ('prior samples', 'test images', 'reconstructions')  # The panels of grid_panels.
LIKELIHOODS = ('bernoulli', 'gaussian')  # config.vae.likelihood; see log_likelihood.

RULES = {
    'model.latent_dim': rules.POSITIVE,
    'model.width': rules.POSITIVE,
    'model.hidden': rules.POSITIVE,
    'model.decoder_hidden': rules.COUNT,      # 0 = no Dense between z and the conv stack.
    'model.kernel_size': rules.POSITIVE,
    'vae.likelihood': rules.OneOf(LIKELIHOODS),
    'vae.gaussian_scale': rules.RATE,
    'vae.learn_scale': rules.Bool(),
    'vae.beta': rules.NONNEG,
    'vae.kl_warmup_steps': rules.COUNT,
}

# Purposes for step keys (state_lib.step_key).
_Z = 0


def compute_dtype(config):
  return families.compute_dtype(config)


def models(config):
  """(encoder, decoder) Flax modules for `config`."""
  m = config.model
  dtype = compute_dtype(config)
  kernel = m.get('kernel_size', 4)  # Optional keys: configs/bench/convvae28.py.
  k = conditional.num_classes(config)
  encoder = vae_models.Encoder(latent_dim=m.latent_dim, width=m.width,
                               hidden=m.hidden, dtype=dtype, conv_impl=m.conv_impl,
                               kernel_size=kernel, num_classes=k)
  decoder = vae_models.Decoder(
      image_shape=input_pipeline.image_shape(config), width=m.width,
      hidden=m.get('decoder_hidden', m.hidden), dtype=dtype, conv_impl=m.conv_impl,
      kernel_size=kernel, num_classes=k,
      learn_scale=config.vae.likelihood == 'gaussian' and config.vae.learn_scale)
  return encoder, decoder


def optimizer(config):
  return state_lib.adam(config.optim)


def check_config(config):
  """ConfigError (a UserError) for settings that cannot work: the rules of
  this family's keys and the conditional-model rules (`rules.check`)."""
  rules.check(config, {**RULES, **conditional.RULES}, conditional.CROSS_RULES)


def init_state(config, key) -> state_lib.TrainState:
  check_config(config)
  encoder, decoder = models(config)
  k_enc, k_dec = jax.random.split(jax.random.fold_in(key, 1))
  x = jnp.zeros((1, *input_pipeline.image_shape(config)), jnp.float32)
  z = jnp.zeros((1, config.model.latent_dim), jnp.float32)
  y = jnp.zeros((1,), jnp.int32) if conditional.num_classes(config) else None
  params = {'encoder': encoder.init(k_enc, x, y)['params'],
            'decoder': decoder.init(k_dec, z, y)['params']}
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


def elbo_terms(config, params, x, key, labels=None):
  """Per-image (log p(x|z), KL), each (B,), with one z ~ q(z|x); labels (B,)
  condition both networks of the CVAE (ignored otherwise)."""
  encoder, decoder = models(config)
  labels = conditional.need_labels(config, labels, 'compute its ELBO')
  mean, logvar = encoder.apply({'params': params['encoder']}, x, labels)
  z = objectives.reparameterize(key, mean, logvar)
  out = decoder.apply({'params': params['decoder']}, z, labels)
  return log_likelihood(config, params['decoder'], out, x), objectives.gaussian_kl(mean, logvar)


def train_step(config, state, batch):
  x = batch['image']
  beta = objectives.kl_weight(state.step, config.vae.beta, config.vae.kl_warmup_steps)

  def loss_fn(params):
    recon, kl = elbo_terms(config, params, x, state_lib.step_key(state, _Z),
                           batch.get('label'))
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
  recon, kl = elbo_terms(config, state.params, batch['image'], key, batch.get('label'))
  mask = batch['mask']
  return {'elbo': jnp.sum(mask * (recon - kl)), 'recon': jnp.sum(mask * recon),
          'kl': jnp.sum(mask * kl)}


def to_images(config, out):
  """Decoder output -> images in [0, 1]: the likelihood's mean."""
  if config.vae.likelihood == 'bernoulli':
    return jax.nn.sigmoid(out)
  return jnp.clip(out, 0.0, 1.0)


def encode(config, state, x, labels=None):
  """x (B, H, W, C) in [0, 1] (labels (B,) for the CVAE) -> (mean, logvar), each (B, Z)."""
  encoder, _ = models(config)
  labels = conditional.need_labels(config, labels, 'encode')
  return encoder.apply({'params': state.params['encoder']}, x, labels)


def decode(config, state, z, labels=None):
  """z (B, Z) -> images (B, H, W, C) in [0, 1] (the likelihood's mean);
  labels (B,) or an int for the CVAE (needed there)."""
  _, decoder = models(config)
  labels = conditional.need_labels(config, labels, 'decode')
  if labels is not None:
    labels = jnp.broadcast_to(labels, z.shape[:1])
  return to_images(config, decoder.apply({'params': state.params['decoder']}, z, labels))


def reconstruct(config, state, x, labels=None):
  """Decoded posterior mean: x -> images in [0, 1] (the CVAE uses `labels` for both)."""
  return decode(config, state, encode(config, state, x, labels)[0], labels)


def latent_dim(config):
  return config.model.latent_dim


def sample(config, state, key, n, labels=None):
  """n prior samples, images (n, H, W, C) in [0, 1]; the CVAE's of `labels`
  (an int or (n,)), drawn uniformly when None."""
  return decode(config, state, jax.random.normal(key, (n, latent_dim(config))),
                conditional.labels_for(config, key, n, labels))


def grid_panels(config, state, key, images, labels=None):
  """Prior samples beside test images and their reconstructions
  (`conditional.autoencoder_panels`)."""
  return conditional.autoencoder_panels(config, sample, reconstruct, state, key, images, labels)
