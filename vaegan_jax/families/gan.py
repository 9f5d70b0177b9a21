"""The GAN family: a DCGAN generator and discriminator with separate optimisers.

One `train_step` is one generator update preceded by `config.gan.d_steps`
discriminator updates. Every D update sees the whole real batch of the step
(the loop feeds one batch per step) against a fresh batch of fakes from fresh
z; reusing the batch keeps D's batch size equal to G's and the data order a
pure function of the step. The two updates are separate pure functions,
`d_update` and `g_update`: each changes only its own network's params,
optimiser state and collections.

Images enter as float32 in [0, 1] and are mapped to [-1, 1], G's tanh range.
Losses are `objectives.gan_d_loss` / `gan_g_loss` (`config.gan.loss`), plus
the WGAN-GP gradient penalty for 'wgan' and an optional R1 penalty.

Randomness: z, D's dropout and the penalty's interpolation weights come from
`state_lib.step_key(state, purpose)`, folded with the D update's index.

Class conditioning (config.model.conditional; models/gan.py): G(z, y) with a
label embedding at its input and D(x, y) with the projection head. Fakes take
the labels of the real batch of the step (the data's class frequencies); the
optional ACGAN loss (Odena et al. 2017, `config.gan.aux_weight` λ > 0) adds a
class-prediction head to D and
  d_loss += λ (CE(C(x), y) + CE(C(G(z, y)), y)),   g_loss += λ CE(C(G(z, y)), y)
(`objectives.class_cross_entropy`). With conditional=False none of this
exists and the step is unchanged.
"""

import jax
import jax.numpy as jnp

from vaegan_jax import families
from vaegan_jax import input_pipeline
from vaegan_jax import objectives
from vaegan_jax import rules
from vaegan_jax import state as state_lib
from vaegan_jax.families import conditional
from vaegan_jax.errors import UserError
from vaegan_jax.models import dcgan_literature
from vaegan_jax.models import gan as gan_models
from vaegan_jax.models import resnet

CONSOLE_METRICS = ('d_loss', 'g_loss', 'd_real', 'd_fake')
# Headline metrics of an evaluation on the console (all go to metrics.jsonl).
EVAL_CONSOLE_METRICS = ('fid', 'kid', 'precision', 'recall', 'modes_covered')
GRID_TITLES = ('samples', 'test images')  # The panels of grid_panels.

# Purposes for step keys (state_lib.step_key).
_D = 0          # Folded with the D update's index, then split per use.
_G_Z = 1
_G_DROPOUT = 2
_EVAL = 2**31 - 1

G, D = 'generator', 'discriminator'


def compute_dtype(config):
  return families.compute_dtype(config)


def check_config(config):
  """ConfigError (a UserError) for settings that cannot work: the rules of
  this family's keys and the conditional-model rules (`rules.check`)."""
  rules.check(config, {**RULES, **conditional.RULES}, conditional.CROSS_RULES)


def aux_weight(config) -> float:
  """λ of the ACGAN class loss; configs from before it read as 0."""
  return float(config.gan.get('aux_weight', 0.0))


ARCHS = ('tutorial', 'studiogan_dcgan', 'radford_dcgan', 'resnet')

RULES = {
    'model.latent_dim': rules.POSITIVE,
    'model.g_width_mult': rules.RATE,
    'model.d_width_mult': rules.RATE,
    'model.leaky_slope': rules.NONNEG,
    'model.d_dropout': rules.PROBABILITY,
    'model.spectral_norm': rules.Bool(),
    'model.arch': rules.OneOf(ARCHS),         # GAN networks (`models`).
    'model.g_conv_dim': rules.POSITIVE,       # arch='resnet' widths.
    'model.d_conv_dim': rules.POSITIVE,
    'gan.loss': rules.OneOf(objectives.GAN_LOSSES),
    'gan.d_steps': rules.POSITIVE,
    'gan.gp_weight': rules.NONNEG,
    'gan.r1_gamma': rules.NONNEG,
    'gan.ema_decay': rules.PROBABILITY,
    'gan.aux_weight': rules.NONNEG,           # ACGAN class loss; > 0 needs model.conditional.
}


