"""VAE/GAN: Algorithm 1's gradient routing, proved by comparing gradients;
smoke runs on mock data; determinism."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from mock_data import mock_tfds
from vaegan_jax import state as state_lib
from vaegan_jax import train
from vaegan_jax.errors import UserError
from vaegan_jax.families import vaegan as fam

NETS = fam.NETWORKS


def tiny_config(**vaegan):
  config = load_config('vaegan', 'smoke')
  for k, v in vaegan.items():
    config.vaegan[k] = v
  return config


@functools.lru_cache(maxsize=None)
def compiled():
  """A tiny config with three different optimisers, and its jitted init and
  train step (compiled once for the whole file)."""
  config = tiny_config()
  config.optim.dis.learning_rate = 1e-3
  config.optim.enc.b1 = 0.9
  init = jax.jit(functools.partial(fam.init_state, config))
  step = jax.jit(functools.partial(fam.train_step, config))
  return config, init, step


@functools.lru_cache(maxsize=None)
def setup():
  """The config, a state after init, 4 random 'images', the step's key,
  every term's gradient, and `network_grads`' (grads, terms, aux) there."""
  config, init, _ = compiled()
  state = init(jax.random.PRNGKey(0))
  x = jax.random.uniform(jax.random.PRNGKey(100), (4, 28, 28, 1))
  key = state_lib.step_key(state, fam._FORWARD)  # pylint: disable=protected-access
  out = jax.jit(lambda p: fam.network_grads(config, p, state.batch_stats, x, key))(
      state.params)
  return config, state, x, key, term_grads(config, state, x, key), out


def term_grads(config, state, x, key):
  """term -> d term / d params (all networks), through the plain forward pass."""
  return jax.jit(jax.jacrev(lambda p: fam.forward(config, p, state.batch_stats, x, key)[0]))(
      state.params)


def combine(tg, weights, net):
  """d(sum_t w_t * term_t)/d params[net] from `term_grads`."""
  return jax.tree.map(lambda *gs: sum(w * g for w, g in zip(weights.values(), gs)),
                      *[tg[t][net] for t in weights])


def norm(tree):
  return float(state_lib.global_norm(tree))


def assert_trees_close(a, b, rtol=1e-4):
  """Leafwise close, allowing float32 rounding relative to each leaf's scale
  (and to the tree's, for leaves whose gradient is zero up to rounding, e.g.
  conv biases before a BatchNorm)."""
  a, b = jax.device_get(a), jax.device_get(b)
  scale = max(float(np.max(np.abs(v))) for v in jax.tree.leaves(b))
  def close(u, v):
    np.testing.assert_allclose(u, v, rtol=rtol,
                               atol=rtol * float(np.max(np.abs(v))) + 1e-5 * scale)
  jax.tree.map(close, a, b)


def assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_network_losses_are_algorithm_1():
  config = tiny_config(gamma=0.25)
  assert fam.network_losses(config) == {
      'encoder': {'kl': 1.0, 'feature_recon': 1.0},           # L_prior + L_llike
      'decoder': {'feature_recon': 0.25, 'g_loss': 1.0},       # γ L_llike - L_GAN
      'discriminator': {'d_loss': 1.0},                        # -L_GAN
  }


def test_each_network_gets_the_gradient_of_its_own_loss_only():
  config, _, _, _, tg, (grads, _, _) = setup()
  for name in NETS:
    assert_trees_close(grads[name], combine(tg, fam.network_losses(config)[name], name))


def test_terms_reach_networks_the_routing_keeps_them_from():
  """Each excluded term does depend on the network (nonzero gradient), so the
  routing, not the graph, keeps it out."""
  config, _, _, _, tg, (grads, _, _) = setup()
  # The GAN losses reach the encoder through x̃ = Dec(Enc(x)) ...
  for term in ('d_loss', 'g_loss'):
    assert norm(tg[term]['encoder']) > 1e-3 * norm(grads['encoder'])
  # ... and the encoder's gradient would differ if the decoder's GAN term were added.
  with_gan = combine(tg, {'kl': 1.0, 'feature_recon': 1.0, 'g_loss': 1.0}, 'encoder')
  assert norm(jax.tree.map(jnp.subtract, with_gan, grads['encoder'])) > 1e-3 * norm(with_gan)
  # L_llike reaches the discriminator (through Dis_l), but D's gradient is d_loss's alone.
  assert norm(tg['feature_recon']['discriminator']) > 1e-3 * norm(grads['discriminator'])
  assert_trees_close(grads['discriminator'], tg['d_loss']['discriminator'])
  # The KL's and D's losses are not in the decoder's gradient: γ L_llike + g_loss.
  assert norm(tg['d_loss']['decoder']) > 1e-3 * norm(grads['decoder'])
  assert_trees_close(grads['decoder'], combine(
      tg, {'feature_recon': config.vaegan.gamma, 'g_loss': 1.0}, 'decoder'))


def test_kl_reaches_neither_decoder_nor_discriminator():
  _, _, _, _, tg, _ = setup()
  assert norm(tg['kl']['decoder']) == 0.0
  assert norm(tg['kl']['discriminator']) == 0.0
  assert norm(tg['kl']['encoder']) > 0.0


def test_changing_the_decoders_and_discriminators_losses_leaves_the_encoder_alone():
  """γ and the GAN game enter the decoder's and discriminator's losses only:
  the encoder's gradient stays bit-identical when they change."""
  config, state, x, key, _, (base, _, _) = setup()
  config = tiny_config(gamma=10.0, gan_loss='lsgan')
  other = jax.jit(lambda p: fam.network_grads(config, p, state.batch_stats, x, key)[0])(
      state.params)
  same = [all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(base[n]),
                                                   jax.tree.leaves(other[n])))
          for n in NETS]
  assert same == [True, False, False]


