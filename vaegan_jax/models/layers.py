"""Conv and ConvTranspose: drop-in `flax.linen` layers that train fast on CPU.

`Conv` and `ConvTranspose` take the constructor fields of `nn.Conv` and
`nn.ConvTranspose` (transpose_kernel=False) that DCGAN-style nets use, plus
`impl`, and create the very same parameters: 'kernel' (*kernel_size, C_in,
features) and 'bias' (features,), same initialisers, same RNG use. Params and
checkpoints move freely between these layers and flax's, CPU and TPU.

  impl='xla'   exactly the `lax.conv_general_dilated` call flax makes.
  impl='fast'  the same forward convolution (bit-identical outputs); a custom
               VJP changes how the gradients are computed (below).
  impl='gemm'  every convolution and gradient through `conv_cpu` (below):
               faster on CPU, equal to 'xla' up to float rounding.
  impl='onednn' every convolution and gradient through `conv_cpu`'s maps
               in oneDNN's CPU kernels, as XLA custom calls (`conv_onednn`:
               built on first use; 'gemm' where it cannot be, with a note);
               a layer given an `activation` has conv, bias and activation
               in one oneDNN call (`conv_cpu.conv_bias_act`).
  impl='auto'  the fastest that runs here (`auto_impl`): on the CPU backend
               'onednn' where it builds and the process has one device,
               else 'gemm'; 'xla' elsewhere (GPU/TPU keep their own
               convolution kernels). The trainer resolves it once per run,
               prints the choice and stores it in the run's config.

Why: XLA:CPU runs the kernel gradient of an input-dilated convolution (every
strided ConvTranspose) as a convolution with window reversal, which it cannot
hand to its Eigen/YNNPACK kernels, so it runs as a naive loop: 7 s for a
7->14 ConvT (k5, 256->64 channels, batch 256, idle machine) whose forward
pass takes 0.08 s.
Second derivatives through a strided Conv (WGAN-GP, R1 through D) hit the same
path. No XLA_FLAGS setting tried changed this (thunk runtime off, Eigen
threading off, oneDNN, XNNPACK, YNN fusion off).

How ('fast'): for y = conv(x, K) with unit window stride, input dilation d and
padding (lo, hi), tap t of the kernel gradient is

  dK[t] = sum_{b, i} x[b, i] * dy_pad[b, d * i + lo - t]      (slice dy), or
  dK[t] = sum_{b, o} dy[b, o] * x_pad[b, o + t]   if d == 1   (slice x):

one GEMM over batch and space per tap, on a strided slice (taps are stacked
into one GEMM while the sliced operand has < 32 channels). Strided Convs keep
XLA's kernel gradient, which is fast. The input gradient is jax's own
transposed convolution, routed through the same rule so that its derivatives
are fast too. Forward-mode autodiff (`jax.jvp`, `jax.hessian`) is not defined
through impl='fast'; use impl='xla' for that.

Timing (forward plus both gradients, batch 256): with 'fast' the strided
ConvTranspose layers run 23-52x faster than with 'xla', the gradient penalty
through a strided Conv 8-53x; the per-layer table and its command are in
docs/speed.md ("Per layer: impl='fast' against 'xla'").

impl='gemm' goes further: the forward pass and both gradients as GEMMs,
strided slices and XLA's strided convolution, picked per layer shape
(`conv_cpu.choose`), so that the ConvTranspose forward and the strided-Conv
input gradient (input-dilated convolutions, which XLA:CPU runs far below its
matmul speed) become col2im GEMMs too; every gradient of a gradient runs
through the same maps. Its outputs differ from 'xla' / 'fast' in the last
bits (the sums run in another order); 'onednn' runs the same maps in
oneDNN's kernels. 'auto' takes 'onednn', or 'gemm' where oneDNN cannot run,
on CPU. Per-primitive and whole-step timings: docs/speed.md,
`experiments/conv_primitives.py`, `experiments/throughput.py`.
"""

