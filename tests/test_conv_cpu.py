"""conv_cpu: every formulation of down / up / wgrad against XLA's convolution."""

import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from vaegan_jax import families
from vaegan_jax.kernels import conv_cpu
from vaegan_jax.models import layers

# The plain-JAX formulations; the built library's ('onednn', 'narrow') have
# tests/test_conv_onednn.py.
PLAIN = {m: tuple(h for h in v if h not in conv_cpu.LIBRARY)
         for m, v in conv_cpu.FORMULATIONS.items()}

HIGHEST = lax.Precision.HIGHEST


def normal(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape),
                     jnp.float32)


def assert_close(a, b, tol=1e-5):
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape, (a.shape, b.shape)
  err = float(np.abs(a - b).max(initial=0.0))
  assert err <= tol * max(1.0, float(np.abs(a).max(initial=0.0))), err


def geometry(transpose, n, k, s, padding):
  """(strides, explicit padding, lhs_dilation) of a Conv / ConvTranspose."""
  if transpose:
    if isinstance(padding, str):
      padding = [layers._transpose_padding(k, s, padding)] * 2  # pylint: disable=protected-access
    return (1, 1), tuple(map(tuple, padding)), (s, s)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads((n, n + 1), (k, k), (s, s), padding)
  return (s, s), tuple((int(lo), int(hi)) for lo, hi in padding), (1, 1)


# (ConvTranspose?, input size, kernel, stride, padding): kernels 3/4/5,
# strides 1/2, 'SAME', 'VALID' and explicit (asymmetric, negative) padding;
# inputs are n x (n + 1), so one side is always odd.
CASES = [
    (False, 7, 3, 2, 'SAME'), (False, 8, 4, 2, 'SAME'),
    (False, 9, 5, 2, 'VALID'), (False, 7, 3, 1, 'SAME'),
    (False, 6, 4, 1, 'VALID'), (False, 9, 5, 2, ((2, 1), (0, 3))),
    (True, 7, 5, 2, 'SAME'), (True, 6, 4, 2, 'SAME'),
    (True, 7, 3, 2, 'VALID'), (True, 7, 5, 1, 'SAME'),
    (True, 8, 3, 1, 'VALID'), (True, 9, 4, 2, ((3, 0), (-1, 2))),
]


@pytest.mark.parametrize('transpose,n,k,s,padding', CASES)
def test_every_formulation_matches_xla(transpose, n, k, s, padding):
  """Each map, each formulation == XLA's conv / its input or kernel VJP."""
  strides, pads, dilation = geometry(transpose, n, k, s, padding)
  x, kernel = normal((2, n, n + 1, 3), 0), normal((k, k, 3, 4), 1)
  dims, is_t = conv_cpu.conv_dims(x.shape[1:-1], (k, k), strides, pads,
                                  dilation)
  assert is_t == (transpose and s > 1)  # A stride-1 ConvT is a Conv.
  ref = functools.partial(layers._xla_conv, strides=strides, padding=pads,  # pylint: disable=protected-access
                          lhs_dilation=dilation, precision=HIGHEST)
  y = ref(x, kernel)
  dy = normal(y.shape, 2)
  _, vjp = jax.vjp(ref, x, kernel)
  dx, dk = vjp(dy)
  # In down/up/wgrad terms: big, small, W and dW.
  if is_t:
    flip = lambda a: jnp.swapaxes(a[::-1, ::-1], -1, -2).reshape(k * k, 4, 3)
    big, small, w, want = dy, x, flip(kernel), {'down': dx, 'up': y,
                                                'wgrad': flip(dk)}
  else:
    big, small, w, want = x, dy, kernel.reshape(k * k, 3, 4), {
        'down': y, 'up': dx, 'wgrad': dk.reshape(k * k, 3, 4)}
  unit = all(d.step == 1 for d in dims)

  @jax.jit
  def every(big, small, w):
    out = {}
    for how in PLAIN['down']:
      out['down', how] = conv_cpu._down_impl(big, w, dims, HIGHEST, how)  # pylint: disable=protected-access
    for how in PLAIN['up']:
      out['up', how] = conv_cpu._up_impl(small, w, dims, HIGHEST, how)  # pylint: disable=protected-access
    for how in PLAIN['wgrad']:
      if how != 'swap' or unit:
        out['wgrad', how] = conv_cpu._wgrad_impl(big, small, dims, HIGHEST,  # pylint: disable=protected-access
                                                 how)
    return out

  got = every(big, small, w)
  assert len(got) == sum(len(v) for v in PLAIN.values()) - (
      0 if unit else 1)
  for (name, how), value in got.items():
    assert_close(want[name], value)
  plan = conv_cpu.choose(dims, 2, big.shape[-1], small.shape[-1])
  assert plan in conv_cpu.valid_plans(dims)


