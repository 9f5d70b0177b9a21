"""Per-layer forward+backward time of layers.Conv / ConvTranspose: xla vs fast.

  python experiments/layer_timing.py                 # ~2-3 min on 2 CPU cores
  python experiments/layer_timing.py --only G2,V4 --batch 64
  python experiments/layer_timing.py --second_order  # + WGAN-GP-style rows
  XLA_FLAGS=--xla_cpu_use_thunk_runtime=false python experiments/layer_timing.py

For every conv layer of the dcgan28 and convvae28 nets (and the DCGAN at 32 px,
rows H and E), at its real shapes,
times jit(grad of sum(layer(x) * r) w.r.t. params and x) -- the forward pass
plus both gradients -- and prints the median ms per impl and the speed-up.
The two impls are timed alternately so that load on a shared machine hits
both alike. `--second_order` adds D's convs under a gradient penalty:
grad w.r.t. params of ||d sum(layer(x) * r) / dx||^2.
"""

import argparse
import os
import time


import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from vaegan_jax import kernels  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax.models import layers  # pylint: disable=g-import-not-at-top

# id and description, 'C'onv or 'T'ranspose, features, kernel, stride, (H, C_in).
LAYERS = [
    ('G1 dcgan ConvT 256->128 k5 s1 7->7', 'T', 128, 5, 1, (7, 256)),
    ('G2 dcgan ConvT 128->64 k5 s2 7->14', 'T', 64, 5, 2, (7, 128)),
    ('G3 dcgan ConvT 64->1 k5 s2 14->28', 'T', 1, 5, 2, (14, 64)),
    ('D1 dcgan Conv 1->64 k5 s2 28->14', 'C', 64, 5, 2, (28, 1)),
    ('D2 dcgan Conv 64->128 k5 s2 14->7', 'C', 128, 5, 2, (14, 64)),
    ('V1 vae Conv 1->32 k3 s2 28->14', 'C', 32, 3, 2, (28, 1)),
    ('V2 vae Conv 32->64 k3 s2 14->7', 'C', 64, 3, 2, (14, 32)),
    ('V3 vae ConvT 64->64 k3 s2 7->14', 'T', 64, 3, 2, (7, 64)),
    ('V4 vae ConvT 64->32 k3 s2 14->28', 'T', 32, 3, 2, (14, 64)),
    ('V5 vae ConvT 32->1 k3 s1 28->28', 'T', 1, 3, 1, (28, 32)),
    ('K3 vae ConvT 64->64 k4 s2 7->14', 'T', 64, 4, 2, (7, 64)),
    ('K4 vae ConvT 64->32 k4 s2 14->28', 'T', 32, 4, 2, (14, 64)),
    ('K5 vae Conv 32->1 k3 s1 28->28', 'C', 1, 3, 1, (28, 32)),
    # The DCGAN at 32 px (models/gan.py PLANS[32], 3 channels).
    ('H1 dcgan32 ConvT 256->128 k5 s2 4->8', 'T', 128, 5, 2, (4, 256)),
    ('H2 dcgan32 ConvT 128->64 k5 s2 8->16', 'T', 64, 5, 2, (8, 128)),
    ('H3 dcgan32 ConvT 64->3 k5 s2 16->32', 'T', 3, 5, 2, (16, 64)),
    ('E1 dcgan32 Conv 3->32 k5 s2 32->16', 'C', 32, 5, 2, (32, 3)),
    ('E2 dcgan32 Conv 32->64 k5 s2 16->8', 'C', 64, 5, 2, (16, 32)),
    ('E3 dcgan32 Conv 64->128 k5 s2 8->4', 'C', 128, 5, 2, (8, 64)),
]


def make_step(kind, features, k, s, hc, impl, batch, second_order):
  """A jitted gradient step for one layer and its arguments."""
  cls = layers.ConvTranspose if kind == 'T' else layers.Conv
  layer = cls(features, (k, k), strides=(s, s), padding='SAME', impl=impl)
  h, c = hc
  kx, kp, kr = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (batch, h, h, c))
  params = layer.init(kp, x[:1])
  r = jax.random.normal(kr, jax.eval_shape(layer.apply, params, x).shape)

  def loss(p, x, r):
    return jnp.sum(layer.apply(p, x) * r)

  if second_order:
    penalty = lambda p, x, r: jnp.sum(jax.grad(loss, argnums=1)(p, x, r)**2)
    step = jax.jit(jax.grad(penalty))
  else:
    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
  jax.block_until_ready(step(params, x, r))  # compile and warm up
  return lambda: step(params, x, r)


def time_pair(steps, repeats):
  """Median ms of each step, timed alternately; stops early when slow."""
  times = {name: [] for name in steps}
  for i in range(repeats):
    for name, step in steps.items():
      start = time.perf_counter()
      jax.block_until_ready(step())
      times[name].append(time.perf_counter() - start)
    if i >= 2 and max(t[-1] for t in times.values()) > 2:
      break  # a slow layer: 3 runs are enough
  return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--only', default='', help='ids, e.g. G2,V4')
  parser.add_argument('--second_order', action='store_true')
  args = parser.parse_args()
  kernels.setup()
  only = set(filter(None, args.only.split(',')))
  rows = [(row, False) for row in LAYERS]
  if args.second_order:
    rows += [(row, True) for row in LAYERS if row[1] == 'C' and row[4] > 1]
  print(f'backend={jax.default_backend()} batch={args.batch}: ms per '
        'forward + grads w.r.t. input and params (median)')
  print(f'{"layer":40s} {"xla":>9s} {"fast":>9s} {"speed-up":>9s}')
  total = {'xla': 0.0, 'fast': 0.0}
  for (name, kind, features, k, s, hc), second in rows:
    if only and name.split()[0] not in only:
      continue
    steps = {impl: make_step(kind, features, k, s, hc, impl, args.batch,
                             second) for impl in ('xla', 'fast')}
    ms = time_pair(steps, args.repeats)
    label = name + (' [GP]' if second else '')
    if not second:
      for impl in ms:
        total[impl] += ms[impl]
    print(f'{label:40s} {ms["xla"]:9.1f} {ms["fast"]:9.1f} '
          f'{ms["xla"] / ms["fast"]:8.1f}x', flush=True)
  print(f'{"total (first-order rows)":40s} {total["xla"]:9.1f} '
        f'{total["fast"]:9.1f} {total["xla"] / total["fast"]:8.1f}x')


if __name__ == '__main__':
  main()
