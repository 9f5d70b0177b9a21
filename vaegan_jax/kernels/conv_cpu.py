"""Convolutions on CPU as a few large matrix products, with their gradients.

XLA:CPU multiplies matrices at close to the machine's peak but runs its own
convolution kernels far below it (docs/speed.md), so this module writes
every convolution the project's layers make -- a Conv with window strides, or
a ConvTranspose (an input-dilated convolution) -- as strided slices, pads and
GEMMs in plain JAX, and picks the fastest formulation for each pass.

The one idea: both kinds of layer relate a "big" array to a "small" one. Per
spatial dim, tap t (0 <= t < k) of the kernel connects

    small[o]  <->  big[step * o + base + t],   0 <= o < n_small,

positions outside 0 <= p < n_big being zeros. For a Conv (window stride s,
padding (lo, hi)), big = x, small = y, step = s, base = -lo. For a
ConvTranspose (input dilation d, padding (lo, hi) of the dilated input),
big = y, small = x, step = d, base = lo - k + 1 with the kernel flipped and
its two channel axes swapped. With the patch matrix ("im2col")

    G[b, o, t, c] = big[b, step * o + base + t, c]                (gather)

and W (T, C_big, C_small) the kernel with its taps flattened, three bilinear
maps do all the work:

    down(big, W)     = G . W                  -> small   (Conv forward)
    up(small, W)     = gather^T(small . W^T)  -> big     (ConvT forward)
    wgrad(big, small)= G^T . small            -> W's shape

gather^T, the adjoint of the gather ("col2im"), adds each tap's slab of
small . W^T into big at stride `step`; it is done phase by phase (the taps
with base + t = r mod step land in output phase r, shifted by
(base + t) // step), so it adds only the 1/step^2 of the positions that are
not zero insertions. Their derivatives are the same three maps (Dumoulin &
Visin 2016, "A guide to convolution arithmetic", sec. 4):

    down:  d big = up(d small, W),     dW = wgrad(big, d small)
    up:    d small = down(d big, W),   dW = wgrad(d big, small)
    wgrad: d big = up(small, dW),      d small = down(big, dW)

so each is a `jax.custom_vjp` whose backward pass calls the others: the
gradients, and the gradients of the gradients (WGAN-GP, R1), all run as these
GEMMs. Forward-mode autodiff (`jax.jvp`) is not defined through them.

Each map has several formulations, named in `FORMULATIONS`:
  down   'im2col'  one GEMM on the stacked patch matrix G (N * small, T * C_big)
         'taps'    one GEMM per tap on a strided slice of big, summed
         'swap'    big . W^T first (one GEMM to T * C_small columns), then
                   each tap's strided slice of it added up: the patches of
                   the side with fewer channels (for C_small = 1)
         'xla'     XLA's own convolution (lax.conv_general_dilated)
  up     'col2im'  one GEMM small (N * small, C_small) . W^T -> (.., T * C_big),
                   then the phase-wise col2im above
         'taps'    one GEMM per tap, each slab added into its phase
         'xla'     XLA's transposed (input-dilated) convolution
  wgrad  'im2col'  one GEMM G^T . small contracting batch and space
         'taps'    one GEMM per tap (taps stacked while C_big is small)
         'swap'    (unit steps only) the patches of small instead of big,
                   contracted with big: cheaper when C_small < C_big (built
                   from per-tap slices up to 4 channels of small)
         'xla'     XLA's kernel-gradient convolution
and in every map 'onednn': oneDNN's convolution forward (down),
backward-data (up) and backward-weights (wgrad) as XLA custom calls
(`conv_onednn`; float32, 1-D / 2-D; needs its library built, see there),
and 'narrow': the same library's own loops for a small side of one channel
(C_small = 1, e.g. a Conv into one channel), vectorised over C_big, where
oneDNN's kernels, which vectorise over output channels, have one.
`choose` picks one per map from the shapes (`Plan`); any fixed `Plan` can be
passed instead (the tests check every formulation against XLA's).
"""

