"""conv_impl='onednn': oneDNN's convolutions as custom calls, against XLA's."""

import functools
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from test_conv_cpu import CASES, assert_close, check_conv, geometry, normal
from vaegan_jax.kernels import conv_cpu, conv_onednn
from vaegan_jax.models import layers

# oneDNN's three convolution primitives; the fused and narrow targets below.
TARGETS = ('vaegan_onednn_conv_fwd', 'vaegan_onednn_conv_bwd_data',
           'vaegan_onednn_conv_bwd_weights')
FUSED = ('vaegan_onednn_conv_fwd_bias_act', 'vaegan_onednn_deconv_fwd_bias_act')
NARROW = ('vaegan_narrow_down', 'vaegan_narrow_up', 'vaegan_narrow_wgrad')


# Built (or found in the cache) once. Where it cannot be built (no C++
# compiler, not Linux x86_64: a user's machine may lack both), the tests that
# need the library do not apply; the fallback tests below run everywhere.
BUILT = conv_onednn.available()
needs_library = pytest.mark.skipif(
    not BUILT, reason=f'oneDNN library unavailable here: {conv_onednn._status}')  # pylint: disable=protected-access


def custom_calls(fn, *args):
  """Which of the library's targets the jitted fn's HLO calls."""
  text = jax.jit(fn).lower(*args).as_text()
  return {t for t in conv_onednn.TARGETS if re.search(rf'\b{t}\b', text)}


@needs_library
@pytest.mark.parametrize('transpose,n,k,s,padding', CASES)
def test_every_map_and_second_order_match_xla(transpose, n, k, s, padding):
  """conv_cpu.conv with every map in oneDNN == XLA: outputs, d/dx, d/dK and
  the gradients of a gradient penalty (down, up and wgrad each appear in
  those), at strides 1/2, kernels 3/4/5, SAME/VALID/explicit (asymmetric,
  negative) padding, odd sizes, Conv and ConvTranspose."""
  strides, pads, dilation = geometry(transpose, n, k, s, padding)
  check_conv((2, n, n + 1, 3), (k, k, 3, 2), strides, pads, dilation,
             [conv_cpu.ONEDNN])


@needs_library
def test_one_dimensional_and_the_calls_are_onednn():
  check_conv((2, 9, 3), (3, 3, 2), (2,), ((1, 1),), (1,), [conv_cpu.ONEDNN])
  check_conv((2, 5, 3), (4, 3, 2), (1,), ((2, 3),), (2,), [conv_cpu.ONEDNN])
  x, kernel = normal((2, 7, 8, 3), 0), normal((5, 5, 3, 4), 1)
  conv = functools.partial(conv_cpu.conv, strides=(2, 2),
                           padding=((2, 2), (2, 2)), lhs_dilation=(1, 1),
                           plan=conv_cpu.ONEDNN)
  loss = lambda x, kernel: jnp.sum(conv(x, kernel)**2)
  assert custom_calls(conv, x, kernel) == {'vaegan_onednn_conv_fwd'}
  assert custom_calls(jax.grad(loss, (0, 1)), x, kernel) == set(TARGETS)


def test_choose_onednn_keeps_single_channel_up_maps_in_plain_jax():
  """Every map in oneDNN, except `up` into one channel (a ConvTranspose to an
  image, a first Conv's input gradient), which takes `choose`'s pick."""
  strided, _ = conv_cpu.conv_dims((14, 14), (5, 5), (1, 1), ((2, 3),) * 2,
                                  (2, 2))
  unit, _ = conv_cpu.conv_dims((7, 7), (5, 5), (1, 1), ((2, 2),) * 2, (1, 1))
  for dims in (strided, unit):
    assert conv_cpu.choose_onednn(dims, 256, 64, 128) == conv_cpu.ONEDNN
    plan = conv_cpu.choose_onednn(dims, 256, 1, 64)
    assert plan.up == conv_cpu.choose(dims, 256, 1, 64).up != 'onednn'
    assert (plan.down, plan.wgrad) == ('onednn', 'onednn')


