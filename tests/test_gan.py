"""GAN losses, penalties, spectral norm, the separated G / D updates, smoke runs."""

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import load_config
from mock_data import mock_tfds
from vaegan_jax import checkpoint
from vaegan_jax import objectives
from vaegan_jax import sharding
from vaegan_jax import train
from vaegan_jax.errors import UserError
from vaegan_jax.families import gan
from vaegan_jax.models import gan as gan_models

LOG2 = math.log(2.0)


def _sigmoid(x):
  return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------------------
# Losses against hand-computed values.
# ---------------------------------------------------------------------------

REAL = jnp.array([0.5, 2.0])
FAKE = jnp.array([-2.0, 0.5])


def test_cross_entropy_losses_hand_values():
  # Logit 0 is D = 1/2: every term is log 2.
  zeros = jnp.zeros(3)
  for kind in ('non_saturating', 'minimax'):
    np.testing.assert_allclose(objectives.gan_d_loss(kind, zeros, zeros), 2 * LOG2, rtol=1e-6)
  np.testing.assert_allclose(objectives.gan_g_loss('non_saturating', zeros), LOG2, rtol=1e-6)
  np.testing.assert_allclose(objectives.gan_g_loss('minimax', zeros), -LOG2, rtol=1e-6)
  # General logits: -mean log D(x) - mean log(1 - D(G(z))).
  d = (-(math.log(_sigmoid(0.5)) + math.log(_sigmoid(2.0))) / 2
       - (math.log(1 - _sigmoid(-2.0)) + math.log(1 - _sigmoid(0.5))) / 2)
  for kind in ('non_saturating', 'minimax'):
    np.testing.assert_allclose(objectives.gan_d_loss(kind, REAL, FAKE), d, rtol=1e-6)
  # Non-saturating G: -mean log D(G(z)); minimax G (Goodfellow et al. eq. 1):
  # mean log(1 - D(G(z))).
  np.testing.assert_allclose(
      objectives.gan_g_loss('non_saturating', FAKE),
      -(math.log(_sigmoid(-2.0)) + math.log(_sigmoid(0.5))) / 2, rtol=1e-6)
  np.testing.assert_allclose(
      objectives.gan_g_loss('minimax', FAKE),
      (math.log(1 - _sigmoid(-2.0)) + math.log(1 - _sigmoid(0.5))) / 2, rtol=1e-6)


def test_cross_entropy_losses_are_finite_for_huge_logits():
  big = jnp.array([1e4, -1e4])
  for kind in ('non_saturating', 'minimax'):
    assert np.isfinite(objectives.gan_d_loss(kind, big, big))
    assert np.isfinite(objectives.gan_g_loss(kind, big))
  np.testing.assert_allclose(objectives.gan_g_loss('non_saturating', jnp.array([-1e4])), 1e4)


def test_hinge_wgan_lsgan_hand_values():
  # relu(1 - [0.5, 2]) = [0.5, 0], relu(1 + [-2, 0.5]) = [0, 1.5].
  np.testing.assert_allclose(objectives.gan_d_loss('hinge', REAL, FAKE), 0.25 + 0.75)
  np.testing.assert_allclose(objectives.gan_g_loss('hinge', FAKE), 0.75)
  np.testing.assert_allclose(objectives.gan_d_loss('wgan', REAL, FAKE), -0.75 - 1.25)
  np.testing.assert_allclose(objectives.gan_g_loss('wgan', FAKE), 0.75)
  # 1/2 mean([0.25, 1]) + 1/2 mean([4, 0.25]);  1/2 mean([9, 0.25]).
  np.testing.assert_allclose(objectives.gan_d_loss('lsgan', REAL, FAKE), 0.3125 + 1.0625)
  np.testing.assert_allclose(objectives.gan_g_loss('lsgan', FAKE), 2.3125)


def test_unknown_loss_kind():
  with pytest.raises(ValueError, match='Unknown GAN loss'):
    objectives.gan_g_loss('wasserstein', FAKE)
  config = load_config('gan', 'smoke')
  config.gan.loss = 'wasserstein'
  with pytest.raises(UserError, match='config.gan.loss'):
    gan.init_state(config, jax.random.PRNGKey(0))


