"""Each conv of dcgan28 / convvae28 split into its three primitives: every
formulation of kernels/conv_cpu.py beside TensorFlow's oneDNN kernels.

  python experiments/conv_primitives.py                 # all rows, minutes on 2 cores
  python experiments/conv_primitives.py --only V3,G2 --batch 64
  python experiments/conv_primitives.py --ceiling       # only the matmul ceiling
  python experiments/conv_primitives.py --chooser=onednn  # mark conv_impl='onednn''s picks

Per layer at its real shapes (batch 256), the median ms of the forward conv,
its input gradient (dx) and its kernel gradient (dk). conv_cpu writes every
conv as three maps between a "big" and a "small" array (its docstring):
down (Conv forward, ConvTranspose dx), up (ConvTranspose forward, Conv dx)
and wgrad (dk), each in several formulations (im2col, col2im, per-tap GEMMs,
XLA's own convolution, oneDNN's convolution as a custom call, the same
library's loops for a one-channel small side ('narrow', row V5):
conv_cpu.FORMULATIONS; 'onednn' is built on first use, kernels/conv_onednn.py,
and left out with a note where it cannot be). Every formulation of the
primitive's map is timed, then TensorFlow's kernels as Keras runs them
(conv2d, Conv2DBackpropInput, Conv2DBackpropFilter; conv2d_transpose and its
gradients for a ConvTranspose) when TensorFlow is importable
(requirements-tf.txt). All of one primitive's candidates are timed in
alternation, so load from other processes hits them alike.

Also printed: the float32 matmul ceiling of this machine measured in the same
run (GFLOP/s of a 2048^3 jax matmul, best of the repeats), each time as % of
that ceiling (2 * N * small pixels * taps * C_in * C_out FLOPs), the
formulation `conv_cpu.choose` (or with --chooser=onednn, `choose_onednn`)
picks (*), and the chosen time over TF's.
"""

import argparse
import math
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from jax import lax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from vaegan_jax import kernels  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax.kernels import conv_cpu, conv_onednn  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax.models import layers  # pylint: disable=g-import-not-at-top,wrong-import-position

try:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
except ImportError:
  tf = None

# id and description, 'C'onv or 'T'ranspose, input size, C_in, C_out, kernel, stride.
ROWS = [
    ('V1 Conv 1->32 k3 s2 28->14', 'C', 28, 1, 32, 3, 2),
    ('V2 Conv 32->64 k3 s2 14->7', 'C', 14, 32, 64, 3, 2),
    ('V3 ConvT 64->64 k3 s2 7->14', 'T', 7, 64, 64, 3, 2),
    ('V4 ConvT 64->32 k3 s2 14->28', 'T', 14, 64, 32, 3, 2),
    ('V5 Conv 32->1 k3 s1 28->28', 'C', 28, 32, 1, 3, 1),
    ('G1 ConvT 256->128 k5 s1 7->7', 'T', 7, 256, 128, 5, 1),
    ('G2 ConvT 128->64 k5 s2 7->14', 'T', 7, 128, 64, 5, 2),
    ('G3 ConvT 64->1 k5 s2 14->28', 'T', 14, 64, 1, 5, 2),
    ('D1 Conv 1->64 k5 s2 28->14', 'C', 28, 1, 64, 5, 2),
    ('D2 Conv 64->128 k5 s2 14->7', 'C', 14, 64, 128, 5, 2),
]


def timed(calls, repeats):
  """Median ms of each zero-argument call, the calls timed alternately."""
  for call in calls.values():
    call()  # Compile and warm up.
  times = {name: [] for name in calls}
  for _ in range(repeats):
    for name, call in calls.items():
      start = time.perf_counter()
      call()
      times[name].append(time.perf_counter() - start)
  return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def jax_call(fn, *args):
  fn = jax.jit(fn)
  return lambda: jax.block_until_ready(fn(*args))


def tf_call(fn, *args):
  fn = tf.function(fn)
  return lambda: fn(*args).numpy()


def ceiling_gflops(repeats):
  """float32 GFLOP/s of a 2048^3 matmul under jax.jit (best of the repeats)."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((2048, 2048)),
                  jnp.float32)
  mm = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(mm(a, a))
  best = min(_seconds(lambda: jax.block_until_ready(mm(a, a)))
             for _ in range(repeats))
  return 2 * 2048**3 / best / 1e9


def _seconds(call):
  start = time.perf_counter()
  call()
  return time.perf_counter() - start


def tf_primitives(kind, x, kernel, dy, s):
  """TensorFlow's forward, dx and dk of the layer, as zero-argument calls."""
  b, h, _, ci = x.shape
  k, co = kernel.shape[0], kernel.shape[-1]
  xt, dyt = tf.constant(np.asarray(x)), tf.constant(np.asarray(dy))
  if kind == 'C':
    kt = tf.constant(np.asarray(kernel))
    return {
        'fwd': tf_call(lambda a, w: tf.nn.conv2d(a, w, s, 'SAME'), xt, kt),
        'dx': tf_call(lambda w, g: tf.raw_ops.Conv2DBackpropInput(
            input_sizes=tf.constant([b, h, h, ci]), filter=w, out_backprop=g,
            strides=[1, s, s, 1], padding='SAME'), kt, dyt),
        'dk': tf_call(lambda a, g: tf.raw_ops.Conv2DBackpropFilter(
            input=a, filter_sizes=tf.constant([k, k, ci, co]), out_backprop=g,
            strides=[1, s, s, 1], padding='SAME'), xt, dyt)}
  kt = tf.constant(np.swapaxes(np.asarray(kernel), 2, 3))  # (k, k, out, in)
  return {
      'fwd': tf_call(lambda a, w: tf.nn.conv2d_transpose(
          a, w, [b, h * s, h * s, co], s, 'SAME'), xt, kt),
      'dx': tf_call(lambda w, g: tf.nn.conv2d(g, w, s, 'SAME'), kt, dyt),
      'dk': tf_call(lambda a, g: tf.raw_ops.Conv2DBackpropFilter(
          input=g, filter_sizes=tf.constant([k, k, co, ci]), out_backprop=a,
          strides=[1, s, s, 1], padding='SAME'), xt, dyt)}