def test_conv_into_one_channel_plans():
  """A unit-step Conv into one channel from >= 8 (the VAE's output conv)
  runs every map 'narrow' under choose_onednn and 'swap' forward and kernel
  gradient under choose, and the 'swap' plan gives XLA's outputs, gradients
  and gradient-penalty gradients ('narrow' below); strided or wider outputs
  keep their plans. 8 output channels exercise wgrad 'swap''s gather path
  (more than 4 channels of small)."""
  pads = ((1, 1), (1, 1))
  unit, _ = conv_cpu.conv_dims((7, 8), (3, 3), (1, 1), pads, (1, 1))
  strided, _ = conv_cpu.conv_dims((7, 8), (3, 3), (2, 2), pads, (1, 1))
  assert conv_cpu.choose_onednn(unit, 256, 32, 1) == conv_cpu.NARROW
  assert conv_cpu.NARROW in conv_cpu.valid_plans(unit, c_small=1)
  assert conv_cpu.NARROW not in conv_cpu.valid_plans(unit, c_small=2)
  assert conv_cpu.choose(unit, 256, 32, 1) == conv_cpu.Plan('swap', 'xla', 'swap')
  assert conv_cpu.choose_onednn(unit, 256, 32, 2) == conv_cpu.ONEDNN
  assert conv_cpu.choose_onednn(unit, 256, 4, 1) == conv_cpu.ONEDNN
  assert conv_cpu.choose_onednn(strided, 256, 32, 1) == conv_cpu.ONEDNN
  assert conv_cpu.choose(unit, 256, 32, 2).down == 'xla'
  swap = conv_cpu.Plan(down='swap', up='xla', wgrad='swap')
  check_conv((2, 7, 8, 32), (3, 3, 32, 1), (1, 1), pads, (1, 1), [swap])
  check_conv((2, 7, 8, 64), (3, 3, 64, 8), (1, 1), pads, (1, 1), [swap])


@needs_library
@pytest.mark.parametrize('transpose,n,k,s,padding', CASES)
def test_narrow_maps_and_second_order_match_xla(transpose, n, k, s, padding):
  """Every map 'narrow' (the small side has one channel: a Conv into one
  channel, a ConvTranspose from one) == XLA: outputs, gradients and
  gradient-penalty gradients at every geometry of CASES, with big sides of
  3 (the loops' any-width build), 8 and 32 channels (their fixed-width
  builds)."""
  strides, pads, dilation = geometry(transpose, n, k, s, padding)
  c_big = (3, 8, 32)[CASES.index((transpose, n, k, s, padding)) % 3]
  dims, is_t = conv_cpu.conv_dims((n, n + 1), (k, k), strides, pads, dilation)
  if is_t:  # small = x.
    x_shape, kernel_shape = (2, n, n + 1, 1), (k, k, 1, c_big)
  else:
    x_shape, kernel_shape = (2, n, n + 1, c_big), (k, k, c_big, 1)
  assert conv_cpu.NARROW in conv_cpu.valid_plans(dims, c_small=1)
  check_conv(x_shape, kernel_shape, strides, pads, dilation, [conv_cpu.NARROW])


@needs_library
def test_narrow_one_dimensional_and_its_calls():
  check_conv((2, 9, 8), (3, 8, 1), (1,), ((1, 1),), (1,), [conv_cpu.NARROW])
  check_conv((2, 5, 1), (4, 1, 3), (1,), ((2, 3),), (2,), [conv_cpu.NARROW])
  x, kernel = normal((2, 7, 8, 16), 0), normal((3, 3, 16, 1), 1)
  conv = functools.partial(conv_cpu.conv, strides=(1, 1),
                           padding=((1, 1), (1, 1)), lhs_dilation=(1, 1),
                           plan='onednn')
  loss = lambda x, kernel: jnp.sum(conv(x, kernel)**2)
  assert custom_calls(conv, x, kernel) == {'vaegan_narrow_down'}
  assert custom_calls(jax.grad(loss, (0, 1)), x, kernel) == set(NARROW)


def fused_pair(transpose, activation, slope, **kw):
  """(layer with the activation inside, impl='onednn'; the function it must
  equal: impl='xla' then flax's activation)."""
  cls = layers.ConvTranspose if transpose else layers.Conv
  ours = cls(impl='onednn', activation=activation, negative_slope=slope,
             precision=jax.lax.Precision.HIGHEST, **kw)
  ref = cls(impl='xla', precision=jax.lax.Precision.HIGHEST, **kw)
  act = nn.relu if activation == 'relu' else functools.partial(
      nn.leaky_relu, negative_slope=slope)
  return ours, lambda p, x: act(ref.apply(p, x))


