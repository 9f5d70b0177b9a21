"""Keras references of the two benchmark workloads, for experiments/throughput.py.

The same networks and the same training step as the project's GAN and VAE
families, written the way a Keras user writes them: Keras 3 layers on the
TensorFlow backend, a custom step in `tf.function` with `tf.GradientTape` and
`keras.optimizers.Adam`.

  dcgan28    the TF DCGAN tutorial's G and D (models/gan.py at 28x28, where BN
             follows the reshape, i.e. normalises over 256 channels). One step
             = one D update on [real; G(z1)] then one G update through D on
             G(z2), as families/gan.py does (the tutorial shares one G forward
             between the two losses; the project draws fresh fakes).
  convvae28  the Keras VAE example (models/vae.py with kernel 3, encoder
             hidden 16, no decoder hidden, separate z_mean / z_log_var Dense
             as in the example); loss -(Bernoulli log-likelihood - KL).

`build(config, jit_compile)` returns `step(images) -> loss`, images a float32
numpy array (B, 28, 28, 1) in [0, 1]; the returned loss is a tf.Tensor that
`.numpy()` synchronises on.
"""

import os

os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from vaegan_jax import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax.errors import UserError  # pylint: disable=g-import-not-at-top,wrong-import-position

TF_MISSING = ('The Keras reference needs TensorFlow: pip install -r requirements-tf.txt '
              '(or pass --reference=none).')
keras = layers = tf = None  # Imported by `import_tf()`: TensorFlow is optional.


def import_tf():
  """Imports keras and TensorFlow into this module; UserError if missing."""
  global keras, layers, tf  # pylint: disable=global-statement
  if tf is None:
    try:
      import keras as keras_  # pylint: disable=g-import-not-at-top
      import tensorflow as tf_  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise UserError(TF_MISSING) from None
    keras, layers, tf = keras_, keras_.layers, tf_


def _scale(width, mult):
  return max(1, int(round(width * mult)))


def _adam(cfg):
  return keras.optimizers.Adam(learning_rate=cfg.learning_rate, beta_1=cfg.b1,
                               beta_2=cfg.b2)


def check_gan(config):
  """UserError unless the Keras reference mirrors this GAN config."""
  problems = []
  if input_pipeline.image_shape(config) != (28, 28, 1):
    problems.append('28x28x1 images')
  if config.gan.loss != 'non_saturating':
    problems.append("gan.loss='non_saturating'")
  if config.gan.d_steps != 1:
    problems.append('gan.d_steps=1')
  if config.model.spectral_norm or config.gan.r1_gamma or config.gan.ema_decay:
    problems.append('no spectral norm, R1 or EMA')
  if config.train.get('compute_dtype', 'float32') != 'float32':
    problems.append('float32')
  if problems:
    raise UserError('The Keras reference implements only the dcgan28 workload; '
                    f'this config needs: {", ".join(problems)}.')


def gan_models(config):
  """(generator, discriminator) keras.Sequential, as models/gan.py at 28x28."""
  m = config.model
  slope = m.leaky_slope
  top, mid, low = (_scale(w, m.g_width_mult) for w in (256, 128, 64))
  generator = keras.Sequential([
      keras.Input((m.latent_dim,)),
      layers.Dense(7 * 7 * top, use_bias=False),
      layers.Reshape((7, 7, top)),
      layers.BatchNormalization(momentum=0.99, epsilon=1e-3),
      layers.LeakyReLU(negative_slope=slope),
      layers.Conv2DTranspose(mid, 5, strides=1, padding='same', use_bias=False),
      layers.BatchNormalization(momentum=0.99, epsilon=1e-3),
      layers.LeakyReLU(negative_slope=slope),
      layers.Conv2DTranspose(low, 5, strides=2, padding='same', use_bias=False),
      layers.BatchNormalization(momentum=0.99, epsilon=1e-3),
      layers.LeakyReLU(negative_slope=slope),
      layers.Conv2DTranspose(1, 5, strides=2, padding='same', use_bias=False,
                             activation='tanh'),
  ])
  d1, d2 = (_scale(w, m.d_width_mult) for w in (64, 128))
  discriminator = keras.Sequential([
      keras.Input((28, 28, 1)),
      layers.Conv2D(d1, 5, strides=2, padding='same'),
      layers.LeakyReLU(negative_slope=slope),
      layers.Dropout(m.d_dropout),
      layers.Conv2D(d2, 5, strides=2, padding='same'),
      layers.LeakyReLU(negative_slope=slope),
      layers.Dropout(m.d_dropout),
      layers.Flatten(),
      layers.Dense(1),
  ])
  return generator, discriminator