def test_train_step_updates_each_network_with_its_own_optimiser_and_gradient():
  config, state, x, _, tg, (_, terms, aux) = setup()
  new, metrics = compiled()[2](state, {'image': x})
  for name, tx in fam.optimizers(config).items():
    g = combine(tg, fam.network_losses(config)[name], name)
    params, opt_state = state_lib.update(tx, g, state.opt_state[name], state.params[name])
    assert_trees_close(new.params[name], params)
    assert_trees_close(new.opt_state[name], opt_state)
    assert norm(jax.tree.map(jnp.subtract, new.params[name], state.params[name])) > 0
    np.testing.assert_allclose(metrics[f'grad_norm/{name}'], norm(g), rtol=1e-4)
  assert_trees_close(new.batch_stats, aux['batch_stats'])
  for t in ('kl', 'feature_recon', 'd_loss', 'g_loss'):
    np.testing.assert_allclose(metrics[t], terms[t], rtol=1e-4)
  np.testing.assert_allclose(
      metrics['decoder_loss'], config.vaegan.gamma * terms['feature_recon'] + terms['g_loss'],
      rtol=1e-5)
  assert int(new.step) == 1 and 0.0 <= float(metrics['recon_mse']) <= 1.0


def test_same_seed_gives_bit_identical_params_other_seed_differs():
  _, init, step = compiled()
  batches = [jax.random.uniform(jax.random.PRNGKey(i), (4, 28, 28, 1)) for i in range(3)]

  def run(seed):
    state = init(jax.random.PRNGKey(seed))
    for x in batches:
      state, _ = step(state, {'image': x})
    return jax.device_get(state)

  a, b, c = run(0), run(0), run(1)
  assert_trees_equal(a, b)
  assert not np.array_equal(a.params['decoder']['Dense_0']['kernel'],
                            c.params['decoder']['Dense_0']['kernel'])


@pytest.mark.parametrize('name,shape', [('mnist', (28, 28, 1)), ('cifar10', (32, 32, 3)),
                                        ('celeb_a', (64, 64, 3))])
def test_shapes_for_every_image_size(name, shape):
  config = tiny_config()
  config.data.name = name
  state = jax.eval_shape(functools.partial(fam.init_state, config), jax.random.PRNGKey(0))
  x = jax.ShapeDtypeStruct((4, *shape), jnp.float32)
  out = jax.eval_shape(lambda s, x: fam.grid_panels(config, s, jax.random.PRNGKey(0), x),
                       state, x)
  assert [o.shape for o in out] == [(4, *shape)] * 3
  mean, logvar = jax.eval_shape(lambda s, x: fam.encode(config, s, x), state, x)
  assert mean.shape == logvar.shape == (4, config.model.latent_dim)
  logits, features = jax.eval_shape(
      lambda p, x: fam.models(config)[2].apply({'params': p}, x),
      state.params['discriminator'], x)
  assert logits.shape == (4,) and features.shape[0] == 4 and features.shape[1] in (7, 8)


def test_decode_is_in_unit_range():
  config, state, _, _, _, _ = setup()
  config = tiny_config()
  images = fam.sample(config, state, jax.random.PRNGKey(3), 5)
  assert images.shape == (5, 28, 28, 1)
  assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


def test_bad_settings_are_user_errors():
  with pytest.raises(UserError, match='gan_loss'):
    fam.init_state(tiny_config(gan_loss='wasserstein'), jax.random.PRNGKey(0))
  with pytest.raises(UserError, match='gamma'):
    fam.init_state(tiny_config(gamma=-1.0), jax.random.PRNGKey(0))


@pytest.mark.parametrize('name,channels', [('mnist', 1), ('celeb_a', 3)])
def test_smoke_run_on_mock_data(tmp_path, name, channels):
  config = load_config('vaegan', 'smoke')
  config.data.name = name
  config.train.batch_size = 8
  config.train.num_steps = 4
  config.train.log_every_steps = 2
  config.train.sample_every_steps = 4
  config.train.eval_every_steps = 4
  config.train.checkpoint_every_steps = 4
  config.eval.generative_metrics = False
  with mock_tfds(num_examples=16):
    state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 4
  assert state.params['encoder']['Conv_0']['kernel'].shape[2] == channels
  assert os.listdir(tmp_path / 'samples') == ['step_0000004.png']
  with open(tmp_path / 'metrics.jsonl') as f:
    rows = [json.loads(line) for line in f]
  train_rows = [r for r in rows if 'feature_recon' in r]
  assert [r['step'] for r in train_rows] == [2, 4]
  for key in ('kl', 'feature_recon', 'd_loss', 'g_loss', 'recon_mse', 'grad_norm/encoder',
              'grad_norm/decoder', 'grad_norm/discriminator'):
    assert np.isfinite(train_rows[-1][key]), key
  evals = [r for r in rows if 'eval/recon_mse' in r]
  assert evals and np.isfinite(evals[-1]['eval/kl'])