@needs_library
@pytest.mark.parametrize('transpose,activation,kw,x_shape,fused', [
    (True, 'relu', dict(kernel_size=(3, 3), strides=(2, 2)), (2, 7, 7, 5), True),
    (True, 'leaky_relu', dict(kernel_size=(4, 4), strides=(2, 2)), (2, 7, 6, 5), True),
    (True, 'relu', dict(kernel_size=(5, 5), strides=(2, 2)), (2, 5, 5, 3), True),
    (True, 'relu', dict(kernel_size=(3, 3), strides=(2, 2), padding='VALID'),
     (2, 5, 5, 3), True),
    # Padding beyond the kernel: output rows no tap reaches, left unfused.
    (True, 'relu', dict(kernel_size=(3, 3), strides=(2, 2), padding=((3, 3), (3, 3))),
     (2, 5, 5, 3), False),
    (False, 'relu', dict(kernel_size=(3, 3), strides=(2, 2)), (2, 9, 9, 5), True),
    (False, 'leaky_relu', dict(kernel_size=(5, 5), strides=(2, 2), padding='VALID'),
     (2, 11, 12, 5), True),
    (False, 'leaky_relu', dict(kernel_size=(3,), padding=1), (2, 9, 5), True),
])
def test_fused_bias_activation_matches_xla_then_activation(
    transpose, activation, kw, x_shape, fused):
  """activation='relu' / 'leaky_relu' under impl='onednn': one fused oneDNN
  call where it applies, and outputs, gradients and gradient-penalty
  gradients equal to impl='xla' followed by flax's activation."""
  ours, ref = fused_pair(transpose, activation, 0.2, features=6, **kw)
  x = normal(x_shape, 0)
  params = ours.init(jax.random.key(0), x)
  params = jax.tree.map(lambda p: p + 0.3 * normal(p.shape, 5), params)

  def outputs_and_grads(apply):
    def loss(p, x):
      y = apply(p, x)
      return jnp.sum(jnp.tanh(y) * jnp.cos(jnp.arange(y.size).reshape(y.shape)))
    penalty = lambda p, x: jnp.sum(jax.grad(loss, argnums=1)(p, x)**2)
    return jax.jit(lambda p, x: (apply(p, x), jax.grad(loss, (0, 1))(p, x),
                                 jax.grad(penalty)(p, x)))(params, x)

  jax.tree.map(assert_close, outputs_and_grads(ref),
               outputs_and_grads(ours.apply))
  calls = custom_calls(ours.apply, params, x)
  want = {FUSED[1] if transpose and kw['strides'] != 1 else FUSED[0]}
  assert (calls == want) if fused else not calls & set(FUSED)


def test_activation_field_equals_flax_activation_bitwise():
  """For every impl that does not fuse ('xla', 'fast', 'gemm'), and without a
  bias, activation='relu' / 'leaky_relu' computes exactly nn.relu /
  nn.leaky_relu of the layer's output: bit-identical outputs and gradients
  (so the default runs' numbers do not move)."""
  x = normal((2, 7, 7, 3), 0)
  for impl, transpose, use_bias in [('xla', False, True), ('fast', True, True),
                                    ('gemm', True, True), ('fast', False, False)]:
    cls = layers.ConvTranspose if transpose else layers.Conv
    for activation, act in [('relu', nn.relu),
                            ('leaky_relu', lambda y: nn.leaky_relu(y, 0.2))]:
      kw = dict(features=4, kernel_size=(3, 3), strides=(2, 2), impl=impl,
                use_bias=use_bias)
      ours = cls(activation=activation, negative_slope=0.2, **kw)
      plain = cls(**kw)
      params = plain.init(jax.random.key(0), x)
      params = jax.tree.map(lambda p: p + 0.3 * normal(p.shape, 5), params)
      f = lambda p, x: jnp.sum(jnp.tanh(ours.apply(p, x)))
      g = lambda p, x: jnp.sum(jnp.tanh(act(plain.apply(p, x))))
      for a, b in [(ours.apply(params, x), act(plain.apply(params, x))),
                   (jax.grad(f, (0, 1))(params, x), jax.grad(g, (0, 1))(params, x))]:
        jax.tree.map(np.testing.assert_array_equal, a, b)


def test_activation_names_are_checked():
  x = normal((2, 5, 5, 3), 0)
  with pytest.raises(ValueError, match="Unknown activation 'gelu'"):
    layers.Conv(4, (3, 3), activation='gelu').init(jax.random.key(0), x)
  with pytest.raises(ValueError, match='negative_slope >= 0'):
    layers.Conv(4, (3, 3), activation='leaky_relu',
                negative_slope=-0.1).init(jax.random.key(0), x)


