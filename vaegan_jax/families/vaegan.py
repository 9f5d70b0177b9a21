"""The VAE/GAN family (Larsen, Sønderby, Larochelle & Winther, ICML 2016).

A VAE whose decoder is also a GAN generator, with the reconstruction error
measured in the l-th layer of the GAN discriminator instead of in pixels:

  L_prior  = KL(q(z|x) || N(0, I))                                  `kl`
  L_llike  = -E_q(z|x)[log N(Dis_l(x) | Dis_l(Dec(z)), σ² I)]       `feature_recon`
             (up to its constant: ½ ||Dis_l(x) - Dis_l(x̃)||² / σ², summed
             over the features, σ = config.vaegan.feature_std, 1 in the paper)
  L_GAN    = log Dis(x) + log(1 - Dis(Dec(z))) + log(1 - Dis(Dec(z_p)))
             with z ~ q(z|x) (reconstructions) and z_p ~ N(0, I) (samples).

Algorithm 1 of the paper gives each network its own loss:

  θ_Enc ← -∇_Enc (L_prior + L_llike)
  θ_Dec ← -∇_Dec (γ L_llike - L_GAN)
  θ_Dis ← -∇_Dis (-L_GAN)

`network_losses(config)` is that table; `network_grads` runs the three
networks forward once and pulls back each network's own loss to its own
parameters only (three VJPs of one forward pass), so the GAN loss never
reaches the encoder and the reconstruction loss never reaches the
discriminator, although both depend on them (tests/test_vaegan.py compares
every network's gradient with the gradients of every term). Each network has
its own optimiser (config.optim.enc / dec / dis) and all three update from
the same forward pass, as in Algorithm 1.

The GAN terms use `objectives.gan_d_loss` / `gan_g_loss` with
config.vaegan.gan_loss:
  `d_loss` = gan_d_loss(kind, Dis(x), [Dis(x̃), Dis(x_p)]): the fakes are an
    equal mixture of reconstructions and prior samples weighted like the real
    batch, as `real_vs_gen_weight=0.5` in the authors' code; for the
    cross-entropy kinds this is -L_GAN with its two fake terms weighted ½.
  `g_loss` = gan_g_loss(kind, [Dis(x̃), Dis(x_p)]): the decoder's share of
    -L_GAN. With 'minimax' it is the paper's literal E[log(1 - Dis(·))]; the
    default 'non_saturating' uses -E[log Dis(·)] instead, which has the same
    fixed point and strong gradients while the fakes are easy to spot
    (Goodfellow et al. 2014, §3), so `decoder loss = γ L_llike + g_loss`.

Networks: the VAE encoder (models/vae.py), the DCGAN generator as decoder
(models/gan.py, BatchNorm; reconstructions and prior samples share its batch)
and models/vaegan.py's discriminator. Training metrics: the four terms, each
network's loss, gradient and parameter norms, `recon_mse` (pixels in [0, 1])
and D's mean probabilities `d_real` / `d_fake`.

With config.model.conditional both halves are conditioned on the batch's
label y: the CVAE encoder q(z|x, y), the DCGAN decoder with a label embedding
at its input, and the projection head on the discriminator (models/
vaegan.py). Reconstructions, prior samples and real images all carry y.
"""

import jax
import jax.numpy as jnp

from vaegan_jax import families
from vaegan_jax import input_pipeline
from vaegan_jax import objectives
from vaegan_jax import rules
from vaegan_jax import state as state_lib
from vaegan_jax.families import conditional
from vaegan_jax.models import gan as gan_models
from vaegan_jax.models import vae as vae_models
from vaegan_jax.models import vaegan as vaegan_models

CONSOLE_METRICS = ('kl', 'feature_recon', 'recon_mse', 'd_loss', 'g_loss')
# Headline metrics of an evaluation on the console (all go to metrics.jsonl).
EVAL_CONSOLE_METRICS = ('fid', 'kid', 'precision', 'recall', 'psnr')
GRID_TITLES = ('prior samples', 'test images', 'reconstructions')  # The panels of grid_panels.
NETWORKS = ('encoder', 'decoder', 'discriminator')