# ---------------------------------------------------------------------------
# Penalties.
# ---------------------------------------------------------------------------


def _direct_input_grad_norms(d_fn, x):
  """One example at a time, no batching tricks."""
  grad = jax.jit(jax.grad(lambda xi: d_fn(xi[None])[0]))
  return np.array([float(jnp.linalg.norm(grad(x[i]).ravel())) for i in range(x.shape[0])])


def test_gradient_penalty_matches_a_direct_computation():
  key = jax.random.PRNGKey(3)
  k_real, k_fake, k_a, k_eps = jax.random.split(key, 4)
  real = jax.random.normal(k_real, (5, 4, 4, 2))
  fake = jax.random.normal(k_fake, (5, 4, 4, 2))
  a = jax.random.normal(k_a, (4, 4, 2))
  d_fn = lambda x: jnp.sum(jnp.tanh(a * x) + 0.3 * x, axis=(1, 2, 3))  # pylint: disable=unnecessary-lambda-assignment
  # The interpolation weights: one uniform per example, from the given key.
  eps = np.asarray(jax.random.uniform(k_eps, (5, 1, 1, 1)))
  x_hat = eps * real + (1 - eps) * fake
  expected = np.mean((_direct_input_grad_norms(d_fn, x_hat) - 1.0) ** 2)
  np.testing.assert_allclose(objectives.gradient_penalty(d_fn, real, fake, k_eps),
                             expected, rtol=1e-5)
  # A linear critic w.x has gradient w everywhere: (||w|| - 1)^2.
  w = jnp.full((4, 4, 2), 0.5)  # ||w|| = sqrt(32 / 4) = 2*sqrt(2).
  linear = lambda x: jnp.sum(w * x, axis=(1, 2, 3))  # pylint: disable=unnecessary-lambda-assignment
  np.testing.assert_allclose(objectives.gradient_penalty(linear, real, fake, k_eps),
                             (2 * math.sqrt(2) - 1) ** 2, rtol=1e-5)


def test_penalties_on_the_real_discriminator_match_per_example_gradients():
  config = load_config('gan', 'smoke')
  state = gan.init_state(config, jax.random.PRNGKey(0))
  d_fn = lambda x: gan.discriminate(config, state.params['discriminator'], None, x)[0]  # pylint: disable=unnecessary-lambda-assignment
  real = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28, 1), minval=-1, maxval=1)
  norms = _direct_input_grad_norms(d_fn, real)
  r1 = jax.jit(functools.partial(objectives.r1_penalty, d_fn))(real)
  np.testing.assert_allclose(r1, np.mean(norms ** 2), rtol=1e-4)


def test_penalty_gradients_reach_the_critic_params():
  w0 = jnp.array([[1.0, 2.0]])
  real, fake = jnp.ones((3, 2)), jnp.zeros((3, 2))
  def gp(w):  # Linear critic: penalty (||w|| - 1)^2 whatever the samples.
    return objectives.gradient_penalty(lambda x: x @ w[0], real, fake, jax.random.PRNGKey(0))
  norm = math.sqrt(5.0)
  # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||.
  np.testing.assert_allclose(jax.grad(gp)(w0), 2 * (norm - 1) * w0 / norm, rtol=1e-5)
  r1 = jax.grad(lambda w: objectives.r1_penalty(lambda x: x @ w[0], real))(w0)
  np.testing.assert_allclose(r1, 2 * w0, rtol=1e-6)  # d/dw ||w||^2.


# ---------------------------------------------------------------------------
# Spectral normalisation.
# ---------------------------------------------------------------------------


def _kernels(params):
  return {'/'.join(str(k.key) for k in path[:-1]): v
          for path, v in jax.tree_util.tree_leaves_with_path(params)
          if path[-1].key == 'kernel'}