@needs_library
def test_layer_to_one_channel_runs_its_up_map_in_plain_jax():
  """impl='onednn' ConvTranspose(1): the forward (an `up` map into a single
  channel) has no oneDNN call; its input and kernel gradients do."""
  layer = layers.ConvTranspose(1, (5, 5), strides=(2, 2), impl='onednn')
  x = normal((2, 7, 7, 3), 0)
  params = layer.init(jax.random.key(0), x)
  assert not custom_calls(layer.apply, params, x)
  loss = lambda p, x: jnp.sum(layer.apply(p, x)**2)
  assert custom_calls(jax.grad(loss, (0, 1)), params, x) == {
      'vaegan_onednn_conv_fwd', 'vaegan_onednn_conv_bwd_weights'}


def layer_pair(transpose, impl, **kw):
  cls = layers.ConvTranspose if transpose else layers.Conv
  return cls(impl=impl, precision=jax.lax.Precision.HIGHEST, **kw)


@needs_library
@pytest.mark.parametrize('transpose,kw,x_shape', [
    (True, dict(kernel_size=(5, 5), strides=(2, 2)), (2, 7, 7, 3)),
    (True, dict(kernel_size=(4, 4), strides=(2, 2), use_bias=False),
     (2, 7, 6, 3)),
    (False, dict(kernel_size=(5, 5), strides=(2, 2), padding='VALID'),
     (2, 11, 11, 2)),
    (False, dict(kernel_size=3, padding=1), (2, 8, 2)),
])
def test_layers_params_like_flax_and_outputs_like_xla(transpose, kw, x_shape):
  """Param trees identical to flax's; outputs, gradients and second-order
  gradients (d/dparams of ||d loss / dx||^2) equal impl='xla''s."""
  flax_cls = nn.ConvTranspose if transpose else nn.Conv
  x = normal(x_shape, 0)
  params = flax_cls(features=4, **kw).init(jax.random.key(0), x)
  ours = layer_pair(transpose, 'onednn', features=4, **kw)
  jax.tree.map(functools.partial(assert_close, tol=0), params,
               ours.init(jax.random.key(0), x))
  params = jax.tree.map(lambda p: p + 0.3 * normal(p.shape, 5), params)

  def outputs_and_grads(layer):
    def loss(p, x):
      y = layer.apply(p, x)
      return jnp.sum(jnp.tanh(y) * jnp.cos(jnp.arange(y.size).reshape(y.shape)))
    penalty = lambda p, x: jnp.sum(jax.grad(loss, argnums=1)(p, x)**2)
    return jax.jit(lambda p, x: (layer.apply(p, x), jax.grad(loss, (0, 1))(p, x),
                                 jax.grad(penalty)(p, x)))(params, x)

  want = outputs_and_grads(layer_pair(transpose, 'xla', features=4, **kw))
  got = outputs_and_grads(ours)
  jax.tree.map(assert_close, want, got)
  assert custom_calls(lambda p: ours.apply(p, x), params)


class TinyAutoencoder(nn.Module):
  """Conv k3 s2 -> Conv k5 s1 -> ConvT k4 s2 -> ConvT k3 s2 'VALID'."""
  impl: str

  @nn.compact
  def __call__(self, x):
    x = nn.leaky_relu(layers.Conv(6, (3, 3), strides=(2, 2), impl=self.impl)(x))
    x = nn.leaky_relu(layers.Conv(8, (5, 5), impl=self.impl)(x))
    x = nn.leaky_relu(layers.ConvTranspose(4, (4, 4), strides=(2, 2),
                                           impl=self.impl)(x))
    return layers.ConvTranspose(1, (3, 3), strides=(2, 2), padding='VALID',
                                impl=self.impl)(x)


@pytest.mark.parametrize('built', [pytest.param(True, marks=needs_library), False],
                         ids=['onednn_builds', 'onednn_unavailable'])
