"""Losses and likelihood terms, pure and shape-documented.

Per-image quantities are summed over pixels / latent dimensions and returned
with a leading batch axis (B,), in nats. Callers take the batch mean.
"""

import math

import jax
import jax.numpy as jnp

# ---------------------------------------------------------------------------
# VAE terms (Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014).
# ---------------------------------------------------------------------------


def gaussian_kl(mean, logvar):
  """KL(N(mean, exp(logvar)) || N(0, I)) in closed form (Kingma & Welling, App. B).

  Args:
    mean: (B, Z) posterior means.
    logvar: (B, Z) posterior log-variances.

  Returns:
    (B,) KL divergence per example, nats.
  """
  return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar, axis=-1)


def reparameterize(key, mean, logvar):
  """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I); shapes (B, Z)."""
  eps = jax.random.normal(key, mean.shape, mean.dtype)
  return mean + jnp.exp(0.5 * logvar) * eps


def bernoulli_log_likelihood(logits, x):
  """log p(x | logits) for Bernoulli pixels, summed over all but the batch axis.

  Args:
    logits: (B, ...) decoder logits.
    x: (B, ...) targets in [0, 1] (grey levels are treated as probabilities,
      the usual practice for MNIST).

  Returns:
    (B,) log-likelihood, nats.
  """
  ll = x * logits - jax.nn.softplus(logits)  # = x log σ(l) + (1-x) log(1-σ(l))
  return jnp.sum(ll.reshape(ll.shape[0], -1), axis=-1)


def gaussian_log_likelihood(x, mean, log_scale):
  """log N(x | mean, exp(log_scale)^2), summed over all but the batch axis.

  Args:
    x: (B, ...) targets.
    mean: (B, ...) decoder means.
    log_scale: scalar or broadcastable log standard deviation.

  Returns:
    (B,) log-likelihood, nats.
  """
  log_scale = jnp.broadcast_to(log_scale, x.shape)
  ll = (-0.5 * jnp.square((x - mean) * jnp.exp(-log_scale)) - log_scale
        - 0.5 * math.log(2 * math.pi))
  return jnp.sum(ll.reshape(ll.shape[0], -1), axis=-1)


def kl_weight(step, beta, warmup_steps):
  """β·min(1, step / warmup_steps): the linear KL warm-up (Bowman et al. 2016)."""
  if warmup_steps <= 0:
    return jnp.asarray(beta, jnp.float32)
  return beta * jnp.minimum(1.0, step.astype(jnp.float32) / warmup_steps)


# ---------------------------------------------------------------------------
# GAN losses and discriminator penalties.
#
# Every loss takes the discriminator's raw outputs (logits / critic scores),
# shape (B,), and returns a scalar batch mean. `kind` names the game:
#   'non_saturating'  Goodfellow et al. 2014, §3: G maximises log D(G(z)).
#   'minimax'         Goodfellow et al. 2014, eq. 1: G minimises log(1 - D(G(z))).
#   'hinge'           Lim & Ye 2017; Miyato et al. 2018.
#   'wgan'            Arjovsky et al. 2017; with `gradient_penalty`, WGAN-GP
#                     (Gulrajani et al. 2017).
#   'lsgan'           Mao et al. 2017, a=0, b=1, c=1, both terms weighted 1/2.
# For the two cross-entropy games D(x) = sigmoid(logit), and the losses are
# written with softplus: -log sigmoid(l) = softplus(-l), -log(1 - sigmoid(l))
# = softplus(l), so they are exact and stable for any logit.
# ---------------------------------------------------------------------------

GAN_LOSSES = ('non_saturating', 'minimax', 'hinge', 'wgan', 'lsgan')


def _check_gan_kind(kind):
  if kind not in GAN_LOSSES:
    raise ValueError(f'Unknown GAN loss {kind!r}; known: {", ".join(GAN_LOSSES)}.')


def gan_d_loss(kind: str, real_logits, fake_logits):
  """The discriminator's (critic's) loss, to be minimised.

  non_saturating, minimax: -E[log D(x)] - E[log(1 - D(G(z)))]   (Goodfellow et al. 2014)
  hinge:                   E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]   (Lim & Ye 2017)
  wgan:                    E[D(G(z))] - E[D(x)]   (Arjovsky et al. 2017)
  lsgan:                   1/2 E[(D(x) - 1)^2] + 1/2 E[D(G(z))^2]   (Mao et al. 2017)

  Args:
    kind: one of `GAN_LOSSES`.
    real_logits: (B,) discriminator outputs on real images.
    fake_logits: (B',) discriminator outputs on generated images.

  Returns:
    Scalar loss (batch means; the two batches may differ in size).
  """
  _check_gan_kind(kind)
  r, f = real_logits.astype(jnp.float32), fake_logits.astype(jnp.float32)
  if kind in ('non_saturating', 'minimax'):
    return jnp.mean(jax.nn.softplus(-r)) + jnp.mean(jax.nn.softplus(f))
  if kind == 'hinge':
    return jnp.mean(jax.nn.relu(1.0 - r)) + jnp.mean(jax.nn.relu(1.0 + f))
  if kind == 'wgan':
    return jnp.mean(f) - jnp.mean(r)
  return 0.5 * jnp.mean(jnp.square(r - 1.0)) + 0.5 * jnp.mean(jnp.square(f))