def image_size_fits_architecture(config, flat):
  """The DCGAN generator / the VAE-GAN's decoder support only the image
  sizes of models/gan.py PLANS."""
  if flat.get('model.family') not in ('gan', 'vaegan'):
    return  # The VAE's conv stack adapts to any size.
  shape = input_pipeline.image_shape(config)
  try:
    gan_models.plan(shape)
  except UserError:
    key = 'data.image_size' if 'data.image_size' in flat else 'data.name'
    raise rules.ConfigError(
        key, flat[key], f'gives {shape[0]}x{shape[1]} images, which the DCGAN '
        f'{"generator" if flat["model.family"] == "gan" else "decoder"} does not support',
        f'a dataset of {", ".join(map(str, gan_models.PLANS))}-pixel square images') from None


def models(config):
  """(generator, discriminator) Flax modules for `config` (`config.model.arch`)."""
  m = config.model
  shape = input_pipeline.image_shape(config)
  dtype = compute_dtype(config)
  arch = m.get('arch', 'tutorial')
  if arch != 'tutorial':
    return _literature_models(m, arch, shape, dtype)
  k = conditional.num_classes(config)
  generator = gan_models.Generator(
      image_shape=shape, width_mult=m.g_width_mult, leaky_slope=m.leaky_slope,
      dtype=dtype, conv_impl=m.conv_impl, num_classes=k)
  discriminator = gan_models.Discriminator(
      image_shape=shape, width_mult=m.d_width_mult, leaky_slope=m.leaky_slope,
      dropout=m.d_dropout, spectral_norm=m.spectral_norm, dtype=dtype,
      conv_impl=m.conv_impl, num_classes=k, aux_classifier=k > 0 and aux_weight(config) > 0)
  return generator, discriminator


def _literature_models(m, arch, shape, dtype):
  """The published architectures of models/dcgan_literature.py and models/resnet.py."""
  impl = m.conv_impl
  if arch == 'studiogan_dcgan':
    return (dcgan_literature.StudioGANGenerator(shape, dtype, impl),
            dcgan_literature.StudioGANDiscriminator(shape, dtype, impl))
  if arch == 'radford_dcgan':
    return (dcgan_literature.RadfordGenerator(shape, dtype=dtype, conv_impl=impl),
            dcgan_literature.RadfordDiscriminator(shape, leaky_slope=m.leaky_slope, dtype=dtype,
                                                  conv_impl=impl))
  if arch == 'resnet':
    return (resnet.Generator(shape, m.get('g_conv_dim', 64), dtype, impl),
            resnet.Discriminator(shape, m.get('d_conv_dim', 64), m.spectral_norm, dtype, impl))
  raise UserError(f'Unknown config.model.arch {arch!r}; known: {", ".join(ARCHS)}.')


def optimizers(config):
  """{'generator': tx, 'discriminator': tx}: Adam from config.optim.g / .d."""
  return {G: state_lib.adam(config.optim.g), D: state_lib.adam(config.optim.d)}


def latent_dim(config):
  return config.model.latent_dim


def init_state(config, key) -> state_lib.TrainState:
  check_config(config)
  generator, discriminator = models(config)
  k_g, k_d = jax.random.split(jax.random.fold_in(key, 1))
  z = jnp.zeros((1, latent_dim(config)), jnp.float32)
  x = jnp.zeros((1, *input_pipeline.image_shape(config)), jnp.float32)
  y = jnp.zeros((1,), jnp.int32) if conditional.num_classes(config) else None
  g_vars = generator.init(k_g, z, **_labels_kw(y))
  d_vars = discriminator.init(k_d, x, **_labels_kw(y))
  params = {G: g_vars['params'], D: d_vars['params']}
  batch_stats = {G: g_vars['batch_stats']}
  if 'batch_stats' in d_vars:  # Spectral-norm power iteration vectors.
    batch_stats[D] = d_vars['batch_stats']
  txs = optimizers(config)
  return state_lib.TrainState(
      step=jnp.zeros((), jnp.int32), key=key, params=params, batch_stats=batch_stats,
      opt_state={name: txs[name].init(params[name]) for name in (G, D)},
      ema_params={G: params[G]} if config.gan.ema_decay > 0 else {})