def test_train_steps_of_auto_match_xla(built, monkeypatch):
  """Four Adam steps of a small conv autoencoder with impl='auto' follow
  impl='xla''s losses and parameters, whichever implementation 'auto' picks:
  'onednn' where it builds, 'gemm' where it cannot (simulated). (The
  families' own steps with 'xla' take half a minute even at toy widths:
  XLA:CPU's ConvTranspose kernel gradient, layers.py.)"""
  if not built:
    monkeypatch.setattr(conv_onednn, 'status', lambda cache_dir=None: (False, 'simulated'))
  picked = 'onednn' if built else 'gemm'
  assert layers.resolve_impl('auto') == picked
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 13, 13, 1))
  optimizer = optax.adam(1e-2)

  def run(impl):
    model = TinyAutoencoder(impl)
    # Random params shaped by eval_shape: flax's init is slow to compile.
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    params = jax.tree.map(lambda s: 0.3 * normal(s.shape, s.size), shapes)
    assert jax.eval_shape(model.apply, params, x).shape == (4, 29, 29, 1)
    loss = lambda p: jnp.mean((model.apply(p, x)[:, :13, :13] - x)**2)

    @jax.jit
    def step(params, opt_state):
      value, grads = jax.value_and_grad(loss)(params)
      updates, opt_state = optimizer.update(grads, opt_state)
      return optax.apply_updates(params, updates), opt_state, value

    opt_state, losses = optimizer.init(params), []
    for _ in range(4):
      params, opt_state, value = step(params, opt_state)
      losses.append(float(value))
    return np.array(losses), params

  x_probe = jnp.zeros((1, 13, 13, 1))
  probe = TinyAutoencoder('auto')
  probe_params = jax.eval_shape(probe.init, jax.random.PRNGKey(0), x_probe)
  calls = custom_calls(lambda p: probe.apply(p, x_probe), probe_params)
  assert bool(calls) == built, calls  # The oneDNN calls run exactly when picked.
  (want_losses, want_params), (losses, params) = run('xla'), run('auto')
  assert want_losses[-1] < want_losses[0]
  np.testing.assert_allclose(losses, want_losses, rtol=1e-4)
  jax.tree.map(functools.partial(assert_close, tol=1e-4), want_params, params)


def test_auto_is_onednn_on_one_cpu_device_else_gemm(monkeypatch):
  """The chooser: 'onednn' where its calls build and the process has one
  device; 'gemm' (the next fastest, layers.auto_impl) where they cannot, or
  under several devices (the calls carry no sharding rule); each with why."""
  monkeypatch.setattr(conv_onednn, 'status', lambda cache_dir=None: (True, ''))
  assert layers.auto_impl() == ('onednn', "oneDNN's CPU convolutions")
  assert layers.resolve_for_run('auto') == ('onednn', "oneDNN's CPU convolutions")
  assert layers.resolve_for_run('onednn') == ('onednn', 'as configured')
  with monkeypatch.context() as m:
    m.setattr(jax, 'device_count', lambda: 4)
    impl, why = layers.auto_impl()
    assert impl == 'gemm' and why.startswith('4 devices: ') and 'sharding' in why
  reason = 'no C++ compiler found: set CXX'
  monkeypatch.setattr(conv_onednn, 'status', lambda cache_dir=None: (False, reason))
  assert layers.auto_impl() == ('gemm', f'oneDNN unavailable: {reason}')
  assert layers.resolve_impl('auto') == 'gemm'
  assert layers.resolve_for_run('onednn') == ('gemm', f"conv_impl='onednn' unavailable: {reason}")
  assert layers.resolve_for_run('fast') == ('fast', 'as configured')
  with pytest.raises(ValueError, match='Unknown conv impl'):
    layers.resolve_for_run('eigen')


@pytest.mark.parametrize('cause', ['no compiler', 'not x86_64'])
def test_fallback_prints_one_line_and_runs_gemm(cause, monkeypatch, tmp_path,
                                                capsys):
  monkeypatch.setattr(conv_onednn, '_status', None)
  monkeypatch.setattr(conv_onednn, '_noted', False)
  monkeypatch.setattr(conv_onednn, 'DEFAULT_CACHE_DIR', str(tmp_path))
  if cause == 'no compiler':
    monkeypatch.setenv('CXX', '')
    monkeypatch.setenv('PATH', '')
    reason = 'no C++ compiler found: set CXX'
  else:
    monkeypatch.setattr(conv_onednn.platform, 'machine', lambda: 'aarch64')
    reason = 'needs Linux x86_64, not linux aarch64'
  x = normal((2, 7, 7, 3), 0)
  outputs = {}
  for impl in ('onednn', 'gemm', 'onednn'):
    assert layers.resolve_impl(impl) == 'gemm'
    layer = layer_pair(True, impl, features=2, kernel_size=(5, 5),
                       strides=(2, 2))
    params = layer.init(jax.random.key(0), x)
    outputs[impl] = jax.jit(jax.grad(
        lambda p, layer=layer: jnp.sum(layer.apply(p, x)**2)))(params)
  assert capsys.readouterr().out == (
      f"note: conv_impl='onednn' unavailable ({reason}); using 'gemm'\n")
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b),
               outputs['onednn'], outputs['gemm'])
  assert os.listdir(tmp_path) == []