def test_spectral_norm_drives_the_top_singular_value_to_one():
  disc = gan_models.Discriminator(image_shape=(28, 28, 1), width_mult=1 / 8,
                                  spectral_norm=True, dropout=0.0)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 28, 28, 1))
  variables = disc.init(jax.random.PRNGKey(1), x)
  # Raw kernels with top singular values far from 1.
  variables['params'] = jax.tree.map(lambda v: 5.0 * v, variables['params'])
  apply = jax.jit(lambda v: disc.apply(v, x, update_stats=True, mutable=['batch_stats']))
  for _ in range(50):  # Power iteration advances once per call.
    _, updates = apply(variables)
    variables = {**variables, **updates}
  sigmas = {}
  for module_stats in variables['batch_stats'].values():
    for name, value in module_stats.items():
      if name.endswith('/kernel/sigma'):
        sigmas[name.split('/')[0]] = float(value)
  kernels = _kernels(variables['params'])
  assert sorted(sigmas) == sorted(kernels) == ['Conv_0', 'Conv_1', 'Dense_0']
  for name, kernel in kernels.items():
    matrix = np.asarray(kernel).reshape(-1, kernel.shape[-1])
    top = np.linalg.svd(matrix, compute_uv=False)[0]
    assert top > 2.0  # The raw kernel is not normalised; kernel / sigma is.
    np.testing.assert_allclose(top / sigmas[name], 1.0, rtol=1e-2, err_msg=name)


def test_spectral_norm_makes_d_invariant_to_weight_scale():
  # With LeakyReLU (positively homogeneous) and W / sigma(W) per layer,
  # scaling every kernel leaves D unchanged, up to the biases' share.
  for sn in (True, False):
    disc = gan_models.Discriminator(image_shape=(28, 28, 1), width_mult=1 / 8,
                                    spectral_norm=sn)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 28, 28, 1))
    variables = disc.init(jax.random.PRNGKey(1), x)
    zero_bias = jax.tree_util.tree_map_with_path(
        lambda p, v: v * (0.0 if p[-1].key == 'bias' else 1.0), variables['params'])
    scaled = jax.tree_util.tree_map_with_path(
        lambda p, v: v * (3.0 if p[-1].key == 'kernel' else 1.0), zero_bias)
    out = disc.apply({**variables, 'params': zero_bias}, x)
    out_scaled = disc.apply({**variables, 'params': scaled}, x)
    if sn:
      np.testing.assert_allclose(out_scaled, out, rtol=1e-4, atol=1e-6)
    else:
      np.testing.assert_allclose(out_scaled, 27.0 * out, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------
# The train step.
# ---------------------------------------------------------------------------


def tiny_config(**gan_overrides):
  config = load_config('gan', 'smoke')
  config.train.batch_size = 8
  for k, v in gan_overrides.items():
    config.gan[k] = v
  return config


def _batch(seed, n=8, shape=(28, 28, 1)):
  return {'image': jax.random.uniform(jax.random.PRNGKey(seed), (n, *shape))}


def _equal(a, b):
  return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b)))


def _count(opt_state):
  return int(optax.tree.get(opt_state, 'count'))


@pytest.fixture(scope='module')
def penalised():
  """A config exercising every stabiliser at once, and its jitted step."""
  config = tiny_config(loss='wgan', d_steps=2, r1_gamma=1.0, ema_decay=0.9)
  config.model.spectral_norm = True
  return config, jax.jit(functools.partial(gan.train_step, config))


def test_d_update_leaves_the_generator_untouched_and_vice_versa():
  config = tiny_config(ema_decay=0.9)
  config.model.spectral_norm = True  # D has state of its own in batch_stats.
  state = gan.init_state(config, jax.random.PRNGKey(0))
  real = _batch(1)['image'] * 2 - 1
  after_d, metrics = jax.jit(functools.partial(gan.d_update, config))(
      state, real, jax.random.PRNGKey(5))
  assert set(metrics) == {'d_loss', 'd_real', 'd_fake', 'd_grad_norm'}
  for field in ('params', 'opt_state', 'batch_stats'):
    assert _equal(getattr(after_d, field)['generator'], getattr(state, field)['generator'])
    assert not _equal(getattr(after_d, field)['discriminator'],
                      getattr(state, field)['discriminator']), field
  assert _equal(after_d.ema_params, state.ema_params)

  after_g, metrics = jax.jit(functools.partial(gan.g_update, config, batch_size=8))(
      state, z_key=jax.random.PRNGKey(6), dropout_key=jax.random.PRNGKey(7))
  assert set(metrics) == {'g_loss', 'g_grad_norm'}
  for field in ('params', 'opt_state', 'batch_stats'):
    assert _equal(getattr(after_g, field)['discriminator'],
                  getattr(state, field)['discriminator'])
    assert not _equal(getattr(after_g, field)['generator'],
                      getattr(state, field)['generator']), field
  assert not _equal(after_g.ema_params, state.ema_params)