import functools
import itertools
import math
from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from vaegan_jax.kernels import conv_onednn

FORMULATIONS = {
    'down': ('im2col', 'taps', 'swap', 'xla', 'onednn', 'narrow'),
    'up': ('col2im', 'taps', 'xla', 'onednn', 'narrow'),
    'wgrad': ('im2col', 'taps', 'swap', 'xla', 'onednn', 'narrow'),
}
# The formulations in the built library (conv_onednn): float32 and at most 2
# spatial dims; 'narrow' only for one channel on the small side.
LIBRARY = ('onednn', 'narrow')


class Dim(NamedTuple):
  """One spatial dim: small[o] <-> big[step * o + base + t], t < k."""
  n_big: int
  n_small: int
  k: int
  step: int
  base: int

  def zero_padding(self):
    """(lo, hi): how far the taps reach before big's first and after its
    last position (negative: positions no tap reaches)."""
    return -self.base, self.step * (self.n_small - 1) + self.base + self.k - self.n_big


class Plan(NamedTuple):
  """The formulation of each map (FORMULATIONS)."""
  down: str = 'im2col'
  up: str = 'col2im'
  wgrad: str = 'im2col'


# Every map in oneDNN (float32, 1-D / 2-D); conv_impl='onednn' uses
# `choose_onednn`'s plan.
ONEDNN = Plan('onednn', 'onednn', 'onednn')
# Every map in the library's loops for a one-channel small side.
NARROW = Plan('narrow', 'narrow', 'narrow')


# ---------------------------------------------------------------------------
# Geometry: the layers' (strides, padding, lhs_dilation) as `Dim`s.
# ---------------------------------------------------------------------------


def conv_dims(in_spatial, ksize, strides, padding, lhs_dilation):
  """Dims of lax.conv_general_dilated(x, K, strides, padding, lhs_dilation).

  Args:
    in_spatial: x's spatial shape.
    ksize: kernel spatial shape.
    strides: window strides (all 1 when lhs_dilation has a value > 1).
    padding: ((lo, hi), ...) of the (dilated) input, as lax takes it.
    lhs_dilation: input dilation (all 1 when strides has a value > 1).

  Returns:
    (dims, transpose): a tuple of `Dim`, and whether x is the small side (a
    ConvTranspose) rather than the big one (a Conv).
  """
  transpose = any(d > 1 for d in lhs_dilation)
  if transpose and any(s > 1 for s in strides):
    raise ValueError('conv_cpu handles window strides or input dilation, '
                     'not both at once.')
  dims = []
  for n, k, s, d, (lo, hi) in zip(in_spatial, ksize, strides, lhs_dilation,
                                   padding):
    q = (d * (n - 1) + 1 + lo + hi - k) // s + 1
    if transpose:
      dims.append(Dim(n_big=q, n_small=n, k=k, step=d, base=lo - k + 1))
    else:
      dims.append(Dim(n_big=n, n_small=q, k=k, step=s, base=-lo))
  return tuple(dims), transpose


def conv(x, kernel, strides, padding, lhs_dilation, precision=None,
         plan=None):
  """lax.conv_general_dilated (NHWC / HWIO) through down / up.

  Args:
    x: (N, *in_spatial, C_in).
    kernel: (*ksize, C_in, C_out).
    strides: window strides, one per spatial dim.
    padding: ((lo, hi), ...).
    lhs_dilation: input dilation (a ConvTranspose's stride).
    precision: `lax.Precision` of the GEMMs, or None.
    plan: a `Plan`; None for `choose`'s, 'onednn' for `choose_onednn`'s.

  Returns:
    (N, *out_spatial, C_out), equal to XLA's convolution up to rounding.
  """
  chooser = choose_onednn if plan == 'onednn' else choose
  plan = None if plan == 'onednn' else plan
  dims, transpose, w = _maps_of(x, kernel, strides, padding, lhs_dilation)
  plan = plan or chooser(dims, x.shape[0], *w.shape[1:])
  return (up if transpose else down)(x, w, dims, precision, plan)