# ---------------------------------------------------------------------------
# Network application.
# ---------------------------------------------------------------------------


def _labels_kw(labels):
  """Keyword arguments for a network call: only conditional networks take labels."""
  return {} if labels is None else {'labels': labels}


def generate(config, params, batch_stats, z, train: bool, labels=None):
  """G(z[, labels]) in [-1, 1]. Returns (images, new G batch_stats) when `train`."""
  generator, _ = models(config)
  variables = {'params': params, 'batch_stats': batch_stats}
  if train:
    images, new_vars = generator.apply(variables, z, train=True, **_labels_kw(labels),
                                       mutable=['batch_stats'])
    return images, new_vars['batch_stats']
  return generator.apply(variables, z, train=False, **_labels_kw(labels))


def split_logits(config, out):
  """D's output -> (logits (B,), ACGAN class logits (B, K) or None)."""
  if conditional.is_conditional(config) and aux_weight(config) > 0:
    return out
  return out, None


def discriminate(config, params, batch_stats, x, dropout_key=None, update_stats=False,
                 labels=None):
  """D's output for x in [-1, 1] (and labels (B,) of a conditional D);
  dropout on iff `dropout_key` is given.

  Returns:
    (out, new_batch_stats): out is the logits (B,), or (logits, class logits
    (B, K)) with the ACGAN head (`split_logits`); the second is `batch_stats`
    itself unless `update_stats` (spectral norm's power iteration advanced).
  """
  _, discriminator = models(config)
  variables = {'params': params}
  if batch_stats is not None:
    variables['batch_stats'] = batch_stats
  train = dropout_key is not None
  rngs = {'dropout': dropout_key} if train else {}
  kw = _labels_kw(labels)
  if train and getattr(discriminator, 'batch_norm', False):
    # BatchNorm in D (the literature DCGANs) updates its statistics whenever
    # it trains; they are kept only from D's own update.
    logits, new_vars = discriminator.apply(variables, x, train=True, update_stats=update_stats,
                                           rngs=rngs, mutable=['batch_stats'], **kw)
    return logits, new_vars['batch_stats'] if update_stats else batch_stats
  if update_stats and batch_stats is not None:
    logits, new_vars = discriminator.apply(variables, x, train=train, update_stats=True,
                                           rngs=rngs, mutable=['batch_stats'], **kw)
    return logits, new_vars['batch_stats']
  return discriminator.apply(variables, x, train=train, rngs=rngs, **kw), batch_stats


def scores(config, logits):
  """What `d_real` / `d_fake` report: D(x) as a probability for the
  cross-entropy losses, the raw score otherwise."""
  if config.gan.loss in ('non_saturating', 'minimax'):
    return jax.nn.sigmoid(logits)
  return logits


# ---------------------------------------------------------------------------
# The two updates and the train step.
# ---------------------------------------------------------------------------


