"""Random examples of a known TFDS dataset, without TensorFlow or files; and
a folder of random digit-like PNGs in class sub-folders (`digit_folder`).

`with mock_tfds(num_examples=N):` makes every TFDS split (`sources.tfds_records`)
hold N random examples of that dataset's exact stored shapes (celeb_a's raw
218x178 photos included, so the crop-and-resize path runs), served through the
project's own source layer. It replaces `tfds.testing.mock_data`, which needs
TensorFlow.
"""

import contextlib
import zlib
from unittest import mock

import numpy as np

from vaegan_jax.data import sources

RAW_SHAPES = {'celeb_a': (218, 178, 3)}  # Stored shape where preprocessing changes it.


def fake_records(name: str, split: str, num_examples: int, seed: int = 0) -> list:
  """N feature dicts {'image': uint8, label_key: int} of `name`'s shapes."""
  spec = sources.DATASETS[name]
  shape = RAW_SHAPES.get(name, spec.image_shape)
  rng = np.random.default_rng([seed, zlib.crc32(f'{name}/{split}'.encode())])
  return [{'image': rng.integers(0, 256, shape, dtype=np.uint8),
           spec.label_key: int(rng.integers(max(spec.num_classes, 1)))}
          for _ in range(num_examples)]


@contextlib.contextmanager
def mock_tfds(num_examples: int, seed: int = 0):
  def records(name, split, data_dir):
    del data_dir
    return fake_records(name, split, num_examples, seed)
  with mock.patch.object(sources, 'tfds_records', records):
    yield


def digit_folder(root, classes: int = 4, per_class: int = 40) -> str:
  """`root`/<class>/<i>.png: 28x28 grey PNGs of random dots, denser for
  higher classes (so a classifier can tell them apart); the test files in
  path order start with one class. Returns str(root)."""
  import os  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for c in range(classes):
    os.makedirs(f'{root}/{c}', exist_ok=True)
    for i in range(per_class):
      image = (rng.random((28, 28)) < 0.1 + 0.2 * c).astype(np.uint8) * 255
      Image.fromarray(image).save(f'{root}/{c}/{i:03d}.png')
  return str(root)