def _maps_of(x, kernel, strides, padding, lhs_dilation):
  """The conv as a map: (dims, transpose, W (T, C_big, C_small))."""
  ksize = kernel.shape[:-2]
  dims, transpose = conv_dims(x.shape[1:-1], ksize, strides, padding,
                              lhs_dilation)
  c_in, c_out = kernel.shape[-2:]
  taps = math.prod(ksize)
  if not transpose:
    return dims, transpose, kernel.reshape(taps, c_in, c_out)
  # big = y, small = x: W[t'] = K[k - 1 - t']^T, (T, C_out, C_in).
  w = lax.rev(kernel, tuple(range(len(ksize))))
  return dims, transpose, jnp.swapaxes(w, -1, -2).reshape(taps, c_out, c_in)


# ---------------------------------------------------------------------------
# A layer's forward pass with its bias and activation, fused in oneDNN.
# ---------------------------------------------------------------------------


def activation(y, slope):
  """ReLU (slope 0) or leaky ReLU: exactly flax's nn.relu / nn.leaky_relu."""
  return jax.nn.relu(y) if slope == 0 else jax.nn.leaky_relu(y, slope)


def conv_bias_act(x, kernel, bias, strides, padding, lhs_dilation,
                  precision=None, slope=0.0):
  """activation(conv(x, kernel) + bias, slope) for conv_impl='onednn'.

  Where `choose_onednn` runs the forward map in oneDNN (float32, 1-D / 2-D,
  and for a ConvTranspose, an output exactly spanned by the taps), the
  convolution, bias and activation are one oneDNN call
  (`conv_onednn.down_bias_act` / `up_bias_act`): the separate pass of XLA
  over the output for bias + activation is gone. Its custom VJP takes the
  activation's derivative from the output (v > 0 iff the pre-activation is;
  v >= 0 for a leaky ReLU), the same values as differentiating
  `activation`, then the maps' own gradients. Elsewhere it is
  `activation(conv(...) + bias)`.

  Args:
    x, kernel, strides, padding, lhs_dilation, precision: as for `conv`.
    bias: (C_out,).
    slope: 0 for ReLU, > 0 for a leaky ReLU with that negative slope.

  Returns:
    (N, *out_spatial, C_out).
  """
  dims, transpose, w = _maps_of(x, kernel, strides, padding, lhs_dilation)
  plan = choose_onednn(dims, x.shape[0], *w.shape[1:])
  fused = (getattr(plan, 'up' if transpose else 'down') == 'onednn'
           and slope >= 0 and len(dims) <= 2
           and all(a.dtype == jnp.float32 for a in (x, kernel, bias))
           and (not transpose or conv_onednn.up_fusable(dims)))
  if not fused:
    y = (up if transpose else down)(x, w, dims, precision, plan)
    return activation(y + bias.reshape((1,) * (y.ndim - 1) + (-1,)), slope)
  return _bias_act(x, w, bias, dims, transpose, precision, plan, float(slope))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def _bias_act(x, w, bias, dims, transpose, precision, plan, slope):
  del precision, plan  # Used by the gradients.
  if transpose:
    return conv_onednn.up_bias_act(x, w, bias, dims, slope)
  return conv_onednn.down_bias_act(x, w, bias, dims, slope)


def _bias_act_fwd(x, w, bias, dims, transpose, precision, plan, slope):
  y = _bias_act(x, w, bias, dims, transpose, precision, plan, slope)
  return y, (x, w, y)