def d_update(config, state, real, key, labels=None):
  """One discriminator update against fresh fakes.

  Changes only params / opt_state / batch_stats ['discriminator']; G's
  BatchNorm statistics from generating the fakes are discarded.

  Args:
    config: the run's config.
    state: TrainState.
    real: (B, H, W, C) real images in [-1, 1].
    key: PRNG key of this D update.
    labels: (B,) labels of `real` (and of the fakes) for a conditional model.

  Returns:
    (state, metrics) with d_loss, d_real, d_fake, d_grad_norm (+ gp, r1).
  """
  gc = config.gan
  k_z, k_drop, k_gp, k_pen = jax.random.split(key, 4)
  z = jax.random.normal(k_z, (real.shape[0], latent_dim(config)))
  fake, _ = generate(config, state.params[G], state.batch_stats[G], z, train=True,
                     labels=labels)
  fake = jax.lax.stop_gradient(fake)
  d_stats = state.batch_stats.get(D)
  n = real.shape[0]
  both = None if labels is None else jnp.concatenate([labels, labels])

  def loss_fn(d_params):
    if getattr(models(config)[1], 'batch_norm', False):
      # Separate real and fake batches, as the sources of BatchNorm Ds do.
      real_out, stats = discriminate(config, d_params, d_stats, real, k_drop,
                                     update_stats=True, labels=labels)
      fake_out, new_stats = discriminate(config, d_params, stats, fake, k_drop,
                                         update_stats=True, labels=labels)
      real_logits, real_class = split_logits(config, real_out)
      fake_logits, fake_class = split_logits(config, fake_out)
      class_logits = (None if real_class is None
                      else jnp.concatenate([real_class, fake_class]))
    else:
      out, new_stats = discriminate(config, d_params, d_stats,
                                    jnp.concatenate([real, fake]), k_drop,
                                    update_stats=True, labels=both)
      logits, class_logits = split_logits(config, out)
      real_logits, fake_logits = logits[:n], logits[n:]
    loss = objectives.gan_d_loss(gc.loss, real_logits, fake_logits)
    aux = {'d_real': jnp.mean(scores(config, real_logits)),
           'd_fake': jnp.mean(scores(config, fake_logits))}
    if class_logits is not None:
      aux['d_class_loss'] = objectives.class_cross_entropy(class_logits, both)
      loss += 2.0 * aux_weight(config) * aux['d_class_loss']  # Mean over 2B = (real + fake) / 2.
    d_fn = lambda x: split_logits(config, discriminate(  # pylint: disable=unnecessary-lambda-assignment
        config, d_params, new_stats, x, k_pen, labels=labels)[0])[0]
    if gc.loss == 'wgan' and gc.gp_weight > 0:
      aux['gp'] = objectives.gradient_penalty(d_fn, real, fake, k_gp)
      loss += gc.gp_weight * aux['gp']
    if gc.r1_gamma > 0:
      aux['r1'] = objectives.r1_penalty(d_fn, real)
      loss += 0.5 * gc.r1_gamma * aux['r1']
    aux['d_loss'] = loss
    return loss, (aux, new_stats)

  (_, (metrics, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params[D])
  params, opt_state = state_lib.update(optimizers(config)[D], grads,
                                       state.opt_state[D], state.params[D])
  metrics['d_grad_norm'] = state_lib.global_norm(grads)
  batch_stats = dict(state.batch_stats)
  if D in batch_stats:
    batch_stats[D] = new_stats
  return state.replace(params={**state.params, D: params},
                       opt_state={**state.opt_state, D: opt_state},
                       batch_stats=batch_stats), metrics


def g_update(config, state, batch_size, z_key, dropout_key, labels=None):
  """One generator update through the (fixed) discriminator.

  Changes only params / opt_state / batch_stats / ema_params ['generator'].
  D runs with dropout, as in training, and its spectral-norm vectors frozen.

  Returns:
    (state, metrics) with g_loss and g_grad_norm.
  """
  z = jax.random.normal(z_key, (batch_size, latent_dim(config)))

  def loss_fn(g_params):
    fake, g_stats = generate(config, g_params, state.batch_stats[G], z, train=True,
                             labels=labels)
    out, _ = discriminate(config, state.params[D], state.batch_stats.get(D), fake,
                          dropout_key, labels=labels)
    logits, class_logits = split_logits(config, out)
    loss = objectives.gan_g_loss(config.gan.loss, logits)
    extra = {}
    if class_logits is not None:
      extra['g_class_loss'] = objectives.class_cross_entropy(class_logits, labels)
      loss += aux_weight(config) * extra['g_class_loss']
    return loss, (g_stats, extra)

  (loss, (g_stats, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params[G])
  params, opt_state = state_lib.update(optimizers(config)[G], grads,
                                       state.opt_state[G], state.params[G])
  ema_params = state.ema_params
  if config.gan.ema_decay > 0:
    ema_params = {G: state_lib.ema(state.ema_params[G], params, config.gan.ema_decay)}
  return state.replace(params={**state.params, G: params},
                       opt_state={**state.opt_state, G: opt_state},
                       batch_stats={**state.batch_stats, G: g_stats},
                       ema_params=ema_params), {
                           'g_loss': loss, 'g_grad_norm': state_lib.global_norm(grads),
                           **extra}


def train_step(config, state, batch):
  """`config.gan.d_steps` D updates, then one G update; step += 1."""
  real = batch['image'] * 2.0 - 1.0
  labels = batch['label'] if conditional.num_classes(config) else None
  d_key = state_lib.step_key(state, _D)
  # A Python loop, unrolled by jit: XLA:CPU runs these convolutions ~15x
  # slower inside a while loop (lax.scan / fori_loop) than straight-line.
  d_metrics = []
  for i in range(config.gan.d_steps):
    state, metrics = d_update(config, state, real, jax.random.fold_in(d_key, i), labels)
    d_metrics.append(metrics)
  d_metrics = jax.tree.map(lambda *v: jnp.mean(jnp.stack(v)), *d_metrics)  # Mean over D updates.
  state, g_metrics = g_update(config, state, real.shape[0],
                              state_lib.step_key(state, _G_Z),
                              state_lib.step_key(state, _G_DROPOUT), labels)
  return state.replace(step=state.step + 1), {**d_metrics, **g_metrics}


def eval_step(config, state, batch):
  """Sums over the real rows of a test batch of D's mean score on the test
  images (`d_real`) and on as many samples of the sampling generator
  (`d_fake`); D without dropout. Probabilities or raw scores, as in training."""
  mask = batch['mask']
  x = batch['image'] * 2.0 - 1.0
  labels = batch['label'] if conditional.num_classes(config) else None
  fake = decode(config, state, jax.random.normal(
      jax.random.fold_in(state.key, _EVAL), (x.shape[0], latent_dim(config))), labels)
  both = None if labels is None else jnp.concatenate([labels, labels])
  out, _ = discriminate(config, state.params[D], state.batch_stats.get(D),
                        jnp.concatenate([x, fake * 2.0 - 1.0]), labels=both)
  logits, _ = split_logits(config, out)
  n = x.shape[0]
  return {'d_real': jnp.sum(mask * scores(config, logits[:n])),
          'd_fake': jnp.sum(mask * scores(config, logits[n:]))}


# ---------------------------------------------------------------------------
# Sampling.
# ---------------------------------------------------------------------------


def generator_params(config, state):
  """The params used for sampling: the EMA when config.gan.ema_decay > 0."""
  return state.ema_params[G] if config.gan.ema_decay > 0 else state.params[G]


def decode(config, state, z, labels=None):
  """z (B, Z) -> images (B, H, W, C) in [0, 1]; G in inference mode
  (BatchNorm running averages), EMA weights where enabled. A conditional G
  needs `labels` ((B,) or an int)."""
  labels = conditional.need_labels(config, labels, 'decode')
  if labels is not None:
    labels = jnp.broadcast_to(labels, z.shape[:1])
  images = generate(config, generator_params(config, state), state.batch_stats[G], z,
                    train=False, labels=labels)
  return jnp.clip((images + 1.0) * 0.5, 0.0, 1.0)


def sample(config, state, key, n, labels=None):
  """n samples, images (n, H, W, C) in [0, 1]; a conditional G's of `labels`
  (an int or (n,)), drawn uniformly when None."""
  return decode(config, state, jax.random.normal(key, (n, latent_dim(config))),
                conditional.labels_for(config, key, n, labels))


def grid_panels(config, state, key, images, labels=None):  # pylint: disable=unused-argument
  """Samples from the fixed grid latents beside real test images (a
  conditional G draws classes 0, 1, … in turn)."""
  n = images.shape[0]
  k = conditional.num_classes(config)
  return [sample(config, state, key, n, jnp.arange(n) % k if k else None), images]