@needs_library
def test_build_is_cached(monkeypatch, tmp_path):
  """The first build compiles into the cache (no temporary file left), the
  second finds it there and compiles nothing."""
  compiles = []
  run = conv_onednn.subprocess.run

  def counting_run(cmd, **kw):
    compiles.append(cmd)
    return run(cmd, **kw)

  monkeypatch.setattr(conv_onednn.subprocess, 'run', counting_run)
  first = conv_onednn.build(str(tmp_path))
  assert len(compiles) == 1 and os.listdir(tmp_path) == [
      os.path.basename(first)]
  assert os.path.basename(first).startswith('onednn_conv-')
  assert conv_onednn.build(str(tmp_path)) == first
  assert len(compiles) == 1


@needs_library
def test_concurrent_calls_from_many_threads_give_the_single_thread_result():
  """XLA runs a step's custom calls from several of its threads, and runs
  steps from several Python threads: every primitive (built once, cached) must
  run on any thread, also concurrently with others, with the result of one
  thread alone. Several geometries (their forward, input and kernel
  gradients) in one jitted function, from 4 Python threads, 12 times each."""
  import threading  # pylint: disable=g-import-not-at-top
  shapes = [((8, 14, 14, 16), (5, 5, 16, 32), 2), ((8, 7, 7, 32), (3, 3, 32, 8), 1),
            ((8, 28, 28, 1), (4, 4, 1, 16), 2), ((8, 14, 14, 32), (3, 3, 32, 1), 1)]
  args = [(normal(x, i), normal(k, 10 + i)) for i, (x, k, _) in enumerate(shapes)]
  bias = normal((32,), 20)

  def loss(args):
    total = 0.0
    for (x, kernel), (_, _, s) in zip(args, shapes):
      y = conv_cpu.conv(x, kernel, strides=(s, s), padding=((1, 2), (1, 2)),
                        lhs_dilation=(1, 1), plan='onednn')  # narrow for -> 1
      total = total + jnp.sum(jnp.tanh(y))
    (x, kernel), _ = args[0], shapes[0]  # Bias + ReLU fused, and a ConvT.
    y = conv_cpu.conv_bias_act(x, kernel, bias, (2, 2), ((1, 2), (1, 2)), (1, 1))
    z = conv_cpu.conv_bias_act(y, jnp.swapaxes(kernel, 2, 3), bias[:16], (1, 1),
                               ((2, 3), (2, 3)), (2, 2), slope=0.2)
    return total + jnp.sum(jnp.tanh(z))

  fn = jax.jit(jax.value_and_grad(loss))
  assert custom_calls(fn, args) == set(conv_onednn.TARGETS)
  expected = jax.device_get(fn(args))
  failures, lock = [], threading.Lock()

  def worker():
    for _ in range(12):
      got = jax.device_get(fn(args))
      same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got),
                                                      jax.tree.leaves(expected)))
      if not same:
        with lock:
          failures.append(got)

  threads = [threading.Thread(target=worker) for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not failures, f'{len(failures)} of 48 concurrent calls differed from one thread alone'


@needs_library
def test_vae_convs_run_fused_and_narrow():
  """The VAE (convvae28's shapes) under conv_impl='onednn': every Conv and
  ConvT + ReLU is one fused call, the output conv into one channel runs
  'narrow'; its training gradient adds oneDNN's backward maps, and no
  unfused forward call is left."""
  from vaegan_jax.models import vae  # pylint: disable=g-import-not-at-top
  encoder = vae.Encoder(latent_dim=16, width=32, hidden=16, kernel_size=3,
                        conv_impl='onednn')
  decoder = vae.Decoder(image_shape=(28, 28, 1), width=32, hidden=0,
                        kernel_size=3, conv_impl='onednn')
  x = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))
  z = jnp.zeros((2, 16))
  enc_params = encoder.init(jax.random.key(1), x)
  dec_params = decoder.init(jax.random.key(2), z)
  assert custom_calls(encoder.apply, enc_params, x) == {FUSED[0]}
  assert custom_calls(decoder.apply, dec_params, z) == {FUSED[1], NARROW[0]}
  loss = lambda p: jnp.sum(decoder.apply(p, encoder.apply(enc_params, x)[0])**2)
  assert custom_calls(jax.grad(loss), dec_params) == {
      FUSED[0], FUSED[1], *NARROW, 'vaegan_onednn_conv_fwd',
      'vaegan_onednn_conv_bwd_weights'}
