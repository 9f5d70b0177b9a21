"""What every model shares: the common fields of the families' networks and
how many 2x stages an image size takes."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class Net(nn.Module):
  """The fields every network of the three families has.

  Attributes:
    dtype: compute dtype (parameters stay float32).
    conv_impl: the convolution implementation (`layers.Conv`).
    num_classes: K of a class-conditional model (0: unconditional).
  """
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'
  num_classes: int = 0


def num_stages(size: int) -> int:
  """Number of stride-2 stages from `size` down to a base of 7 or 8 pixels.

  28 -> 2 (7x7), 32 -> 2 (8x8), 64 -> 3 (8x8).
  """
  stages = 0
  while size % 2 == 0 and size > 8:
    size //= 2
    stages += 1
  return stages


def base_size(size: int) -> int:
  return size // 2 ** num_stages(size)