def layer_rows(row, batch, repeats, ceiling, chooser=conv_cpu.choose):
  """Timings of one layer's three primitives: a list of printable lines."""
  name, kind, h, ci, co, k, s = row
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, h, h, ci)), jnp.float32)
  kernel = jnp.asarray(0.1 * rng.standard_normal((k, k, ci, co)), jnp.float32)
  if kind == 'C':
    strides, dilation = (s, s), (1, 1)
    padding = lax.padtype_to_pads((h, h), (k, k), strides, 'SAME')
  else:
    strides, dilation = (1, 1), (s, s)
    padding = [layers._transpose_padding(k, s, 'SAME')] * 2  # pylint: disable=protected-access
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  dims, transpose = conv_cpu.conv_dims((h, h), (k, k), strides, padding,
                                       dilation)
  c_big, c_small = (co, ci) if transpose else (ci, co)
  big = jnp.asarray(rng.standard_normal(
      (batch, *(d.n_big for d in dims), c_big)), jnp.float32)
  small = jnp.asarray(rng.standard_normal(
      (batch, *(d.n_small for d in dims), c_small)), jnp.float32)
  w = jnp.asarray(0.1 * rng.standard_normal((k * k, c_big, c_small)),
                  jnp.float32)
  flops = 2 * batch * math.prod(d.n_small for d in dims) * k * k * ci * co
  plan = chooser(dims, batch, c_big, c_small)
  maps = {'fwd': 'up' if transpose else 'down',
          'dx': 'down' if transpose else 'up', 'dk': 'wgrad'}
  impls = {'down': (conv_cpu._down_impl, big, w),  # pylint: disable=protected-access
           'up': (conv_cpu._up_impl, small, w),  # pylint: disable=protected-access
           'wgrad': (conv_cpu._wgrad_impl, big, small)}  # pylint: disable=protected-access
  dy = big if transpose else small
  tf_calls = tf_primitives(kind, x, kernel, dy, s) if tf else {}
  lines = [f'{name}  ({flops / 1e9:.2f} GFLOP per primitive)']
  for prim, m in maps.items():
    fn, a, b = impls[m]
    calls = {}
    for how in conv_cpu.FORMULATIONS[m]:
      if how == 'swap' and any(d.step > 1 for d in dims):
        continue
      if how in conv_cpu.LIBRARY and not conv_onednn.available():
        continue
      if how == 'narrow' and c_small != 1:
        continue
      calls[how] = jax_call(
          lambda a, b, how=how, fn=fn: fn(a, b, dims, None, how), a, b)
    if prim in tf_calls:
      calls['TF'] = tf_calls[prim]
    ms = timed(calls, repeats)
    chosen = getattr(plan, m)
    cells = []
    for how, t in ms.items():
      mark = '*' if how == chosen else ' '
      cells.append(f'{how}{mark}{t:8.1f} ({100 * flops / t / 1e6 / ceiling:3.0f}%)')
    ratio = f'  chosen/TF {ms[chosen] / ms["TF"]:.2f}' if 'TF' in ms else ''
    lines.append(f'  {prim:3s} {m:5s} ' + '  '.join(cells) + ratio)
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--only', default='', help='row ids, e.g. V3,G2')
  parser.add_argument('--ceiling', action='store_true',
                      help='print only the matmul ceiling')
  parser.add_argument('--chooser', choices=('gemm', 'onednn'), default='gemm',
                      help="whose pick * marks: conv_cpu.choose (conv_impl="
                      "'gemm') or conv_cpu.choose_onednn (conv_impl='onednn')")
  args = parser.parse_args()
  kernels.setup()
  load = os.getloadavg()[0]
  ceiling = ceiling_gflops(args.repeats)
  print(f'matmul ceiling (float32, 2048^3, jax.jit): {ceiling:.1f} GFLOP/s; '
        f'load average {load:.2f}', flush=True)
  if args.ceiling:
    return
  if tf is None:
    print('TensorFlow not importable: no TF column '
          '(pip install -r requirements-tf.txt)')
  only = set(filter(None, args.only.split(',')))
  chooser = {'gemm': conv_cpu.choose, 'onednn': conv_cpu.choose_onednn}[
      args.chooser]
  print(f'batch {args.batch}; ms (median) and % of the ceiling; * = '
        f'conv_cpu.{chooser.__name__}\'s pick', flush=True)
  for row in ROWS:
    if only and row[0].split()[0] not in only:
      continue
    for line in layer_rows(row, args.batch, args.repeats, ceiling, chooser):
      print(line, flush=True)
  print(f'ceiling again: {ceiling_gflops(args.repeats):.1f} GFLOP/s; load '
        f'average {os.getloadavg()[0]:.2f}', flush=True)


if __name__ == '__main__':
  main()