def test_d_steps_per_g_step_are_counted(penalised):
  config, step = penalised
  state = gan.init_state(config, jax.random.PRNGKey(0))
  for i in range(3):
    state, metrics = step(state, _batch(i))
  assert int(state.step) == 3
  assert _count(state.opt_state['discriminator']) == 3 * 2
  assert _count(state.opt_state['generator']) == 3
  assert set(metrics) == {'d_loss', 'g_loss', 'd_real', 'd_fake', 'g_grad_norm',
                          'd_grad_norm', 'gp', 'r1'}
  assert all(np.isfinite(float(v)) for v in metrics.values())
  assert float(metrics['gp']) > 0 and float(metrics['r1']) > 0


def test_same_seed_gives_bit_identical_params(penalised):
  config, step = penalised

  def run(seed):
    state = gan.init_state(config, jax.random.PRNGKey(seed))
    for i in range(3):
      state, _ = step(state, _batch(i))
    return jax.device_get(state)

  a, b, c = run(0), run(0), run(1)
  for field in ('params', 'opt_state', 'batch_stats', 'ema_params'):
    assert _equal(getattr(a, field), getattr(b, field)), field
  assert not _equal(a.params, c.params)


def test_probabilities_reported_for_cross_entropy_losses_only():
  config = tiny_config()
  state = gan.init_state(config, jax.random.PRNGKey(0))
  logits = jnp.array([-3.0, 0.0, 3.0])
  np.testing.assert_allclose(gan.scores(config, logits), jax.nn.sigmoid(logits))
  config.gan.loss = 'hinge'
  np.testing.assert_allclose(gan.scores(config, logits), logits)
  images = gan.sample(config, state, jax.random.PRNGKey(0), 4)
  assert images.shape == (4, 28, 28, 1) and float(images.min()) >= 0 and float(images.max()) <= 1


# ---------------------------------------------------------------------------
# Smoke runs through the training loop on mock three-channel datasets.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('name,size,spectral_norm', [('cifar10', 32, True),
                                                      ('celeb_a', 64, False)])
def test_smoke_run_on_mock_data(tmp_path, name, size, spectral_norm):
  config = load_config('gan', 'smoke')
  config.data.name = name
  config.model.spectral_norm = spectral_norm
  config.train.batch_size = 4
  config.train.num_steps = 2
  config.train.log_every_steps = 1
  if 'eval' in config:
    config.eval.generative_metrics = False  # Tested with the metrics; this is the family.
  workdir = str(tmp_path / name)
  with mock_tfds(num_examples=8):
    state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 2
  assert os.listdir(os.path.join(workdir, 'samples')) == ['step_0000002.png']
  assert gan.sample(config, state, jax.random.PRNGKey(0), 2).shape == (2, size, size, 3)
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [r['step'] for r in rows if 'd_loss' in r] == [1, 2]
  assert {'eval/d_real', 'eval/d_fake'} <= set(rows[-1])
  # The checkpoint holds the whole state, spectral-norm vectors included.
  abstract = jax.eval_shape(functools.partial(gan.init_state, config), jax.random.PRNGKey(0))
  shardings = jax.tree.map(lambda _: sharding.replicated(sharding.make_mesh()), abstract)
  mngr = checkpoint.manager(workdir, read_only=True)
  restored = checkpoint.restore(mngr, 2, abstract, shardings)
  mngr.close()
  assert ('discriminator' in restored.batch_stats) == spectral_norm
  assert _equal(restored.batch_stats, state.batch_stats)
  assert _equal(restored.opt_state, state.opt_state)
