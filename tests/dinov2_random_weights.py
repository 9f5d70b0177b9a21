"""Seeded random weights for DINOv2 ViTs, rebuilt identically with or without
torch (numpy only), so the golden outputs of the reference network
(tests/golden/make_dinov2_golden.py) need no 1.2 GB weights file in git.

Scaled so the CLS output depends on the image through all blocks (the
generator prints the spread of features across images): patch embedding and
linear layers ~ N(0, 1/fan_in) (attention logits O(1)), LayerScale
gamma ~ U(0.1, 0.4) (the released model's are small too), LayerNorm
weight ~ U(0.8, 1.2), biases ~ N(0, 0.05), position embedding ~ N(0, 0.3),
CLS token ~ N(0, 1).
"""

import numpy as np

SEED = 34


def random_state(shapes: dict, seed: int = SEED) -> dict:
  """Random PyTorch-layout weights.

  Args:
    shapes: {state-dict key: shape}; keys are visited in sorted order.
    seed: numpy generator seed.

  Returns:
    {key: float32 array of that shape}.
  """
  rng = np.random.default_rng(seed)
  out = {}
  for key in sorted(shapes):
    shape = tuple(shapes[key])
    if key.endswith('gamma'):
      w = rng.uniform(0.1, 0.4, shape)
    elif key in ('cls_token', 'mask_token'):
      w = rng.standard_normal(shape, np.float32)
    elif key == 'pos_embed':
      w = rng.standard_normal(shape, np.float32) * np.float32(0.3)
    elif 'norm' in key and key.endswith('weight'):
      w = rng.uniform(0.8, 1.2, shape)
    elif key.endswith('bias'):
      w = rng.standard_normal(shape, np.float32) * np.float32(0.05)
    elif key.endswith('weight'):
      fan_in = int(np.prod(shape[1:]))
      w = rng.standard_normal(shape, np.float32) * np.float32(fan_in ** -0.5)
    else:
      raise KeyError(key)
    out[key] = np.asarray(w, np.float32)
  return out