def _bias_act_bwd(dims, transpose, precision, plan, slope, res, dy):
  x, w, y = res
  if slope == 0:  # jax.nn.relu's derivative: dy where the input is > 0.
    g = jnp.where(y > 0, dy, jnp.zeros_like(dy))
  else:  # jax.nn.leaky_relu's: dy where the input is >= 0, else slope * dy.
    g = jnp.where(y >= 0, dy, slope * dy)
  db = jnp.sum(g, axis=tuple(range(g.ndim - 1)))
  if transpose:  # y = up(x, W): x is small, y big.
    dx = down(g, w, dims, precision, plan)
    dw = wgrad(g, x, dims, precision, plan)
  else:
    dx = up(g, w, dims, precision, plan)
    dw = wgrad(x, g, dims, precision, plan)
  return dx.astype(x.dtype), dw.astype(w.dtype), db.astype(dy.dtype)


_bias_act.defvjp(_bias_act_fwd, _bias_act_bwd)


# ---------------------------------------------------------------------------
# Gather (im2col) and its adjoint (col2im).
# ---------------------------------------------------------------------------


def _taps(dims):
  """Every tap as a tuple of per-dim offsets, in the kernel's row-major order."""
  return list(itertools.product(*(range(d.k) for d in dims)))


def _padded_big(big, dims):
  """big zero-padded so that every tap's slice is in range, and the offsets."""
  pads, offsets = [], []
  for d in dims:
    lo, hi = (max(0, p) for p in d.zero_padding())
    pads.append((lo, hi, 0))
    offsets.append(d.base + lo)
  padded = lax.pad(big, jnp.zeros((), big.dtype),
                   [(0, 0, 0), *pads, (0, 0, 0)])
  return padded, offsets


def _tap_slice(padded, offsets, dims, tap):
  """big[:, step * o + base + t, :] for o < n_small: (N, *n_small, C)."""
  start = [0] + [a + t for a, t in zip(offsets, tap)] + [0]
  limit = ([padded.shape[0]]
           + [s + d.step * (d.n_small - 1) + 1
              for s, d in zip(start[1:], dims)]
           + [padded.shape[-1]])
  return lax.slice(padded, start, limit, (1, *(d.step for d in dims), 1))


def gather(big, dims, taps=None):
  """The patch matrix G[b, o, t, c] = big[b, step * o + base + t, c].

  One XLA gather with constant indices (on CPU it writes the patches in one
  pass; a stack of per-tap strided slices made two passes and was 2-3x slower).

  Args:
    big: (N, *n_big, C).
    dims: tuple of `Dim`.
    taps: None for all taps, row-major: (N, *n_small, *ksize, C) flattened
      to (N, *n_small, T, C). A list of taps: (N, *n_small, len(taps), C).

  Returns:
    (N, *n_small, T, C).
  """
  padded, offsets = _padded_big(big, dims)
  nsp = len(dims)
  if taps is not None:
    return jnp.stack([_tap_slice(padded, offsets, dims, t) for t in taps],
                     axis=-2)
  index = []
  for i, (d, a) in enumerate(zip(dims, offsets)):
    shape = [1] * (2 * nsp)
    shape[i], shape[nsp + i] = d.n_small, d.k
    pos = (d.step * np.arange(d.n_small)[:, None] + a
           + np.arange(d.k)[None, :])  # (n_small, k)
    index.append(pos.reshape(shape))
  patches = padded[(slice(None), *index)]  # (N, *n_small, *ksize, C)
  return patches.reshape(patches.shape[:nsp + 1] + (-1, big.shape[-1]))


