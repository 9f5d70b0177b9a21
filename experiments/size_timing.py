"""Train-step time of one config at several image sizes, interleaved in one run.

  python experiments/size_timing.py --config=configs/gan.py --shapes=28x1,32x1,32x3 \
      --steps=3 --rounds=3

For each shape (SIZExCHANNELS) a folder of random PNGs of that shape is
written to a temporary directory and the config's real train step is built
for it as vaegan_jax/train.py builds it (experiments/throughput.py's
`JaxRunner`: same init, jit, shardings and input pipeline; data.name =
folder:, data.image_size and data.channels set). After compilation and
`--warmup` steps, every shape runs `--steps` steps per round for `--rounds`
rounds, one shape after the other within a round, so the load of a shared
machine hits all shapes alike; the ratios to the first shape are the
numbers to read. `--conv_impls` times each shape with each conv_impl too.

Prints one JSON line per shape (and conv_impl): shape, conv_impl,
step_ms_median, images_per_s, step_cpu_ms_median, model_flops_per_step,
ratio_to_first (median step time over the first case's), load_avg.
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=False)
flags.DEFINE_list('shapes', ['28x1', '32x1', '32x3'], 'Image shapes SIZExCHANNELS.')
flags.DEFINE_list('conv_impls', [''], "conv_impl values ('' = the config's).")
flags.DEFINE_integer('steps', 3, 'Timed steps per shape per round.')
flags.DEFINE_integer('rounds', 3, 'Rounds.')
flags.DEFINE_integer('warmup', 1, 'Untimed steps after compilation.')


def write_folder(root: str, size: int, channels: int, num: int = 128) -> str:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(size * 10 + channels)
  folder = os.path.join(root, f'{size}x{channels}')
  for c in range(2):
    os.makedirs(os.path.join(folder, str(c)), exist_ok=True)
    for i in range(num // 2):
      x = rng.integers(0, 256, (size, size, channels), np.uint8)
      Image.fromarray(x[..., 0] if channels == 1 else x).save(
          os.path.join(folder, str(c), f'{i:04d}.png'))
  return folder


def main(argv):
  del argv
  import throughput  # pylint: disable=g-import-not-at-top
  from vaegan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from vaegan_jax import kernels  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  kernels.setup()
  base = FLAGS.config
  runners = []
  with tempfile.TemporaryDirectory() as root:
    for shape in FLAGS.shapes:
      size, channels = (int(v) for v in shape.split('x'))
      folder = write_folder(root, size, channels)
      for impl in FLAGS.conv_impls:
        config = base.copy_and_resolve_references()
        config.data.name = f'folder:{folder}'
        config.data.image_size, config.data.channels = size, channels
        images, labels = input_pipeline.load_split(config.data.name, 'train', None,
                                                   image_size=size, channels=channels)
        runner = throughput.JaxRunner(config, images, labels, impl or None)
        runner.start(FLAGS.warmup)
        runners.append((shape, impl or config.model.conv_impl, runner))
        print(f'compiled {shape} {impl or config.model.conv_impl}', file=sys.stderr,
              flush=True)
    load_start = os.getloadavg()[0]
    for r in range(FLAGS.rounds):
      for _, _, runner in runners:
        runner.timed_steps(FLAGS.steps)
      print(f'round {r + 1}/{FLAGS.rounds}', file=sys.stderr, flush=True)
    load_end = os.getloadavg()[0]
    first = None
    for shape, impl, runner in runners:
      res = runner.result(base.train.batch_size)
      first = first or res['step_ms_median']
      print(json.dumps({'shape': shape, 'conv_impl': impl,
                        'step_ms_median': res['step_ms_median'],
                        'images_per_s': res['images_per_s'],
                        'step_cpu_ms_median': res['step_cpu_ms_median'],
                        'model_flops_per_step': res.get('model_flops_per_step'),
                        'ratio_to_first': round(res['step_ms_median'] / first, 3),
                        'load_avg': [round(load_start, 1), round(load_end, 1)]}),
            flush=True)
      runner.close()


if __name__ == '__main__':
  from vaegan_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run(main)
