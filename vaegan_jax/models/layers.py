"""Conv and ConvTranspose: drop-in `flax.linen` layers that train fast on CPU.

`Conv` and `ConvTranspose` take the constructor fields of `nn.Conv` and
`nn.ConvTranspose` (transpose_kernel=False) that DCGAN-style nets use, plus
`impl`, and create the very same parameters: 'kernel' (*kernel_size, C_in,
features) and 'bias' (features,), same initialisers, same RNG use. Params and
checkpoints move freely between these layers and flax's, CPU and TPU.

  impl='xla'   exactly the `lax.conv_general_dilated` call flax makes.
  impl='fast'  the convolution and its gradients as GEMMs, strided slices and
               XLA's strided convolution, picked per layer shape
               (`conv_cpu.choose`); equal to 'xla' up to float rounding.
  impl='auto'  'fast' on the CPU backend, 'xla' elsewhere (GPU/TPU keep
               their own convolution kernels).

Why: XLA:CPU runs an input-dilated convolution (every strided ConvTranspose
forward, the input gradient of every strided Conv) far below its matmul
speed, and the kernel gradient of an input-dilated convolution as a naive
loop (seconds for one dcgan28 layer). `conv_cpu` writes those as col2im and
per-tap GEMMs and keeps XLA's strided convolution where it is as fast; every
gradient, and every gradient of a gradient (WGAN-GP, R1), runs through the
same maps. Forward-mode autodiff (`jax.jvp`, `jax.hessian`) is not defined
through impl='fast'; use impl='xla' for that. Per-primitive and per-layer
timings: README "CPU speed", `experiments/conv_primitives.py`,
`experiments/layer_timing.py`.
"""

from typing import Any, Sequence

import flax.linen as nn
from flax.linen import linear as flax_linear
import jax
from jax import lax
import jax.numpy as jnp

from vaegan_jax.models import conv_cpu

IMPLS = ('auto', 'xla', 'fast')


def resolve_impl(impl: str) -> str:
  """'auto' -> 'fast' on the CPU backend, else 'xla'; checks the name."""
  if impl not in IMPLS:
    raise ValueError(f'Unknown conv impl {impl!r}; use one of {IMPLS}.')
  if impl == 'auto':
    return 'fast' if jax.default_backend() == 'cpu' else 'xla'
  return impl


# ---------------------------------------------------------------------------
# XLA's convolution, as flax issues it.
# ---------------------------------------------------------------------------


def _dimension_numbers(ndim: int) -> lax.ConvDimensionNumbers:
  """Channels-last (N, *spatial, C) inputs, (*spatial, I, O) kernels."""
  lhs = (0, ndim - 1) + tuple(range(1, ndim - 1))
  rhs = (ndim - 1, ndim - 2) + tuple(range(ndim - 2))
  return lax.ConvDimensionNumbers(lhs, rhs, lhs)


def _xla_conv(x, kernel, strides, padding, lhs_dilation, precision):
  """The convolution exactly as flax's Conv / ConvTranspose issue it.

  Args:
    x: (N, *spatial, C_in).
    kernel: (*kernel_size, C_in, C_out).
    strides: window strides, one per spatial dim.
    padding: ((lo, hi), ...) applied to the lhs-dilated input.
    lhs_dilation: input dilation (the stride of a transposed conv).
    precision: `lax.Precision` or None.

  Returns:
    (N, *out_spatial, C_out).
  """
  return lax.conv_general_dilated(
      x, kernel, strides, padding, lhs_dilation=lhs_dilation,
      dimension_numbers=_dimension_numbers(x.ndim), precision=precision)


# ---------------------------------------------------------------------------
# Layers.
# ---------------------------------------------------------------------------


def _tuple(value, n: int) -> tuple[int, ...]:
  if value is None:
    value = 1
  return (value,) * n if isinstance(value, int) else tuple(value)