def scatter(z, dims, taps=None):
  """col2im, the adjoint of `gather`: big[step * o + base + t] += z[o, t].

  Phase by phase: the taps with (base + t) % step == r add into output phase
  r, each shifted by (base + t) // step; the phases are then interleaved.

  Args:
    z: (N, *n_small, len(taps), C).
    dims: tuple of `Dim`.
    taps: the taps along z's axis -2 (default: all, row-major).

  Returns:
    (N, *n_big, C).
  """
  taps = _taps(dims) if taps is None else taps
  nsp = len(dims)
  sizes = [-(-d.n_big // d.step) for d in dims]  # One phase's extent.
  zero = jnp.zeros((), z.dtype)
  planes = {}
  for i, tap in enumerate(taps):
    shifts, phase = zip(*(divmod(d.base + t, d.step)
                          for d, t in zip(dims, tap)))
    pads = [(q, size - d.n_small - q, 0)
            for q, size, d in zip(shifts, sizes, dims)]
    slab = lax.pad(z[..., i, :], zero, [(0, 0, 0), *pads, (0, 0, 0)])
    planes[phase] = planes[phase] + slab if phase in planes else slab
  n, c = z.shape[0], z.shape[-1]
  phases = list(itertools.product(*(range(d.step) for d in dims)))
  if len(phases) == 1:
    out = planes.get(phases[0], jnp.zeros((n, *sizes, c), z.dtype))
  else:
    blank = jnp.zeros((n, *sizes, c), z.dtype)
    stacked = jnp.stack([planes.get(p, blank) for p in phases])
    steps = [d.step for d in dims]
    stacked = stacked.reshape(*steps, n, *sizes, c)
    # (s_1..s_d, N, P_1..P_d, C) -> (N, P_1, s_1, ..., P_d, s_d, C).
    order = [nsp]
    for i in range(nsp):
      order += [nsp + 1 + i, i]
    order.append(2 * nsp + 1)
    out = jnp.transpose(stacked, order).reshape(
        n, *(p * s for p, s in zip(sizes, steps)), c)
  return lax.slice(out, [0] * (nsp + 2), [n, *(d.n_big for d in dims), c])


# ---------------------------------------------------------------------------
# The three maps, each formulation in plain JAX.
# ---------------------------------------------------------------------------


def _flat(a, keep):
  """(N, *spatial, *rest) -> (N * prod(spatial), *rest), rest = keep dims."""
  return a.reshape((-1,) + a.shape[a.ndim - keep:])


def dimension_numbers(ndim: int) -> lax.ConvDimensionNumbers:
  """Channels-last (N, *spatial, C) inputs, (*spatial, I, O) kernels."""
  lhs = (0, ndim - 1) + tuple(range(1, ndim - 1))
  rhs = (ndim - 1, ndim - 2) + tuple(range(ndim - 2))
  return lax.ConvDimensionNumbers(lhs, rhs, lhs)


def _xla_down(big, w, dims, precision):
  """down as XLA's strided convolution."""
  ksize = tuple(d.k for d in dims)
  kernel = w.reshape(ksize + w.shape[1:])
  padding = [(-d.base, d.step * (d.n_small - 1) + d.base + d.k - d.n_big)
             for d in dims]
  return lax.conv_general_dilated(
      big, kernel, tuple(d.step for d in dims), padding,
      dimension_numbers=dimension_numbers(big.ndim), precision=precision)


def _down_impl(big, w, dims, precision, how):
  if how == 'xla':
    return _xla_down(big, w, dims, precision)
  if how == 'onednn':
    return conv_onednn.down(big, w, dims)
  if how == 'narrow':
    return conv_onednn.narrow_down(big, w, dims)
  out_shape = (big.shape[0],) + tuple(d.n_small for d in dims)
  if how == 'im2col':
    g = _flat(gather(big, dims), 2)  # (M, T, C_big)
    y = lax.dot_general(g, w, (((1, 2), (0, 1)), ((), ())),
                        precision=precision)
    return y.reshape(out_shape + (w.shape[-1],))
  if how == 'taps':
    padded, offsets = _padded_big(big, dims)
    y = None
    for i, tap in enumerate(_taps(dims)):
      part = lax.dot_general(_tap_slice(padded, offsets, dims, tap), w[i],
                             (((big.ndim - 1,), (0,)), ((), ())),
                             precision=precision)
      y = part if y is None else y + part
    return y
  if how == 'swap':
    # Contract big's channels first, z[p, t] = big[p] . W[t] (one GEMM to
    # T * C_small columns), then add each tap's strided slice of z: the
    # patches are taken of the side with fewer channels, as in wgrad 'swap'.
    c_small = w.shape[-1]
    z = lax.dot_general(big, w.reshape(-1, w.shape[1], c_small).transpose(1, 0, 2),
                        (((big.ndim - 1,), (0,)), ((), ())), precision=precision)
    z = z.reshape(z.shape[:-2] + (-1,))  # (N, *n_big, T * C_small)
    # Each tap's slice of z where it lands inside big, zero-padded to small's
    # extent (padding each slice, not z, lets XLA fuse it all into one pass).
    y = None
    for i, tap in enumerate(_taps(dims)):
      start, limit, strides, pads = [0], [z.shape[0]], [1], [(0, 0, 0)]
      for d, t in zip(dims, tap):
        lo = max(0, -(-(-d.base - t) // d.step))                     # First o with p >= 0.
        hi = min(d.n_small - 1, (d.n_big - 1 - d.base - t) // d.step)  # Last o with p < n_big.
        if hi < lo:
          break  # This tap never lands inside big.
        start.append(d.step * lo + d.base + t)
        limit.append(d.step * hi + d.base + t + 1)
        strides.append(d.step)
        pads.append((lo, d.n_small - 1 - hi, 0))
      else:
        start.append(i * c_small)
        limit.append((i + 1) * c_small)
        strides.append(1)
        pads.append((0, 0, 0))
        part = lax.pad(lax.slice(z, start, limit, strides), jnp.zeros((), z.dtype), pads)
        y = part if y is None else y + part
    if y is None:  # No tap lands inside big.
      y = jnp.zeros((z.shape[0], *(d.n_small for d in dims), c_small), z.dtype)
    return y
  raise ValueError(f'Unknown down formulation {how!r}.')


def _up_impl(small, w, dims, precision, how):
  if how == 'onednn':
    return conv_onednn.up(small, w, dims)
  if how == 'narrow':
    return conv_onednn.narrow_up(small, w, dims)
  if how == 'xla':
    big_shape = (small.shape[0], *(d.n_big for d in dims), w.shape[1])
    _, vjp = jax.vjp(lambda b: _xla_down(b, w, dims, precision),
                     jnp.zeros(big_shape, small.dtype))
    return vjp(small)[0]
  if how == 'col2im':
    z = lax.dot_general(small, w, (((small.ndim - 1,), (2,)), ((), ())),
                        precision=precision)  # (N, *n_small, T, C_big)
    return scatter(z, dims)
  if how == 'taps':
    slabs = [lax.dot_general(small, w[i], (((small.ndim - 1,), (1,)),
                                           ((), ())), precision=precision)
             for i in range(w.shape[0])]
    return scatter(jnp.stack(slabs, axis=-2), dims)
  raise ValueError(f'Unknown up formulation {how!r}.')


# Taps of 'taps' wgrad are stacked into one GEMM while big has few channels.
_TAP_STACK_CHANNELS = 32
# wgrad 'swap' builds small's patches from per-tap slices up to this many channels.
_SLICE_GATHER_CHANNELS = 4


def _wgrad_impl(big, small, dims, precision, how):
  nsp = len(dims)
  contract = tuple(range(nsp + 1))
  if how == 'onednn':
    return conv_onednn.wgrad(big, small, dims)
  if how == 'narrow':
    return conv_onednn.narrow_wgrad(big, small, dims)
  if how == 'xla':
    taps = math.prod(d.k for d in dims)
    w0 = jnp.zeros((taps, big.shape[-1], small.shape[-1]), big.dtype)
    _, vjp = jax.vjp(lambda w: _xla_down(big, w, dims, precision), w0)
    return vjp(small)[0]
  if how == 'im2col':
    # G is the rhs, contracted on its leading axes: no transposed copy of it.
    g = gather(big, dims)  # (N, *n_small, T, C_big)
    dw = lax.dot_general(small, g, ((contract, contract), ((), ())),
                         precision=precision)  # (C_small, T, C_big)
    return jnp.transpose(dw, (1, 2, 0))
  if how == 'swap':  # Unit steps only: gather small instead of big.
    if any(d.step != 1 for d in dims):
      raise ValueError("wgrad 'swap' needs unit steps.")
    # dW[t] = sum_p big[p] small[p - base - t]: small's patches with base
    # 1 - k - base give the taps in reverse order.
    sdims = tuple(Dim(n_big=d.n_small, n_small=d.n_big, k=d.k, step=1,
                      base=1 - d.k - d.base) for d in dims)
    t, c_small = math.prod(d.k for d in dims), small.shape[-1]
    if c_small <= _SLICE_GATHER_CHANNELS:
      # The patches from per-tap slices (XLA's gather of single floats ran
      # 3-4x slower: the VAE's 32 -> 1 output conv), and as the GEMM's lhs
      # (Eigen ran this order 2-3x faster).
      g = gather(small, sdims, _taps(sdims))  # (N, *n_big, T, C_small), taps reversed
      dw = lax.dot_general(g.reshape(-1, t * c_small), _flat(big, 1),
                           (((0,), (0,)), ((), ())), precision=precision)
      return jnp.transpose(dw.reshape(t, c_small, -1), (0, 2, 1))[::-1]
    g = gather(small, sdims)  # (N, *n_big, T, C_small), taps reversed
    dw = lax.dot_general(big, g, ((contract, contract), ((), ())),
                         precision=precision)  # (C_big, T, C_small)
    return jnp.transpose(dw, (1, 0, 2))[::-1]
  if how == 'taps':
    taps = _taps(dims)
    group = max(1, _TAP_STACK_CHANNELS // big.shape[-1])
    padded, offsets = _padded_big(big, dims)
    parts = []
    for i in range(0, len(taps), group):
      g = jnp.stack([_tap_slice(padded, offsets, dims, t)
                     for t in taps[i:i + group]], axis=-2)
      parts.append(lax.dot_general(small, g, ((contract, contract), ((), ())),
                                   precision=precision))  # (C_small, taps, C_big)
    return jnp.transpose(jnp.concatenate(parts, axis=1), (1, 2, 0))
  raise ValueError(f'Unknown wgrad formulation {how!r}.')


# ---------------------------------------------------------------------------
# The maps under custom_vjp: each backward pass is made of the maps again.
# ---------------------------------------------------------------------------


def _linear_map(impl, field, grads):
  """`impl` under a custom VJP whose backward pass is made of the maps again.

  Args:
    impl: `(a, b, dims, precision, how) -> output`, linear in `a` and in `b`.
    field: the `Plan` field that picks impl's formulation.
    grads: `(g, a, b, dims, precision, plan) -> (da, db)`, the cotangents of
      both array inputs given the output's `g` (made of the other maps).
  """

  @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
  def op(a, b, dims, precision, plan):
    return impl(a, b, dims, precision, getattr(plan, field))

  def fwd(a, b, dims, precision, plan):
    return op(a, b, dims, precision, plan), (a, b)

  def bwd(dims, precision, plan, res, g):
    a, b = res
    da, db = grads(g, a, b, dims, precision, plan)
    return da.astype(a.dtype), db.astype(b.dtype)

  op.defvjp(fwd, bwd)
  return op


# The three maps of a convolution, with
#   big: (N, *n_big, C_big), small: (N, *n_small, C_small),
#   w: (T, C_big, C_small) (taps row-major), dims: tuple of `Dim`,
#   precision: `lax.Precision` or None, plan: `Plan` (each map uses its own
#   field; the rest serve the gradients):
# down(big, w, ...) -> small = G . W;
down = _linear_map(_down_impl, 'down', lambda g, big, w, *a: (up(g, w, *a), wgrad(big, g, *a)))
# up(small, w, ...) -> big = gather^T(small . W^T), the adjoint of `down` in big;
up = _linear_map(_up_impl, 'up', lambda g, small, w, *a: (down(g, w, *a), wgrad(g, small, *a)))
# wgrad(big, small, ...) -> dW = G^T . small, contracting batch and space.
wgrad = _linear_map(_wgrad_impl, 'wgrad',
                    lambda g, big, small, *a: (up(small, g, *a), down(big, g, *a)))


# ---------------------------------------------------------------------------
# The chooser.
# ---------------------------------------------------------------------------


def choose(dims, batch, c_big, c_small):
  """The formulation of each map for these shapes.

  Rules read off the per-primitive table of experiments/conv_primitives.py
  (docs/speed.md), preferring, where timings were close, the
  formulation that compiles faster (a 'taps' map compiles one GEMM per tap:
  2-3 s per layer):
    down   'xla': XLA:CPU's strided convolution packs patches block by block
           and ran as fast as or faster than im2col + GEMM, which writes all
           patches out first; 'swap' for a unit-step Conv into one channel
           from at least 8 (conv_primitives.py row V5, the VAE's 32 -> 1
           output conv at batch 256: 7.8 against XLA's 14.8 ms).
    up     'col2im' when strided (XLA's input-dilated convolution ran
           1.2-2x slower), else 'xla'.
    wgrad  strided: 'im2col' when C_big >= 32 and C_small <= 64 (the
           decoders' ConvTransposes and the VAE encoder's second Conv, where
           XLA's kernel gradient ran 1.3-2x slower), else 'xla'; unit steps:
           'swap' when C_small <= C_big / 8 (the VAE's 32 -> 1 output conv),
           else 'xla'.

  Args:
    dims: tuple of `Dim`.
    batch: batch size (unused by the rules; part of the signature so that a
      measured table can key on it).
    c_big, c_small: channels of the big and small sides.

  Returns:
    A `Plan`.
  """
  del batch
  if any(d.step > 1 for d in dims):
    wgrad_how = 'im2col' if c_big >= 32 and c_small <= 64 else 'xla'
    return Plan(down='xla', up='col2im', wgrad=wgrad_how)
  wgrad_how = 'swap' if 8 * c_small <= c_big else 'xla'
  return Plan(down='swap' if _one_channel_out(c_big, c_small) else 'xla', up='xla',
              wgrad=wgrad_how)


def _one_channel_out(c_big, c_small):
  """A unit-step Conv into one channel from at least 8 (the VAE's output
  conv): its down and wgrad maps run fastest as 'swap' (patches of the
  one-channel side)."""
  return c_small == 1 and c_big >= 8


def choose_onednn(dims, batch, c_big, c_small):
  """conv_impl='onednn': every map in oneDNN, except
    - `up` into a single channel (c_big == 1: a ConvTranspose to an image, a
      first Conv's input gradient), where oneDNN's backward-data ran 3.5-7x
      slower than `choose`'s pick (conv_primitives.py rows V1 dx, G3 fwd, D1
      dx: 7.7 / 28.6 / 24.4 ms against col2im's 2.2 / 4.8 / 3.7 at batch 256);
    - a unit-step Conv into one channel from at least 8 (row V5, the VAE's
      output conv): every map 'narrow' (docs/speed.md: ahead of
      oneDNN's and of 'swap' in the training step)."""
  if c_big == 1:
    return ONEDNN._replace(up=choose(dims, batch, c_big, c_small).up)
  if _one_channel_out(c_big, c_small) and all(d.step == 1 for d in dims):
    return NARROW
  return ONEDNN


def valid_plans(dims, c_small=None):
  """Every `Plan` that `dims` allow ('swap' needs unit steps, the library's
  formulations at most 2 spatial dims, 'narrow' c_small == 1)."""
  unit = all(d.step == 1 for d in dims)
  ok = lambda how: ((how not in LIBRARY or len(dims) <= 2)
                    and (how != 'narrow' or c_small == 1))
  downs = [h for h in FORMULATIONS['down'] if ok(h)]
  ups = [h for h in FORMULATIONS['up'] if ok(h)]
  wgrads = [h for h in FORMULATIONS['wgrad']
            if ok(h) and (unit or h != 'swap')]
  return [Plan(*p) for p in itertools.product(downs, ups, wgrads)]
