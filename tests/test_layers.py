"""layers.Conv / ConvTranspose against flax.linen.Conv / ConvTranspose."""

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from vaegan_jax.models import layers

HIGHEST = lax.Precision.HIGHEST


def assert_close(a, b, tol=1e-5):
  """|a - b| <= tol * max(1, |a|) elementwise-max, for every leaf."""
  def check(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape)
    scale = max(1.0, float(np.abs(a).max(initial=0.0)))
    err = float(np.abs(a - b).max(initial=0.0))
    assert err <= tol * scale, f'max |a - b| = {err:.3g} > {tol} * {scale:.3g}'
  jax.tree.map(check, a, b)


def pair(transpose, **kw):
  """(flax layer, {impl: ours with that impl} for 'xla', 'fast', 'gemm')."""
  ref_cls = nn.ConvTranspose if transpose else nn.Conv
  cls = layers.ConvTranspose if transpose else layers.Conv
  return (ref_cls(precision=HIGHEST, **kw),
          {impl: cls(precision=HIGHEST, impl=impl, **kw)
           for impl in ('xla', 'fast', 'gemm')})


def normal(shape, seed=0, scale=1.0):
  """NumPy draws: jax.random would compile anew for every shape."""
  rng = np.random.default_rng(seed)
  return jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)


def random_params(in_features, features, kernel_size, use_bias=True, **_):
  """A param tree shaped like flax's (flax's init is slow to compile)."""
  ksize = (kernel_size,) if isinstance(kernel_size, int) else kernel_size
  params = {'kernel': normal(tuple(ksize) + (in_features, features), 1, 0.3)}
  if use_bias:
    params['bias'] = normal((features,), 2)
  return {'params': params}


def compare(transpose, x_shape, second_order=False, **kw):
  """flax's params give the same outputs and gradients in both impls."""
  ref, ours = pair(transpose, **kw)
  x = normal(x_shape)
  params = random_params(x_shape[-1], **kw)

  def outputs_and_grads(layer):
    def run(params, x):
      y = layer.apply(params, x)
      r = jnp.cos(jnp.arange(y.size, dtype=y.dtype)).reshape(y.shape)
      loss = lambda p, x: jnp.sum(jnp.tanh(layer.apply(p, x)) * r)
      if second_order:  # WGAN-GP / R1: d/dparams of ||dD/dx||^2
        penalty = lambda p, x: jnp.sum(jax.grad(loss, argnums=1)(p, x)**2)
        return y, jax.grad(penalty)(params, x)
      return y, jax.grad(loss, argnums=(0, 1))(params, x)
    return jax.jit(run)(params, x)

  y, expected = outputs_and_grads(ref)
  # Gradients sum in another order than XLA's: float32 promises |error| <=
  # n * eps * max|term| for a sum of n terms; the longest sum here is the
  # kernel gradient's, over every output position of the batch.
  n = max(int(np.prod(y.shape[:-1])), int(np.prod(kw['kernel_size'])) * max(x_shape[-1], y.shape[-1]))
  grad_tol = max(1e-5, n * float(np.finfo(np.float32).eps))
  for impl in ('xla', 'fast'):
    y_ours, grads = outputs_and_grads(ours[impl])
    assert_close(y, y_ours, tol=0)  # the very same XLA convolution
    assert_close(expected, grads, tol=grad_tol)
  y_gemm, grads = outputs_and_grads(ours['gemm'])
  assert_close(y, y_gemm)  # GEMMs: the same sums in another order
  assert_close(expected, grads, tol=grad_tol)
  return y


@pytest.mark.parametrize('transpose,kw,x_shape', [
    (True, dict(kernel_size=(5, 5), strides=(2, 2)), (1, 7, 7, 3)),
    (True, dict(kernel_size=(4, 4), strides=(2, 2), use_bias=False),
     (1, 7, 7, 3)),
    (False, dict(kernel_size=(3, 3), strides=(2, 2)), (1, 8, 8, 1)),
    (False, dict(kernel_size=3, padding=1), (1, 8, 1)),
])
def test_param_trees_identical_to_flax(transpose, kw, x_shape):
  ref, ours = pair(transpose, features=4, **kw)
  x = jnp.ones(x_shape)
  params = ref.init(jax.random.key(0), x)
  for layer in ours.values():
    assert_close(params, layer.init(jax.random.key(0), x), tol=0)


# (kernel, stride, input size, input channels, features): every kernel size
# with both strides, every input size and channel count at least once.
CONFIGS = [
    (3, 1, 7, 3, 4), (3, 2, 14, 1, 8), (3, 2, 16, 64, 2), (3, 2, 32, 1, 1),
    (4, 1, 16, 3, 3), (4, 2, 7, 64, 3), (4, 2, 14, 3, 1), (4, 2, 32, 3, 2),
    (5, 1, 14, 64, 1), (5, 2, 7, 3, 64), (5, 2, 16, 1, 3), (5, 2, 32, 1, 4),
]


@pytest.mark.parametrize('k,s,n,c,f', CONFIGS)
def test_conv_transpose_same_matches_flax(k, s, n, c, f):
  y = compare(True, (2, n, n, c), features=f, kernel_size=(k, k),
              strides=(s, s), padding='SAME')
  assert y.shape == (2, n * s, n * s, f)


