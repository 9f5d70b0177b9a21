import math

import jax
import jax.numpy as jnp
import numpy as np

from vaegan_jax import objectives


def test_gaussian_kl_matches_monte_carlo():
  key = jax.random.PRNGKey(0)
  mean = jnp.array([[0.5, -1.0, 0.0], [2.0, 0.3, -0.7]])
  logvar = jnp.array([[0.2, -0.5, 0.0], [-1.0, 0.4, 0.1]])
  z = objectives.reparameterize(key, jnp.repeat(mean[None], 200_000, 0),
                                jnp.repeat(logvar[None], 200_000, 0))
  std = jnp.exp(0.5 * logvar)
  log_q = jnp.sum(-0.5 * ((z - mean) / std) ** 2 - jnp.log(std) - 0.5 * math.log(2 * math.pi), -1)
  log_p = jnp.sum(-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi), -1)
  mc = jnp.mean(log_q - log_p, axis=0)
  np.testing.assert_allclose(objectives.gaussian_kl(mean, logvar), mc, rtol=0.02, atol=0.01)


def test_gaussian_kl_is_zero_at_the_prior():
  np.testing.assert_allclose(objectives.gaussian_kl(jnp.zeros((2, 5)), jnp.zeros((2, 5))), 0.0)


def test_bernoulli_log_likelihood_hand_values():
  # Logit 0 -> p = 1/2 for every pixel: log p(x) = -D log 2 whatever x is.
  x = jnp.array([[0.0, 1.0, 0.3, 1.0]])
  np.testing.assert_allclose(objectives.bernoulli_log_likelihood(jnp.zeros((1, 4)), x),
                             [-4 * math.log(2)], rtol=1e-6)
  # One pixel, x = 1, logit l: log sigmoid(l).
  np.testing.assert_allclose(
      objectives.bernoulli_log_likelihood(jnp.array([[2.0]]), jnp.array([[1.0]])),
      [math.log(1 / (1 + math.exp(-2.0)))], rtol=1e-6)


def test_gaussian_log_likelihood_hand_values():
  x = jnp.ones((2, 3, 3, 1))
  # x == mean, scale 1: -D/2 log(2 pi), D = 9.
  np.testing.assert_allclose(objectives.gaussian_log_likelihood(x, x, 0.0),
                             [-4.5 * math.log(2 * math.pi)] * 2, rtol=1e-6)
  # One pixel off by 0.2 with scale 0.1: -(2^2)/2 - log 0.1 - log(2 pi)/2.
  ll = objectives.gaussian_log_likelihood(jnp.array([[0.2]]), jnp.array([[0.0]]), math.log(0.1))
  np.testing.assert_allclose(ll, [-2.0 - math.log(0.1) - 0.5 * math.log(2 * math.pi)], rtol=1e-5)


def test_elbo_on_a_hand_checkable_case():
  # Posterior at the prior (KL 0), decoder logits 0: ELBO = -D log 2 exactly.
  recon = objectives.bernoulli_log_likelihood(jnp.zeros((1, 28, 28, 1)), jnp.zeros((1, 28, 28, 1)))
  kl = objectives.gaussian_kl(jnp.zeros((1, 8)), jnp.zeros((1, 8)))
  np.testing.assert_allclose(recon - kl, [-784 * math.log(2)], rtol=1e-6)


def test_kl_warmup_is_linear_then_flat():
  w = [float(objectives.kl_weight(jnp.array(s), 2.0, 100)) for s in (0, 50, 100, 500)]
  np.testing.assert_allclose(w, [0.0, 1.0, 2.0, 2.0])
  assert float(objectives.kl_weight(jnp.array(0), 0.5, 0)) == 0.5