import functools
import itertools
from typing import Any, Sequence

import flax.linen as nn
from flax.linen import linear as flax_linear
import jax
from jax import lax
import jax.numpy as jnp

from vaegan_jax.kernels import conv_cpu
from vaegan_jax import rules
from vaegan_jax.kernels import conv_onednn

IMPLS = ('auto', 'xla', 'fast', 'gemm', 'onednn')
RULES = {'model.conv_impl': rules.OneOf(IMPLS)}
# Taps of the kernel gradient are stacked into one GEMM while the sliced
# operand has few channels: all taps at 1 channel, one tap per GEMM at >= 32.
_TAP_STACK_CHANNELS = 32


def auto_impl() -> tuple[str, str]:
  """What impl='auto' runs in this process, and why (a short phrase).

  On the CPU backend the fastest that runs (one interleaved run of
  experiments/throughput.py, docs/speed.md): 'onednn' where oneDNN's calls
  build, else 'gemm' (1.05-1.3x 'fast' on the 28-px bench workloads, 3.4x
  on the 32-px DCGAN). With several devices also 'gemm': the oneDNN custom
  calls carry no sharding rule, so XLA would gather each batch onto every
  device and every device would convolve all of it. Other backends: 'xla'.
  Prints nothing (`conv_onednn.status`).
  """
  backend = jax.default_backend()
  if backend != 'cpu':
    return 'xla', f"the {backend} backend's own convolutions"
  ok, reason = conv_onednn.status()
  if not ok:
    return 'gemm', f'oneDNN unavailable: {reason}'
  if jax.device_count() > 1:
    return 'gemm', (f'{jax.device_count()} devices: oneDNN\'s calls have no sharding '
                    'rule, every device would convolve the whole batch')
  return 'onednn', "oneDNN's CPU convolutions"


def resolve_for_run(impl: str) -> tuple[str, str]:
  """The conv impl that `impl` runs as here, and why (the run's one line):
  'auto' -> `auto_impl`'s choice; 'onednn' -> `conv_onednn.fallback()` where
  oneDNN's convolutions cannot run; any other name as given. Prints nothing;
  checks the name."""
  if impl not in IMPLS:
    raise ValueError(f'Unknown conv impl {impl!r}; use one of {IMPLS}.')
  if impl == 'auto':
    return auto_impl()
  if impl == 'onednn':
    ok, reason = conv_onednn.status()
    if not ok:
      return conv_onednn.fallback(), f"conv_impl='onednn' unavailable: {reason}"
  return impl, 'as configured'


def resolve_impl(impl: str) -> str:
  """`resolve_for_run(impl)`'s impl; an unavailable 'onednn' prints one note
  per process (`conv_onednn.available`)."""
  resolved, _ = resolve_for_run(impl)
  if impl == 'onednn' and resolved != impl:
    conv_onednn.available()
  return resolved


# ---------------------------------------------------------------------------
# XLA's convolution, as flax issues it, and impl='fast''s custom gradient.
# ---------------------------------------------------------------------------


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
      dimension_numbers=conv_cpu.dimension_numbers(x.ndim), precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _fast_conv(x, kernel, strides, padding, lhs_dilation, precision):
  """`_xla_conv` with a GEMM-based kernel gradient (see module docstring)."""
  return _xla_conv(x, kernel, strides, padding, lhs_dilation, precision)


def _fast_conv_fwd(x, kernel, strides, padding, lhs_dilation, precision):
  y = _xla_conv(x, kernel, strides, padding, lhs_dilation, precision)
  return y, (x, kernel)