def build_gan(config, jit_compile: bool):
  check_gan(config)
  generator, discriminator = gan_models(config)
  g_opt, d_opt = _adam(config.optim.g), _adam(config.optim.d)
  g_opt.build(generator.trainable_variables)
  d_opt.build(discriminator.trainable_variables)
  latent = config.model.latent_dim
  softplus = tf.math.softplus

  @tf.function(jit_compile=jit_compile)
  def step(images):
    real = images * 2.0 - 1.0
    n = tf.shape(real)[0]
    fake = generator(tf.random.normal((n, latent)), training=True)
    with tf.GradientTape() as tape:
      logits = discriminator(tf.concat([real, fake], 0), training=True)[:, 0]
      d_loss = (tf.reduce_mean(softplus(-logits[:n]))
                + tf.reduce_mean(softplus(logits[n:])))
    grads = tape.gradient(d_loss, discriminator.trainable_variables)
    d_opt.apply_gradients(zip(grads, discriminator.trainable_variables))
    with tf.GradientTape() as tape:
      fake = generator(tf.random.normal((n, latent)), training=True)
      g_loss = tf.reduce_mean(softplus(-discriminator(fake, training=True)[:, 0]))
    grads = tape.gradient(g_loss, generator.trainable_variables)
    g_opt.apply_gradients(zip(grads, generator.trainable_variables))
    return d_loss + g_loss

  return step


def check_vae(config):
  """UserError unless the Keras reference mirrors this VAE config."""
  problems = []
  if input_pipeline.image_shape(config) != (28, 28, 1):
    problems.append('28x28x1 images')
  if config.vae.likelihood != 'bernoulli':
    problems.append("vae.likelihood='bernoulli'")
  if config.vae.beta != 1.0 or config.vae.kl_warmup_steps:
    problems.append('vae.beta=1 and no KL warm-up')
  if config.train.get('compute_dtype', 'float32') != 'float32':
    problems.append('float32')
  if problems:
    raise UserError('The Keras reference implements only the convvae28 workload; '
                    f'this config needs: {", ".join(problems)}.')


def vae_models(config):
  """(encoder -> (mean, logvar), decoder -> logits), as models/vae.py at 28x28."""
  m = config.model
  k = m.get('kernel_size', 4)
  dec_hidden = m.get('decoder_hidden', m.hidden)
  x_in = keras.Input((28, 28, 1))
  h = layers.Conv2D(m.width, k, strides=2, padding='same', activation='relu')(x_in)
  h = layers.Conv2D(2 * m.width, k, strides=2, padding='same', activation='relu')(h)
  h = layers.Dense(m.hidden, activation='relu')(layers.Flatten()(h))
  encoder = keras.Model(x_in, [layers.Dense(m.latent_dim)(h),
                               layers.Dense(m.latent_dim)(h)])
  z_in = keras.Input((m.latent_dim,))
  h = z_in
  if dec_hidden:
    h = layers.Dense(dec_hidden, activation='relu')(h)
  h = layers.Dense(7 * 7 * 2 * m.width, activation='relu')(h)
  h = layers.Reshape((7, 7, 2 * m.width))(h)
  h = layers.Conv2DTranspose(2 * m.width, k, strides=2, padding='same',
                             activation='relu')(h)
  h = layers.Conv2DTranspose(m.width, k, strides=2, padding='same',
                             activation='relu')(h)
  logits = layers.Conv2DTranspose(1, 3, padding='same')(h)
  return encoder, keras.Model(z_in, logits)


def build_vae(config, jit_compile: bool):
  check_vae(config)
  encoder, decoder = vae_models(config)
  variables = encoder.trainable_variables + decoder.trainable_variables
  opt = _adam(config.optim)
  opt.build(variables)

  @tf.function(jit_compile=jit_compile)
  def step(images):
    with tf.GradientTape() as tape:
      mean, logvar = encoder(images, training=True)
      z = mean + tf.exp(0.5 * logvar) * tf.random.normal(tf.shape(mean))
      logits = decoder(z, training=True)
      recon = -tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(
          labels=images, logits=logits), axis=[1, 2, 3])
      kl = 0.5 * tf.reduce_sum(tf.exp(logvar) + tf.square(mean) - 1.0 - logvar,
                               axis=1)
      loss = -tf.reduce_mean(recon - kl)
    grads = tape.gradient(loss, variables)
    opt.apply_gradients(zip(grads, variables))
    return loss

  return step


def build(config, jit_compile: bool = False):
  """The Keras step for `config`'s workload (GAN -> dcgan28, VAE -> convvae28)."""
  import_tf()
  tf.config.set_visible_devices([], 'GPU')
  if config.model.family == 'gan':
    return build_gan(config, jit_compile)
  if config.model.family == 'vae':
    return build_vae(config, jit_compile)
  raise UserError(f'No Keras reference for model family {config.model.family!r}; '
                  'use --reference=none.')