@pytest.mark.parametrize('k,s,n,c,f', CONFIGS[::2])
def test_conv_same_matches_flax(k, s, n, c, f):
  y = compare(False, (2, n, n, c), features=f, kernel_size=(k, k),
              strides=(s, s), padding='SAME')
  assert y.shape == (2, -(-n // s), -(-n // s), f)


@pytest.mark.parametrize('transpose,k,s,padding', [
    (False, 4, 2, 1),                      # DCGAN-64 style Conv: 32 -> 16
    (False, 4, 2, ((1, 1), (1, 1))),
    (False, 5, 2, ((2, 1), (0, 3))),       # asymmetric
    (False, 3, 2, 'VALID'),
    (True, 4, 2, ((2, 2), (2, 2))),        # = PyTorch ConvTranspose2d(p=1)
    (True, 4, 2, ((1, 1), (1, 1))),
    (True, 5, 2, ((3, 0), (-1, 2))),       # asymmetric, negative
    (True, 3, 2, 'VALID'),
])
def test_explicit_and_valid_padding_match_flax(transpose, k, s, padding):
  compare(transpose, (2, 9, 9, 3), features=4, kernel_size=(k, k),
          strides=(s, s), padding=padding)


@pytest.mark.parametrize('transpose', [False, True])
def test_second_order_gradients_match_flax(transpose):
  compare(transpose, (2, 8, 8, 3), second_order=True, features=4,
          kernel_size=(5, 5), strides=(2, 2), padding='SAME')


@pytest.mark.parametrize('transpose', [False, True])
def test_no_bias_param_dtype_and_stride_one(transpose):
  compare(transpose, (2, 6, 6, 2), features=3, kernel_size=(3, 3),
          use_bias=False)
  ref, ours = pair(transpose, features=3, kernel_size=(3, 3),
                   param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
  x = jnp.ones((1, 6, 6, 2))
  shapes = jax.eval_shape(ref.init, jax.random.key(0), x)
  params = jax.tree.map(lambda s: normal(s.shape).astype(s.dtype), shapes)
  for impl in ('fast', 'gemm'):
    layer = ours[impl]
    assert shapes == jax.eval_shape(layer.init, jax.random.key(0), x)
    grads = jax.jit(jax.grad(
        lambda p, layer=layer: jnp.sum(layer.apply(p, x).astype(jnp.float32))))(params)
    assert jax.tree.map(lambda g: g.dtype, grads) == jax.tree.map(
        lambda p: p.dtype, params)


@pytest.mark.parametrize('transpose', [False, True])
def test_batch_dims_and_1d_kernel_like_flax(transpose):
  compare(transpose, (5, 5, 2), features=3, kernel_size=(3, 3),
          strides=(2, 2))                        # unbatched
  compare(transpose, (2, 2, 5, 5, 2), features=3, kernel_size=(3, 3),
          strides=(2, 2))                        # two batch dims
  compare(transpose, (2, 9, 2), features=3, kernel_size=3, strides=2)  # 1-D


def test_dcgan_generator_stack_matches_flax():
  """7 -> 14 -> 28 as in dcgan28 G, params moved between flax and ours."""

  class Net(nn.Module):
    conv_t: type

    @nn.compact
    def __call__(self, x):
      x = self.conv_t(8, (5, 5), strides=(1, 1), use_bias=False)(x)
      x = nn.leaky_relu(self.conv_t(4, (5, 5), strides=(2, 2))(x))
      return self.conv_t(1, (5, 5), strides=(2, 2))(x)

  x = normal((2, 7, 7, 16))
  ref = Net(lambda *a, **k: nn.ConvTranspose(*a, precision=HIGHEST, **k))
  ours = Net(lambda *a, **k: layers.ConvTranspose(*a, precision=HIGHEST,
                                                  impl='fast', **k))
  shapes = jax.eval_shape(ref.init, jax.random.key(0), x)
  assert shapes == jax.eval_shape(ours.init, jax.random.key(0), x)
  params = jax.tree.map(lambda s: normal(s.shape, scale=0.2), shapes)
  loss = lambda net: jax.jit(jax.grad(lambda p: jnp.sum(net.apply(p, x)**2)))
  assert ours.apply(params, x).shape == (2, 28, 28, 1)
  assert_close(loss(ref)(params), loss(ours)(params))


def test_impl_names():
  assert layers.resolve_impl('xla') == 'xla'
  assert layers.resolve_impl('fast') == 'fast'
  assert layers.resolve_impl('gemm') == 'gemm'
  assert layers.resolve_impl('auto') == layers.auto_impl()[0]
  assert layers.auto_impl()[0] in (('onednn', 'gemm') if jax.default_backend() == 'cpu'
                                   else ('xla',))
  with pytest.raises(ValueError, match='Unknown conv impl'):
    layers.Conv(2, (3, 3), impl='eigen').init(jax.random.key(0),
                                              jnp.ones((1, 4, 4, 1)))


def test_unsupported_padding_says_what_to_use():
  with pytest.raises(ValueError, match='flax.linen.Conv'):
    layers.Conv(2, (3, 3), padding='CIRCULAR').init(jax.random.key(0),
                                                    jnp.ones((1, 4, 4, 1)))