# Purpose of the step key (state_lib.step_key); `forward` folds in _EPS / _Z.
_FORWARD = 0
_EPS, _Z, _DROPOUT = 0, 1, 2


def network_losses(config) -> dict:
  """Algorithm 1: network -> {loss term: weight}; its loss is the weighted sum."""
  return {
      'encoder': {'kl': 1.0, 'feature_recon': 1.0},                     # L_prior + L_llike
      'decoder': {'feature_recon': config.vaegan.gamma, 'g_loss': 1.0},  # γ L_llike - L_GAN
      'discriminator': {'d_loss': 1.0},                                  # -L_GAN
  }


RULES = {
    'model.latent_dim': rules.POSITIVE,
    'model.enc_width': rules.POSITIVE,
    'model.enc_hidden': rules.POSITIVE,
    'model.dec_width_mult': rules.RATE,
    'model.dis_width': rules.POSITIVE,
    'model.dis_kernel': rules.POSITIVE,
    'model.dis_dropout': rules.PROBABILITY,
    'vaegan.gamma': rules.NONNEG,
    'vaegan.feature_std': rules.RATE,
    'vaegan.gan_loss': rules.OneOf(objectives.GAN_LOSSES),
}


def check_config(config):
  """ConfigError (a UserError) for settings that cannot work: the rules of
  this family's keys and the conditional-model rules (`rules.check`)."""
  rules.check(config, {**RULES, **conditional.RULES}, conditional.CROSS_RULES)


def compute_dtype(config):
  return families.compute_dtype(config)


def models(config):
  """(encoder, decoder, discriminator) Flax modules for `config`."""
  m, dtype = config.model, compute_dtype(config)
  k = conditional.num_classes(config)
  encoder = vae_models.Encoder(latent_dim=m.latent_dim, width=m.enc_width,
                               hidden=m.enc_hidden, dtype=dtype, conv_impl=m.conv_impl,
                               num_classes=k)
  decoder = gan_models.Generator(image_shape=input_pipeline.image_shape(config),
                                 width_mult=m.dec_width_mult, dtype=dtype,
                                 conv_impl=m.conv_impl, num_classes=k)
  discriminator = vaegan_models.Discriminator(width=m.dis_width, kernel=m.dis_kernel,
                                              dropout=m.dis_dropout, dtype=dtype,
                                              conv_impl=m.conv_impl, num_classes=k)
  return encoder, decoder, discriminator


def optimizers(config) -> dict:
  """One Adam per network, from config.optim.enc / dec / dis."""
  o = config.optim
  return {'encoder': state_lib.adam(o.enc), 'decoder': state_lib.adam(o.dec),
          'discriminator': state_lib.adam(o.dis)}


def init_state(config, key) -> state_lib.TrainState:
  check_config(config)
  encoder, decoder, discriminator = models(config)
  k_enc, k_dec, k_dis = jax.random.split(jax.random.fold_in(key, 1), 3)
  x = jnp.zeros((1, *input_pipeline.image_shape(config)), jnp.float32)
  z = jnp.zeros((1, config.model.latent_dim), jnp.float32)
  y = jnp.zeros((1,), jnp.int32) if conditional.num_classes(config) else None
  dec_vars = decoder.init(k_dec, z, labels=y)
  params = {'encoder': encoder.init(k_enc, x, y)['params'],
            'decoder': dec_vars['params'],
            'discriminator': discriminator.init(k_dis, x, labels=y)['params']}
  batch_stats = {'decoder': dec_vars['batch_stats']}
  opt_state = {n: tx.init(params[n]) for n, tx in optimizers(config).items()}
  return state_lib.TrainState(
      step=jnp.zeros((), jnp.int32), key=key, params=params, batch_stats=batch_stats,
      opt_state=opt_state, ema_params={})


def to_model_range(x):
  """Images in [0, 1] -> [-1, 1], the range of the decoder and discriminator."""
  return 2.0 * x - 1.0


