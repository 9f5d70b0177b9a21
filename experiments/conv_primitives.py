"""Each conv of dcgan28 / convvae28 split into its three primitives, XLA:CPU vs TF.

  python experiments/conv_primitives.py            # all rows, ~minutes on 2 cores
  python experiments/conv_primitives.py V3,V4      # some rows; B=64 env for batch

Per layer at its real shapes (batch 256), median ms of: the forward conv, its
input gradient (dx) and its kernel gradient (dk), as jax.jit of the plain
`lax.conv_general_dilated` formulation flax uses (what XLA:CPU does with
each), then 'alt': the same result by explicit zero insertion and a stride-1
conv (ConvT forward; strided Conv dx), then the TensorFlow (oneDNN) kernels
Keras runs: conv2d, Conv2DBackpropInput, Conv2DBackpropFilter
(conv2d_transpose and its gradients for ConvT). Shows where a Flax step on
CPU loses to Keras's tf.function step layer by layer.
"""
import os, sys, time
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL','3')
import numpy as np, jax, jax.numpy as jnp
from jax import lax
try:
  import tensorflow as tf
except ImportError:
  sys.exit('conv_primitives.py compares with TensorFlow: pip install -r requirements-tf.txt')
B = int(os.environ.get('B', 256))
DN = ('NHWC','HWIO','NHWC')
def conv(x, k, s=1, pad='SAME', lhs_dil=(1,1)):
  return lax.conv_general_dilated(x, k, (s,s), pad, lhs_dilation=lhs_dil, dimension_numbers=DN)
def tpad(k, s):
  total = k + s - 2
  lo = k - 1 if s > k - 1 else -(-total // 2)
  return (lo, total - lo)
def convT(x, k, s):
  p = tpad(k.shape[0], s)
  return conv(x, k, 1, [p, p], (s, s))
def convT_zeros(x, k, s):
  # explicit zero insertion then stride-1 conv
  p = tpad(k.shape[0], s)
  xz = lax.pad(x, jnp.zeros((), x.dtype), [(0,0,0), (p[0], p[1], s-1), (p[0], p[1], s-1), (0,0,0)])
  return conv(xz, k, 1, 'VALID')
def timeit(f, *a, n=5):
  f = jax.jit(f); jax.block_until_ready(f(*a)); ts=[]
  for _ in range(n):
    t=time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter()-t)
  return 1e3*np.median(ts)
def ttf(f, *a, n=5):
  f = tf.function(f); f(*a); ts=[]
  for _ in range(n):
    t=time.perf_counter(); f(*a).numpy(); ts.append(time.perf_counter()-t)
  return 1e3*np.median(ts)
rng = np.random.default_rng(0)
rows = [('V2 Conv 32->64 k3 s2 14', 'C', 14, 32, 64, 3, 2),
        ('V3 ConvT 64->64 k3 s2 7', 'T', 7, 64, 64, 3, 2),
        ('V4 ConvT 64->32 k3 s2 14', 'T', 14, 64, 32, 3, 2),
        ('V5 Conv 32->1 k3 s1 28', 'C', 28, 32, 1, 3, 1),
        ('V1 Conv 1->32 k3 s2 28', 'C', 28, 1, 32, 3, 2),
        ('G1 ConvT 256->128 k5 s1 7', 'T', 7, 256, 128, 5, 1),
        ('G2 ConvT 128->64 k5 s2 7', 'T', 7, 128, 64, 5, 2),
        ('G3 ConvT 64->1 k5 s2 14', 'T', 14, 64, 1, 5, 2),
        ('D1 Conv 1->64 k5 s2 28', 'C', 28, 1, 64, 5, 2),
        ('D2 Conv 64->128 k5 s2 14', 'C', 14, 64, 128, 5, 2)]
only = sys.argv[1].split(',') if len(sys.argv) > 1 else None
print(f'B={B}  ms: fwd / dx / dk  (jax xla) | alt | tf', flush=True)
for name, kind, h, ci, co, k, s in rows:
  if only and name.split()[0] not in only: continue
  x = jnp.asarray(rng.standard_normal((B,h,h,ci), np.float32))
  K = jnp.asarray(rng.standard_normal((k,k,ci,co), np.float32)*0.1)
  f = (lambda x,K: conv(x,K,s)) if kind=='C' else (lambda x,K: convT(x,K,s))
  y = jax.eval_shape(f, x, K); dy = jnp.asarray(rng.standard_normal(y.shape, np.float32))
  fwd = timeit(f, x, K)
  dx = timeit(lambda x,K,dy: jax.vjp(lambda x: f(x,K), x)[1](dy)[0], x, K, dy)
  dk = timeit(lambda x,K,dy: jax.vjp(lambda K: f(x,K), K)[1](dy)[0], x, K, dy)
  alt = ''
  if kind == 'T' and s > 1:
    alt = f'zeros-fwd {timeit(lambda x,K: convT_zeros(x,K,s), x, K):.1f}'
  if kind == 'C' and s > 1:
    # dx of strided conv == convT of dy with flipped kernel: time zero-insertion form
    Kt = jnp.swapaxes(K[::-1, ::-1], 2, 3)
    p = k - 1 - lax.padtype_to_pads((h,h),(k,k),(s,s),'SAME')[0][0]
    def dx_zero(dy, Kt):
      hi = h + k - 1 - p - ((dy.shape[1]-1)*s + 1)
      dz = lax.pad(dy, jnp.zeros((), dy.dtype), [(0,0,0),(p,hi,s-1),(p,hi,s-1),(0,0,0)])
      return conv(dz, Kt, 1, 'VALID')
    alt = f'zeros-dx {timeit(dx_zero, dy, Kt):.1f}'
  xt, Kt_, dyt = tf.constant(np.asarray(x)), tf.constant(np.asarray(K)), tf.constant(np.asarray(dy))
  if kind == 'C':
    tfwd = ttf(lambda a,b: tf.nn.conv2d(a,b,s,'SAME'), xt, Kt_)
    tdx = ttf(lambda b,g: tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.constant([B,h,h,ci]), filter=b, out_backprop=g, strides=[1,s,s,1], padding='SAME'), Kt_, dyt)
    tdk = ttf(lambda a,g: tf.raw_ops.Conv2DBackpropFilter(input=a, filter_sizes=tf.constant([k,k,ci,co]), out_backprop=g, strides=[1,s,s,1], padding='SAME'), xt, dyt)
  else:
    Ktt = tf.constant(np.swapaxes(np.asarray(K),2,3))  # (k,k,out,in) for conv2d_transpose
    tfwd = ttf(lambda a,b: tf.nn.conv2d_transpose(a,b,[B,h*s,h*s,co],s,'SAME'), xt, Ktt)
    tdx = ttf(lambda b,g: tf.nn.conv2d(g,b,s,'SAME'), Ktt, dyt)
    tdk = ttf(lambda a,g: tf.raw_ops.Conv2DBackpropFilter(input=g, filter_sizes=tf.constant([k,k,co,ci]), out_backprop=a, strides=[1,s,s,1], padding='SAME'), xt, dyt)
  print(f'{name:28s} jax {fwd:8.1f} {dx:8.1f} {dk:8.1f} | {alt:18s} | tf {tfwd:6.1f} {tdx:6.1f} {tdk:6.1f}', flush=True)