def _transpose_padding(k: int, s: int, padding: str) -> tuple[int, int]:
  """`lax.conv_transpose`'s (lo, hi) padding for 'SAME' / 'VALID'."""
  if padding == 'SAME':
    total = k + s - 2
    lo = k - 1 if s > k - 1 else -(-total // 2)
  else:
    total = k + s - 2 + max(k - s, 0)
    lo = k - 1
  return lo, total - lo


def _apply_conv(module, inputs, transpose: bool):
  """Shared body of `Conv` and `ConvTranspose` (mirrors flax's)."""
  ksize = _tuple(module.kernel_size, 1)
  nsp = len(ksize)
  impl = resolve_impl(module.impl)
  num_batch = inputs.ndim - (nsp + 1)
  batch_shape = inputs.shape[:num_batch]
  if num_batch != 1:
    inputs = inputs.reshape((-1,) + inputs.shape[num_batch:])
  strides = _tuple(module.strides, nsp)

  kernel = module.param('kernel', module.kernel_init,
                        ksize + (inputs.shape[-1], module.features),
                        module.param_dtype)
  bias = (module.param('bias', module.bias_init, (module.features,),
                       module.param_dtype) if module.use_bias else None)
  inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias,
                                                 dtype=module.dtype)

  padding = flax_linear.canonicalize_padding(module.padding, nsp)
  kind = 'ConvTranspose' if transpose else 'Conv'
  if isinstance(padding, str) and padding not in ('SAME', 'VALID'):
    raise ValueError(f"layers.{kind} supports padding 'SAME', 'VALID' or "
                     f'explicit (lo, hi) pairs, not {padding!r}; use '
                     f'flax.linen.{kind} for that.')
  if transpose:
    if isinstance(padding, str):
      padding = [_transpose_padding(k, s, padding)
                 for k, s in zip(ksize, strides)]
    window_strides, lhs_dilation = (1,) * nsp, strides
  else:
    if isinstance(padding, str):
      padding = lax.padtype_to_pads(inputs.shape[1:-1], ksize, strides,
                                    padding)
    window_strides, lhs_dilation = strides, (1,) * nsp
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  precision = module.precision
  if isinstance(precision, list):
    precision = tuple(precision)

  conv = conv_cpu.conv if impl == 'fast' else _xla_conv
  y = conv(inputs, kernel, window_strides, padding, lhs_dilation, precision)
  if bias is not None:
    y += bias.reshape((1,) * (y.ndim - 1) + (-1,))
  if num_batch != 1:
    y = y.reshape(batch_shape + y.shape[1:])
  return y


class Conv(nn.Module):
  """`flax.linen.Conv` (no dilation, groups or masks), fast on CPU.

  Attributes:
    features: output channels C_out.
    kernel_size: spatial kernel shape, e.g. (5, 5); an int means 1-D, as flax.
    strides: int or one per spatial dim (default 1).
    padding: 'SAME', 'VALID', an int, or one (lo, hi) pair / int per dim.
    use_bias: add a learned bias.
    dtype: computation dtype (default: inferred from inputs and params).
    param_dtype: dtype of the parameters.
    precision: `lax.Precision` of the convolution and its gradient GEMMs.
    kernel_init, bias_init: initialisers (flax's defaults).
    impl: 'auto', 'xla' or 'fast' (module docstring).

  Input (*batch, *spatial, C_in) -> output (*batch, *out_spatial, C_out);
  params 'kernel' (*kernel_size, C_in, C_out) and 'bias' (C_out,).
  """
  features: int
  kernel_size: int | Sequence[int]
  strides: None | int | Sequence[int] = 1
  padding: Any = 'SAME'
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Any = flax_linear.default_kernel_init
  bias_init: Any = nn.initializers.zeros_init()
  impl: str = 'auto'

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    return _apply_conv(self, inputs, transpose=False)


class ConvTranspose(nn.Module):
  """`flax.linen.ConvTranspose` (transpose_kernel=False), fast on CPU.

  Same semantics as flax: the input is dilated by `strides` and convolved
  (stride 1, kernel not flipped); 'SAME' gives out = in * stride, explicit
  (lo, hi) pairs pad the dilated input directly.

  Attributes:
    features: output channels C_out.
    kernel_size: spatial kernel shape, e.g. (4, 4); an int means 1-D, as flax.
    strides: int or one per spatial dim (default 1).
    padding: 'SAME', 'VALID', an int, or one (lo, hi) pair / int per dim.
    use_bias: add a learned bias.
    dtype: computation dtype (default: inferred from inputs and params).
    param_dtype: dtype of the parameters.
    precision: `lax.Precision` of the convolution and its gradient GEMMs.
    kernel_init, bias_init: initialisers (flax's defaults).
    impl: 'auto', 'xla' or 'fast' (module docstring).

  Input (*batch, *spatial, C_in) -> output (*batch, *out_spatial, C_out);
  params 'kernel' (*kernel_size, C_in, C_out) and 'bias' (C_out,).
  """
  features: int
  kernel_size: int | Sequence[int]
  strides: None | int | Sequence[int] = None
  padding: Any = 'SAME'
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Any = flax_linear.default_kernel_init
  bias_init: Any = nn.initializers.zeros_init()
  impl: str = 'auto'

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    return _apply_conv(self, inputs, transpose=True)