def to_images(y):
  """[-1, 1] -> [0, 1]."""
  return jnp.clip(0.5 * (y + 1.0), 0.0, 1.0)


def feature_nll(config, real_features, fake_features):
  """-log N(Dis_l(x) | Dis_l(x̃), σ² I) up to its constant, per image (B,)."""
  d = (real_features - fake_features).reshape(real_features.shape[0], -1)
  return 0.5 * jnp.sum(jnp.square(d), axis=-1) / config.vaegan.feature_std**2


def forward(config, params, batch_stats, x, key, labels=None):
  """One training forward pass of all three networks (BatchNorm in train mode).

  Args:
    config: the run config.
    params: {'encoder', 'decoder', 'discriminator'} params.
    batch_stats: {'decoder': BatchNorm statistics}.
    x: (B, H, W, C) images in [0, 1].
    key: PRNG key of this step.
    labels: (B,) labels of x; used (and needed) by a conditional model only.

  Returns:
    (terms, aux): terms = {'kl', 'feature_recon', 'd_loss', 'g_loss'}, scalar
    batch means; aux = {'batch_stats': updated statistics, 'recon': x̃ (B, H,
    W, C) in [-1, 1], 'real_logits' (B,), 'fake_logits' (2B,)}.
  """
  encoder, decoder, discriminator = models(config)
  n = x.shape[0]
  labels = conditional.need_labels(config, labels, 'train')
  rep2 = lambda k: None if labels is None else jnp.tile(labels, k)  # pylint: disable=unnecessary-lambda-assignment
  mean, logvar = encoder.apply({'params': params['encoder']}, x, labels)
  z = objectives.reparameterize(jax.random.fold_in(key, _EPS), mean, logvar)
  z_p = jax.random.normal(jax.random.fold_in(key, _Z), z.shape, z.dtype)
  # Reconstructions and prior samples share one decoder batch (one set of
  # BatchNorm statistics); real images, reconstructions and samples share one
  # discriminator batch.
  out, dec_vars = decoder.apply(
      {'params': params['decoder'], 'batch_stats': batch_stats['decoder']},
      jnp.concatenate([z, z_p]), train=True, labels=rep2(2), mutable=['batch_stats'])
  logits, features = discriminator.apply(
      {'params': params['discriminator']}, jnp.concatenate([to_model_range(x), out]),
      train=True, labels=rep2(3), rngs={'dropout': jax.random.fold_in(key, _DROPOUT)})
  real_logits, fake_logits = logits[:n], logits[n:]
  kind = config.vaegan.gan_loss
  terms = {
      'kl': jnp.mean(objectives.gaussian_kl(mean, logvar)),
      'feature_recon': jnp.mean(feature_nll(config, features[:n], features[n:2 * n])),
      'd_loss': objectives.gan_d_loss(kind, real_logits, fake_logits),
      'g_loss': objectives.gan_g_loss(kind, fake_logits),
  }
  aux = {'batch_stats': {'decoder': dec_vars['batch_stats']},
         'recon': out[:n], 'real_logits': real_logits, 'fake_logits': fake_logits}
  return terms, aux


def network_loss(config, name, terms):
  """The loss of network `name` (Algorithm 1) from the forward pass' terms."""
  return sum(w * terms[t] for t, w in network_losses(config)[name].items())


def network_grads(config, params, batch_stats, x, key, labels=None):
  """Each network's gradient of its own loss w.r.t. its own params only.

  One forward pass; for each network, the VJP with its loss weights as the
  cotangent of the terms, keeping only that network's slot.

  Returns:
    (grads, terms, aux): grads = {network: grad pytree}; terms, aux as in
    `forward`.
  """
  terms, vjp_fn, aux = jax.vjp(
      lambda p: forward(config, p, batch_stats, x, key, labels), params, has_aux=True)
  grads = {}
  for name, weights in network_losses(config).items():
    cotangent = {t: jnp.asarray(weights.get(t, 0.0), v.dtype) for t, v in terms.items()}
    grads[name] = vjp_fn(cotangent)[0][name]
  return grads, terms, aux


