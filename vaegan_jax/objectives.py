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