def _fast_conv_bwd(strides, padding, lhs_dilation, precision, res, dy):
  x, kernel = res
  dx = _input_grad(x.shape, kernel, dy, strides, padding, lhs_dilation,
                   precision)
  if any(s > 1 for s in strides):
    # A strided conv's kernel gradient is an (rhs-dilated) convolution that
    # XLA:CPU runs well; GEMMs over strided slices of x were a little slower.
    _, vjp_kernel = jax.vjp(
        lambda k: _xla_conv(x, k, strides, padding, lhs_dilation, precision),
        kernel)
    dk, = vjp_kernel(dy)
  else:
    dk = _kernel_grad(x, dy, kernel.shape[:-2], padding, lhs_dilation,
                      precision)
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


_fast_conv.defvjp(_fast_conv_fwd, _fast_conv_bwd)


def _input_grad(x_shape, kernel, dy, strides, padding, lhs_dilation,
                precision):
  """dL/dx: the transposed convolution jax's own rule issues, made fast too.

  Mirrors `_conv_general_dilated_transpose_lhs` in jax: a convolution of dy
  with the spatially flipped, in/out-swapped kernel, with strides and input
  dilation exchanged.
  """
  ksize = kernel.shape[:-2]
  n_in = x_shape[1:-1]
  n_out = dy.shape[1:-1]
  t_padding = []
  for n, k, s, d, q, (lo, _) in zip(n_in, ksize, strides, lhs_dilation,
                                     n_out, padding):
    before = k - 1 - lo
    after = ((n - 1) * d + 1) + k - 1 - ((q - 1) * s + 1) - before
    t_padding.append((before, after))
  spatial = tuple(range(len(ksize)))
  t_kernel = jnp.swapaxes(lax.rev(kernel, spatial), -1, -2)
  return _fast_conv(dy, t_kernel, tuple(lhs_dilation), tuple(t_padding),
                    tuple(strides), precision)