def outputs_and_grads(conv, x, kernel, second_order):
  """y, d/d(x, K) of a loss, and d/d(x, K) of ||d loss / dx||^2 (WGAN-GP)."""
  def loss(x, kernel):
    y = conv(x, kernel)
    weights = jnp.cos(jnp.arange(y.size, dtype=y.dtype)).reshape(y.shape)
    return jnp.sum(jnp.tanh(y) * weights)

  def penalty(x, kernel):
    return jnp.sum(jax.grad(loss)(x, kernel)**2)

  out = {'y': conv(x, kernel), 'grads': jax.grad(loss, (0, 1))(x, kernel)}
  if second_order:
    out['penalty_grads'] = jax.grad(penalty, (0, 1))(x, kernel)
  return out


def check_conv(x_shape, kernel_shape, strides, pads, dilation, plans,
               second_order=True):
  """conv_cpu.conv with each plan == XLA: outputs, grads, grads of grads."""
  x, kernel = normal(x_shape, 3), normal(kernel_shape, 4) * 0.3
  ref = functools.partial(layers._xla_conv, strides=strides, padding=pads,  # pylint: disable=protected-access
                          lhs_dilation=dilation, precision=HIGHEST)

  def every(x, kernel):
    out = [outputs_and_grads(ref, x, kernel, second_order)]
    for plan in plans:
      conv = functools.partial(conv_cpu.conv, strides=strides, padding=pads,
                               lhs_dilation=dilation, precision=HIGHEST,
                               plan=plan)
      out.append(outputs_and_grads(conv, x, kernel, second_order))
    return out

  want, *got = jax.jit(every)(x, kernel)
  for value in got:
    jax.tree.map(assert_close, want, value)


def every_formulation_once(dims):
  """Plans that between them use each formulation of each map."""
  forms = PLAIN
  unit = all(d.step == 1 for d in dims)
  wgrads = [w for w in forms['wgrad'] if unit or w != 'swap']
  count = max(len(forms['down']), len(forms['up']), len(wgrads))
  return [conv_cpu.Plan(forms['down'][i % len(forms['down'])],
                        forms['up'][i % len(forms['up'])],
                        wgrads[i % len(wgrads)]) for i in range(count)]


@pytest.mark.parametrize('transpose,n,k,s,padding', CASES[::3])
def test_gradient_rules_and_second_order(transpose, n, k, s, padding):
  """The custom VJPs (each map's backward made of the maps) are right."""
  strides, pads, dilation = geometry(transpose, n, k, s, padding)
  dims, _ = conv_cpu.conv_dims((n, n + 1), (k, k), strides, pads, dilation)
  check_conv((2, n, n + 1, 3), (k, k, 3, 2), strides, pads, dilation,
             every_formulation_once(dims))


def test_one_dimensional():
  check_conv((2, 9, 3), (3, 3, 2), (2,), ((1, 1),), (1,), [None])
  check_conv((2, 5, 3), (4, 3, 2), (1,), ((2, 3),), (2,), [None])


def _config_convs():
  """Every conv of the default and bench configs: (x shape, kernel shape,
  strides, padding, lhs_dilation), with batch 2."""
  seen = []
  original = conv_cpu.conv

  def record(x, kernel, strides, padding, lhs_dilation, precision=None,
             plan=None):
    entry = ((2,) + x.shape[1:], kernel.shape, tuple(strides),
             tuple(padding), tuple(lhs_dilation))
    if entry not in seen:
      seen.append(entry)
    return original(x, kernel, strides, padding, lhs_dilation, precision,
                    plan)

  conv_cpu.conv = record
  try:
    for name in ('vae', 'gan', 'vaegan', 'bench.dcgan28', 'bench.convvae28'):
      config = load_config(name)
      config.model.conv_impl = 'gemm'
      family = families.get(config.model.family)
      jax.eval_shape(functools.partial(family.init_state, config),
                     jax.random.key(0))
  finally:
    conv_cpu.conv = original
  return seen


def test_chosen_plans_at_the_config_shapes():
  """At every conv geometry the configs use, the chooser's plan (for the real
  channel counts) is a valid one and gives XLA's outputs, gradients and
  gradient-penalty gradients (run with 3 -> 2 channels: the plan fixes the
  code path). Penalties differentiate through D, which has no ConvTranspose,
  so transposed layers are checked to first order."""
  convs = _config_convs()
  assert len(convs) >= 10
  tested = []
  for x_shape, kernel_shape, strides, pads, dilation in convs:
    dims, transpose = conv_cpu.conv_dims(x_shape[1:-1], kernel_shape[:-2],
                                         strides, pads, dilation)
    c_in, c_out = kernel_shape[-2:]
    plan = conv_cpu.choose(dims, 2, *((c_out, c_in) if transpose
                                      else (c_in, c_out)))
    assert plan in conv_cpu.valid_plans(dims)
    if (dims, plan) not in tested:
      tested.append((dims, plan))
      check_conv(x_shape[:-1] + (3,), kernel_shape[:-2] + (3, 2), strides,
                 pads, dilation, [plan], second_order=not transpose)
