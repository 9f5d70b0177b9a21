"""Writes the training batches the input pipeline gives (for device tests).

  python tests/data_batches.py NAME DATA_DIR IMAGE_SIZE START N OUT.npz \
      [--coordinator_address=... --num_processes=... --process_id=...]

Steps START .. START+N-1 of `Data(config).train_iterator`, global batch
GLOBAL_BATCH, seed SEED, gathered from every process; process 0 saves them as
OUT.npz (image float32 (N, B, H, W, C), label int32 (N, B)). The device count
comes from XLA_FLAGS.
"""

import os
import sys


GLOBAL_BATCH = 8
SEED = 5


def config_for(name, data_dir, image_size):
  from vaegan_jax import config_base as common  # pylint: disable=g-import-not-at-top
  config = common.get_base_config()
  config.data.name = name
  config.data.data_dir = data_dir
  config.data.image_size = int(image_size)
  config.train.batch_size = GLOBAL_BATCH
  config.seed = SEED
  return config


def batches(config, start, n):
  """Steps start..start+n-1 as numpy: (images (n, B, ...), labels (n, B))."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from vaegan_jax import input_pipeline, sharding  # pylint: disable=g-import-not-at-top
  data = input_pipeline.Data(config)
  it = data.train_iterator(sharding.data_sharding(sharding.make_mesh()), start)
  out = [multihost_utils.process_allgather(next(it), tiled=True) for _ in range(n)]
  it.close()
  return (np.stack([b['image'] for b in out]), np.stack([b['label'] for b in out]))


def main(argv):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from train_families import child_args  # pylint: disable=g-import-not-at-top
  args = child_args(argv)
  name, data_dir, size, start, n, out = args
  images, labels = batches(config_for(name, data_dir, size), int(start), int(n))
  if jax.process_index() == 0:
    np.savez(out, image=images, label=labels)
  print('devices', jax.device_count(), 'processes', jax.process_count(), flush=True)


if __name__ == '__main__':
  main(sys.argv)