def _kernel_grad(x, dy, ksize, padding, lhs_dilation, precision):
  """dL/dK of a unit-stride y = _xla_conv(x, K, 1, padding, lhs_dilation).

  With x dilated by d and padded by (lo, hi) in each spatial dim, and tap t:
    dK[t] = sum_{b, i} x[b, i] * dy_pad[b, d * i + lo - t]   (slice dy), or
    dK[t] = sum_{b, o} dy[b, o] * x_pad[b, o + t]  if d == 1  (slice x),
  one GEMM contracting batch and space per tap (per stack of taps when the
  sliced operand has few channels). The operand with fewer channels is sliced.

  Args:
    x: (N, *in_spatial, C_in).
    dy: (N, *out_spatial, C_out).
    ksize: kernel spatial shape.
    padding, lhs_dilation, precision: as for `_xla_conv`.

  Returns:
    (*ksize, C_in, C_out).
  """
  nsp = len(ksize)
  slice_x = (tuple(lhs_dilation) == (1,) * nsp
             and x.shape[-1] <= dy.shape[-1])
  if slice_x:
    full, steps, counts = dy, (1,) * nsp, dy.shape[1:-1]
    pads = padding
    starts = lambda taps: taps
  else:
    full, steps, counts = x, tuple(lhs_dilation), x.shape[1:-1]
    pads = [(max(0, k - 1 - lo), max(0, d * (n - 1) + lo - (q - 1)))
            for n, q, k, d, (lo, _) in zip(x.shape[1:-1], dy.shape[1:-1],
                                            ksize, lhs_dilation, padding)]
    starts = lambda taps: [lo - t + a for t, (lo, _), (a, _) in
                           zip(taps, padding, pads)]
  operand = x if slice_x else dy
  sliced = lax.pad(operand, jnp.zeros((), operand.dtype),
                   [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)])

  def tap_slice(taps):
    start = [0, *starts(taps), 0]
    limit = [sliced.shape[0],
             *[b + s * (c - 1) + 1 for b, s, c in zip(start[1:], steps, counts)],
             sliced.shape[-1]]
    return lax.slice(sliced, start, limit, (1, *steps, 1))

  taps = list(itertools.product(*map(range, ksize)))
  group = max(1, _TAP_STACK_CHANNELS // sliced.shape[-1])
  contract = tuple(range(nsp + 1))
  parts = []
  for i in range(0, len(taps), group):
    stacked = jnp.stack([tap_slice(t) for t in taps[i:i + group]], axis=-2)
    parts.append(lax.dot_general(  # (C_full, taps in group, C_sliced)
        full, stacked, ((contract, contract), ((), ())), precision=precision))
  prod = jnp.concatenate(parts, axis=1)
  dk = jnp.transpose(prod, (1, 2, 0) if slice_x else (1, 0, 2))  # (T, Ci, Co)
  return dk.reshape(tuple(ksize) + dk.shape[1:])


def _onednn_conv(x, kernel, strides, padding, lhs_dilation, precision):
  """impl='onednn': the maps of `conv_cpu.conv` in oneDNN (as
  `conv_cpu.choose_onednn` plans them); dtypes other than float32 and 3-D
  convolutions take conv_cpu's chosen (impl='gemm') plan."""
  ok = (x.dtype == kernel.dtype
        and conv_onednn.supports(x.dtype, kernel.shape[:-2]))
  return conv_cpu.conv(x, kernel, strides, padding, lhs_dilation, precision,
                       plan='onednn' if ok else None)


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


ACTIVATIONS = (None, 'relu', 'leaky_relu')


def _negative_slope(module):
  """None without an activation, 0 for ReLU, the leaky ReLU's slope."""
  if module.activation not in ACTIVATIONS:
    raise ValueError(f'Unknown activation {module.activation!r}; use one of '
                     f'{ACTIVATIONS}.')
  if module.activation is None:
    return None
  if module.activation == 'relu':
    return 0.0
  if module.negative_slope < 0:
    raise ValueError('leaky_relu needs negative_slope >= 0, not '
                     f'{module.negative_slope}.')
  return float(module.negative_slope)


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

  slope = _negative_slope(module)
  if (impl == 'onednn' and slope is not None and bias is not None
      and inputs.dtype == kernel.dtype == bias.dtype
      and conv_onednn.supports(inputs.dtype, ksize)):
    # Bias and activation in the convolution's oneDNN call where it can.
    y = conv_cpu.conv_bias_act(inputs, kernel, bias, window_strides, padding,
                               lhs_dilation, precision, slope)
  else:
    conv = {'xla': _xla_conv, 'fast': _fast_conv, 'gemm': conv_cpu.conv,
            'onednn': _onednn_conv}[impl]
    y = conv(inputs, kernel, window_strides, padding, lhs_dilation, precision)
    if bias is not None:
      y += bias.reshape((1,) * (y.ndim - 1) + (-1,))
    if slope is not None:
      y = conv_cpu.activation(y, slope)
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
    impl: 'auto', 'xla', 'fast', 'gemm' or 'onednn' (module docstring).
    activation: None, 'relu' or 'leaky_relu' (with `negative_slope`),
      applied to conv + bias: the same as calling nn.relu / nn.leaky_relu on
      the layer's output; with impl='onednn' and a bias, one oneDNN call
      does all three where it can (`conv_cpu.conv_bias_act`).
    negative_slope: leaky_relu's slope for negative inputs (flax's default).

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
  activation: str | None = None
  negative_slope: float = 0.01

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    return _apply_conv(self, inputs, transpose=False)


class ConvTranspose(Conv):
  """`flax.linen.ConvTranspose` (transpose_kernel=False), fast on CPU.

  Same semantics as flax: the input is dilated by `strides` and convolved
  (stride 1, kernel not flipped); 'SAME' gives out = in * stride, explicit
  (lo, hi) pairs pad the dilated input directly. Attributes, input, output
  and params: as `Conv` (e.g. kernel_size (4, 4); strides default None = 1).
  """
  strides: None | int | Sequence[int] = None

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    return _apply_conv(self, inputs, transpose=True)
