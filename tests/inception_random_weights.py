"""Seeded random weights for the FID Inception, rebuilt identically with or
without torch (numpy only), so the golden outputs of the reference network
(tests/golden/make_inception_golden.py) need no 95 MB weights file in git.

Scaled so activations stay O(1) through all 94 conv layers (checked by the
generator, which prints per-block statistics): He-normal convs; BatchNorm with
random running statistics (var in [0.5, 2], mean ~ N(0, 0.2)) and
gamma = sqrt(var + eps) * U(0.8, 1.2), so the running statistics are exercised
without shrinking or blowing up the signal; fc ~ N(0, 16/2048) (logits std ~5, so the
Inception Score sees confident, image-dependent predictions), bias ~ N(0, 0.1).
"""

import numpy as np

SEED = 15


def random_state(shapes: dict, seed: int = SEED) -> dict:
  """Random PyTorch-layout weights.

  Args:
    shapes: {state-dict key: shape} of the FID Inception (no
      num_batches_tracked); keys are visited in sorted order.
    seed: numpy generator seed.

  Returns:
    {key: float32 array of that shape}.
  """
  rng = np.random.default_rng(seed)
  out = {}
  for key in sorted(shapes):
    shape = tuple(shapes[key])
    if key == 'fc.weight':
      w = rng.normal(0.0, 4.0 * (1.0 / shape[1]) ** 0.5, shape)
    elif key == 'fc.bias':
      w = rng.normal(0.0, 0.1, shape)
    elif key.endswith('conv.weight'):
      fan_in = shape[1] * shape[2] * shape[3]
      w = rng.normal(0.0, (2.0 / fan_in) ** 0.5, shape)
    elif key.endswith('bn.running_var'):
      w = rng.uniform(0.5, 2.0, shape)
    elif key.endswith('bn.running_mean'):
      w = rng.normal(0.0, 0.2, shape)
    elif key.endswith('bn.bias'):
      w = rng.normal(0.0, 0.2, shape)
    elif key.endswith('bn.weight'):
      w = rng.uniform(0.8, 1.2, shape)  # times sqrt(var + eps) below
    else:
      raise KeyError(key)
    out[key] = w.astype(np.float32)
  for key in out:
    if key.endswith('bn.weight'):
      var = out[key[:-len('weight')] + 'running_var']
      out[key] = (out[key] * np.sqrt(var + 1e-3)).astype(np.float32)
  return out
