"""models/resnet.py (SNGAN's ResNet G/D): shapes, spectral norm state, and
bfloat16 compute with float32 params, optimiser state and losses."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from conftest import load_config
from vaegan_jax.families import gan
from vaegan_jax.models import resnet


def _config(dtype='float32'):
  config = load_config('gan', 'cifar10_sngan')
  config.model.g_conv_dim = 8   # Real layout, narrow widths: seconds on CPU.
  config.model.d_conv_dim = 8
  config.gan.d_steps = 2
  config.train.compute_dtype = dtype
  return config


def test_shapes_and_spectral_norm_vectors():
  for size in (32, 64):
    g = resnet.Generator((size, size, 3), conv_dim=4)
    d = resnet.Discriminator((size, size, 3), conv_dim=4)
    z = jnp.zeros((2, 128))
    g_vars = g.init(jax.random.PRNGKey(0), z)
    x = g.apply(g_vars, z)
    assert x.shape == (2, size, size, 3) and x.dtype == jnp.float32
    d_vars = d.init(jax.random.PRNGKey(1), x)
    scores, new = d.apply(d_vars, x, update_stats=True, mutable=['batch_stats'])
    assert scores.shape == (2,) and scores.dtype == jnp.float32
    # One power iteration per call: the u vectors move only with update_stats.
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                         d_vars['batch_stats'], new['batch_stats'])
    assert max(jax.tree.leaves(moved)) > 0
    assert np.allclose(d.apply(d_vars, x), d.apply(d_vars, x))


def test_spectral_norm_bounds_each_layer():
  d = resnet.Discriminator((32, 32, 3), conv_dim=4)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  variables = d.init(jax.random.PRNGKey(1), x)
  for _ in range(30):  # Converge the power iterations.
    _, new = d.apply(variables, x, update_stats=True, mutable=['batch_stats'])
    variables = {**variables, **new}
  sigmas = [float(v) for path, v in jax.tree_util.tree_leaves_with_path(variables['batch_stats'])
            if 'sigma' in jax.tree_util.keystr(path)]
  kernels = [v for path, v in jax.tree_util.tree_leaves_with_path(variables['params'])
             if 'kernel' in jax.tree_util.keystr(path)]
  assert len(sigmas) == len(kernels) > 0
  for sigma, kernel in zip(sigmas, kernels):  # Same (sorted path) order.
    top = np.linalg.svd(np.asarray(kernel).reshape(-1, kernel.shape[-1]), compute_uv=False)[0]
    np.testing.assert_allclose(sigma, top, rtol=1e-3)


def _run(config, steps=3):
  state = gan.init_state(config, jax.random.PRNGKey(0))
  step = jax.jit(functools.partial(gan.train_step, config))
  batches = jax.random.uniform(jax.random.PRNGKey(1), (steps, 8, 32, 32, 3))
  history = []
  for i in range(steps):
    state, metrics = step(state, {'image': batches[i]})
    history.append(metrics)
  return state, history


# Tolerance of the bfloat16 step against float32 over 3 steps (2 D updates
# each) of the narrow ResNet GAN from the same float32 init and batches.
# bfloat16 keeps 8 mantissa bits (relative rounding 2^-8 ≈ 0.4 %); D's score
# is a sum over space and channels of bfloat16 products, so the hinge losses
# (|loss| 2-19 here) differ by up to 1.8 % (measured: d_loss 18.63 vs 18.70,
# g_loss -13.74 vs -13.98 at step 1; 0.3-2 % over 4 steps), and the params
# by 0.12 % of their norm after 3 steps. Tolerances: 3 % + 0.1 on losses,
# 0.5 % on params.
LOSS_RTOL = 3e-2
LOSS_ATOL = 0.1
PARAM_REL_TOL = 5e-3


def test_bfloat16_steps_agree_with_float32():
  f32_state, f32_hist = _run(_config('float32'))
  bf_state, bf_hist = _run(_config('bfloat16'))
  # Params, optimiser state and losses stay float32 under bfloat16 compute.
  for leaf in jax.tree.leaves((bf_state.params, bf_state.opt_state, bf_state.batch_stats)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32, leaf.dtype
  for metrics in bf_hist:
    for value in metrics.values():
      assert value.dtype == jnp.float32 and np.isfinite(value)
  for f32, bf in zip(f32_hist, bf_hist):
    for key in ('d_loss', 'g_loss'):
      np.testing.assert_allclose(bf[key], f32[key], atol=LOSS_ATOL, rtol=LOSS_RTOL)
  diff = optax_norm(jax.tree.map(lambda a, b: a - b, bf_state.params, f32_state.params))
  rel = diff / optax_norm(f32_state.params)
  assert 0 < rel < PARAM_REL_TOL, rel


def test_bfloat16_really_computes_in_bfloat16():
  config = _config('bfloat16')
  state = gan.init_state(config, jax.random.PRNGKey(0))
  z = jnp.zeros((2, 128))
  jaxpr = str(jax.make_jaxpr(lambda p: gan.generate(config, p, state.batch_stats['generator'],
                                                    z, train=False))(state.params['generator']))
  assert 'conv_general_dilated' in jaxpr and 'bf16' in jaxpr


def optax_norm(tree):
  return float(jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                            for x in jax.tree.leaves(tree))))