def train_step(config, state, batch):
  x = batch['image']
  grads, terms, aux = network_grads(config, state.params, state.batch_stats, x,
                                    state_lib.step_key(state, _FORWARD), batch.get('label'))
  params, opt_state = {}, {}
  for name, tx in optimizers(config).items():
    params[name], opt_state[name] = state_lib.update(
        tx, grads[name], state.opt_state[name], state.params[name])
  metrics = dict(terms)
  for name in NETWORKS:
    metrics[f'{name}_loss'] = network_loss(config, name, terms)
    metrics[f'grad_norm/{name}'] = state_lib.global_norm(grads[name])
    metrics[f'param_norm/{name}'] = state_lib.global_norm(params[name])
  metrics['recon_mse'] = jnp.mean(jnp.square(to_images(aux['recon']) - x))
  metrics['d_real'] = jnp.mean(jax.nn.sigmoid(aux['real_logits']))
  metrics['d_fake'] = jnp.mean(jax.nn.sigmoid(aux['fake_logits']))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                       batch_stats=aux['batch_stats']), metrics


def eval_step(config, state, batch):
  """Sums over the real rows of a test batch: kl, recon_mse, feature_recon.

  Reconstructions decode the posterior mean; BatchNorm uses running averages.
  `recon_mse` is the per-image mean squared pixel error in [0, 1].
  """
  x, mask = batch['image'], batch['mask']
  labels = batch.get('label') if conditional.num_classes(config) else None
  _, _, discriminator = models(config)
  mean, logvar = encode(config, state, x, labels)
  recon = decode(config, state, mean, labels)
  dis = lambda images: discriminator.apply(  # pylint: disable=unnecessary-lambda-assignment
      {'params': state.params['discriminator']}, to_model_range(images), labels=labels)[1]
  mse = jnp.mean(jnp.square(recon - x).reshape(x.shape[0], -1), axis=-1)
  return {'kl': jnp.sum(mask * objectives.gaussian_kl(mean, logvar)),
          'recon_mse': jnp.sum(mask * mse),
          'feature_recon': jnp.sum(mask * feature_nll(config, dis(x), dis(recon)))}


def encode(config, state, x, labels=None):
  """x (B, H, W, C) in [0, 1] (labels (B,) if conditional) -> (mean, logvar), each (B, Z)."""
  encoder, _, _ = models(config)
  labels = conditional.need_labels(config, labels, 'encode')
  return encoder.apply({'params': state.params['encoder']}, x, labels)


def decode(config, state, z, labels=None):
  """z (B, Z) -> images (B, H, W, C) in [0, 1]; BatchNorm on running averages.
  A conditional decoder needs `labels` ((B,) or an int)."""
  _, decoder, _ = models(config)
  labels = conditional.need_labels(config, labels, 'decode')
  if labels is not None:
    labels = jnp.broadcast_to(labels, z.shape[:1])
  return to_images(decoder.apply({'params': state.params['decoder'],
                                  'batch_stats': state.batch_stats['decoder']}, z,
                                 labels=labels))


def reconstruct(config, state, x, labels=None):
  """Decoded posterior mean: x -> images in [0, 1] (with `labels` if conditional)."""
  return decode(config, state, encode(config, state, x, labels)[0], labels)


def latent_dim(config):
  return config.model.latent_dim


def sample(config, state, key, n, labels=None):
  """n prior samples, images (n, H, W, C) in [0, 1]; a conditional model's of
  `labels` (an int or (n,)), drawn uniformly when None."""
  return decode(config, state, jax.random.normal(key, (n, latent_dim(config))),
                conditional.labels_for(config, key, n, labels))


def grid_panels(config, state, key, images, labels=None):
  """Prior samples | test images | their reconstructions
  (`conditional.autoencoder_panels`)."""
  return conditional.autoencoder_panels(config, sample, reconstruct, state, key, images, labels)