def gan_g_loss(kind: str, fake_logits):
  """The generator's loss, to be minimised.

  non_saturating: -E[log D(G(z))]            (Goodfellow et al. 2014, §3)
  minimax:         E[log(1 - D(G(z)))]        (Goodfellow et al. 2014, eq. 1)
  hinge, wgan:    -E[D(G(z))]                 (Lim & Ye 2017; Arjovsky et al. 2017)
  lsgan:           1/2 E[(D(G(z)) - 1)^2]     (Mao et al. 2017)

  Args:
    kind: one of `GAN_LOSSES`.
    fake_logits: (B,) discriminator outputs on generated images.

  Returns:
    Scalar loss.
  """
  _check_gan_kind(kind)
  f = fake_logits.astype(jnp.float32)
  if kind == 'non_saturating':
    return jnp.mean(jax.nn.softplus(-f))
  if kind == 'minimax':
    return -jnp.mean(jax.nn.softplus(f))  # log(1 - sigmoid(f)) = -softplus(f).
  if kind in ('hinge', 'wgan'):
    return -jnp.mean(f)
  return 0.5 * jnp.mean(jnp.square(f - 1.0))


def class_cross_entropy(class_logits, labels):
  """The ACGAN auxiliary classifier loss (Odena, Olah & Shlens, "Conditional
  image synthesis with auxiliary classifier GANs", ICML 2017, L_C):

      CE = -E[log softmax(class_logits)[y]]

  D minimises it on real and generated images, G on generated images.

  Args:
    class_logits: (B, K) class logits of D's auxiliary head.
    labels: (B,) int classes in [0, K).

  Returns:
    Scalar mean cross-entropy, nats.
  """
  log_probs = jax.nn.log_softmax(class_logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32),
                                       axis=-1))


def _input_grad_sq_norms(d_fn, x):
  """||∂D(x_i)/∂x_i||² per example, (B,).

  Uses the gradient of sum_i D(x_i), which equals the per-example gradients
  because `d_fn` treats examples independently (no batch statistics in D).
  """
  grads = jax.grad(lambda x: jnp.sum(d_fn(x).astype(jnp.float32)))(x)
  return jnp.sum(jnp.square(grads.astype(jnp.float32)).reshape(x.shape[0], -1), axis=-1)


def gradient_penalty(d_fn, real, fake, key):
  """WGAN-GP penalty E[(||∇D(x̂)||₂ - 1)²] (Gulrajani et al. 2017, Alg. 1).

  x̂ = ε x + (1 - ε) G(z), one ε ~ U[0, 1] per example. The caller multiplies
  by λ (10 in the paper) and adds it to the critic's loss; gradients flow
  into D's parameters through `d_fn` (double backpropagation).

  Args:
    d_fn: images (B, H, W, C) -> critic scores (B,); must treat examples
      independently (no batch normalisation).
    real: (B, H, W, C) real images.
    fake: (B, H, W, C) generated images (treated as constants).
    key: PRNG key for ε.

  Returns:
    Scalar penalty.
  """
  real = real.astype(jnp.float32)
  fake = jax.lax.stop_gradient(fake).astype(jnp.float32)
  eps = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1))
  x_hat = eps * real + (1.0 - eps) * fake
  norms = jnp.sqrt(_input_grad_sq_norms(d_fn, x_hat) + 1e-12)
  return jnp.mean(jnp.square(norms - 1.0))


def r1_penalty(d_fn, real):
  """R1 penalty E[||∇_x D(x)||₂²] on real data (Mescheder et al. 2018, eq. 9).

  The paper's regulariser is γ/2 times this; the caller applies the weight.

  Args:
    d_fn: images (B, H, W, C) -> logits (B,); must treat examples independently.
    real: (B, H, W, C) real images.

  Returns:
    Scalar penalty.
  """
  return jnp.mean(_input_grad_sq_norms(d_fn, real.astype(jnp.float32)))
