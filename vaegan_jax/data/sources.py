"""Random-access image sources: the embedded mnist5k, TFDS data sources, folders.

Every source is indexable without being read whole: `len(source)` examples,
`source.read(indices)` -> (uint8 images (n, H, W, C), int32 labels (n,)),
labels -1 where the dataset has none. Three kinds:

  * `mnist5k`: the project's own TFDS builder (vaegan_jax/datasets/mnist5k.py),
    prepared offline as array_record files (no TensorFlow) and read through
    `tfds.data_source`.
  * every other name in `DATASETS`: `tfds.data_source` over array_record files
    prepared in `data_dir` (or TFDS's default); never downloaded when the
    download host is unreachable (one-line error instead of TFDS's retries).
  * `folder:PATH`: PNG/JPEG/WebP files found recursively under PATH, labelled
    by their top-level sub-folder when there are several, centre-cropped and
    resized to `config.data.image_size` (0, the default: the images' own size
    when they share one, else the nearest size the networks support). See
    `vaegan_jax/data/folder.py`.

TensorFlow is never imported here.
"""

import dataclasses
import os
import socket
import threading

from absl import logging
import numpy as np

from vaegan_jax.data.folder import FOLDER_PREFIX
from vaegan_jax.data.folder import FolderIndex  # pylint: disable=unused-import
from vaegan_jax.data.folder import FolderSource
from vaegan_jax.data.folder import IMAGE_EXTENSIONS  # pylint: disable=unused-import
from vaegan_jax.data.folder import PLAIN_MODES
from vaegan_jax.data.folder import decode_into
from vaegan_jax.data.folder import open_image
from vaegan_jax.data.folder import scan_folder
from vaegan_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the project knows about a dataset without reading it."""
  name: str
  image_shape: tuple  # (H, W, C) after preprocessing.
  num_classes: int    # 0 where the dataset has no class label.
  train_split: str = 'train'
  test_split: str = 'test'
  label_key: str = 'label'
  center_crop: bool = False  # Centre square crop, then resize to image_shape.
  folder_channels: int = 0   # folder:PATH: config.data.channels (0 = the majority's).


DATASETS = {
    s.name: s for s in [
        DatasetSpec('mnist5k', (28, 28, 1), 10),
        DatasetSpec('mnist', (28, 28, 1), 10),
        DatasetSpec('fashion_mnist', (28, 28, 1), 10),
        DatasetSpec('cifar10', (32, 32, 3), 10),
        DatasetSpec('svhn_cropped', (32, 32, 3), 10),
        DatasetSpec('celeb_a', (64, 64, 3), 0, center_crop=True),
    ]
}

EMBEDDED = 'mnist5k'
# Sizes every family's default networks take (models/gan.py PLANS; the VAE
# takes any size): a folder of mixed sizes is resized to the nearest.
STANDARD_SIZES = (28, 32, 64)
DEFAULT_EMBEDDED_DATA_DIR = os.path.join(
    os.path.expanduser('~'), '.cache', 'vaegan_jax', 'tensorflow_datasets')
TF_HINT = 'pip install -r requirements-tf.txt'


def is_folder(name: str) -> bool:
  return name.startswith(FOLDER_PREFIX)


def get_spec(name: str, image_size: int | None = None, channels: int = 0,
             sizes=None) -> DatasetSpec:
  """The spec of a known dataset or of `folder:PATH`; a UserError otherwise.

  Args:
    name: a key of `DATASETS`, or 'folder:PATH'.
    image_size: side of the square images of a folder dataset; 0 or None =
      `native_size(name, sizes)`. Ignored for TFDS datasets, whose shape is
      fixed.
    channels: folder datasets: 1 or 3 forces the channel count; 0 = the
      majority's (`folder.scan_folder`).
    sizes: the image sizes the model takes (None = any), for the native size.
  """
  if is_folder(name):
    index = scan_folder(name[len(FOLDER_PREFIX):], int(channels or 0))
    size = int(image_size or native_size(name, sizes, channels, say=False))
    if size < 8:
      raise UserError(f'config.data.image_size={size} is too small; use 28, 32, 64 or 128.')
    return DatasetSpec(name, (size, size, index.channels), index.num_classes,
                       folder_channels=int(channels or 0))
  if name not in DATASETS:
    raise UserError(f'Unknown dataset {name!r}; known datasets: '
                    f'{", ".join(sorted(DATASETS))}, or folder:PATH.')
  return DATASETS[name]


_SAID = set()


def native_size(name: str, sizes=None, channels: int = 0, say: bool = True) -> int:
  """The default side of a folder's images: their own when they all share one
  square size that the model takes (`sizes`; None = any), else the size of
  `sizes` (default `STANDARD_SIZES`) nearest their median shorter side, said
  once per process (`say`)."""
  index = scan_folder(name[len(FOLDER_PREFIX):], int(channels or 0))
  own = index.native_size
  if own is not None and (sizes is None or own in sizes):
    return own
  typical = index.typical_size
  choices = tuple(sizes or STANDARD_SIZES)
  size = min(choices, key=lambda s: (abs(s - typical), s))
  if say and (name, size) not in _SAID:
    _SAID.add((name, size))
    why = (f'they are {own}x{own}, which the networks do not take' if own is not None
           else f'their sizes differ (median shorter side {typical})')
    print(f'{name}: images resized to {size}x{size} ({why}; supported: '
          f'{", ".join(map(str, choices))}); set --config.data.image_size to choose.',
          flush=True)
  return size


def resolve_data_dir(name: str, data_dir: str | None) -> str | None:
  """The embedded set lives in the user's cache; real sets in TFDS's default."""
  if data_dir:
    return os.path.expanduser(data_dir)
  return DEFAULT_EMBEDDED_DATA_DIR if name == EMBEDDED else None


# ---------------------------------------------------------------------------
# Decoding helpers (numpy + PIL).
# ---------------------------------------------------------------------------


def fit_image(image: np.ndarray, shape: tuple) -> np.ndarray:
  """uint8 (h, w, c) -> uint8 `shape` (H, W, C): centre square crop, antialiased
  resize, grey<->RGB conversion. Returns `image` itself when it already fits."""
  if image.ndim == 2:
    image = image[..., None]
  height, width, channels = shape
  if image.shape == tuple(shape):
    return image
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, w = image.shape[:2]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  image = image[top:top + side, left:left + side]
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  return _pil_to_array(pil, shape)


def _pil_to_array(pil, shape: tuple) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  height, width, channels = shape
  if pil.mode not in ('L', 'RGB'):
    pil = pil.convert('RGBA').convert('RGB') if channels == 3 else pil.convert('L')
  pil = pil.convert('L' if channels == 1 else 'RGB')
  if pil.size != (width, height):
    w, h = pil.size  # Centre square crop (no filter bleed from outside), then resize.
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    pil = pil.crop((left, top, left + side, top + side)).resize(
        (width, height), Image.Resampling.BICUBIC)
  out = np.asarray(pil, dtype=np.uint8)
  return out[..., None] if out.ndim == 2 else out


# ---------------------------------------------------------------------------
# Sources.
# ---------------------------------------------------------------------------


class ArraySource:
  """An in-memory source over uint8 images (N, H, W, C) and int32 labels (N,)."""

  def __init__(self, images, labels, spec: DatasetSpec | None = None):
    self.images = np.asarray(images)
    self.labels = np.asarray(labels, dtype=np.int32)
    self.spec = spec

  def __len__(self):
    return len(self.images)

  def read(self, indices):
    indices = np.asarray(indices)
    return self.images[indices], self.labels[indices]


class TfdsSource:
  """Examples of a TFDS data source (or any sequence of feature dicts),
  preprocessed to `spec.image_shape`."""

  def __init__(self, records, spec: DatasetSpec):
    self.records, self.spec = records, spec

  def __len__(self):
    return len(self.records)

  def read(self, indices):
    indices = [int(i) for i in np.asarray(indices).reshape(-1)]
    if hasattr(self.records, '__getitems__'):
      examples = self.records.__getitems__(indices)
    else:
      examples = [self.records[i] for i in indices]
    spec = self.spec
    images = np.empty((len(examples), *spec.image_shape), np.uint8)
    for k, e in enumerate(examples):
      if isinstance(e['image'], bytes):  # Encoded (`tfds_records` skips decoding).
        with open_image(e['image']) as im:
          im.load()
          if im.mode == PLAIN_MODES.get(spec.image_shape[2]):
            decode_into(images[k], im)  # = fit_image(np.asarray(im)) for L / RGB.
          else:  # As TFDS's own decoding (PIL), then `fit_image`.
            a = np.asarray(im, np.uint8)
            images[k] = fit_image(a[..., None] if a.ndim == 2 else a, spec.image_shape)
      else:
        images[k] = fit_image(np.asarray(e['image'], np.uint8), spec.image_shape)
    labels = np.asarray([int(e[spec.label_key]) if spec.num_classes else -1
                         for e in examples], np.int32)
    return images, labels


def _download_host_reachable(timeout_s: float = 3.0) -> bool:
  """Whether TFDS's download host answers within `timeout_s` (DNS included)."""
  result = []

  def probe():
    try:
      socket.create_connection(('storage.googleapis.com', 443), timeout=timeout_s).close()
      result.append(True)
    except OSError:
      pass

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout_s + 1)
  return bool(result)


def _prepare(name: str, data_dir: str | None):
  """Makes sure `name` is prepared as array_record in `data_dir`; fails fast
  (one line) when offline, when TensorFlow would be needed, or when only
  tfrecord files exist."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from vaegan_jax.datasets import mnist5k  # pylint: disable=g-import-not-at-top,unused-import  # Registers the builder.

  builder = tfds.builder(name, data_dir=data_dir)
  where = data_dir or '~/tensorflow_datasets (or $TFDS_DATA_DIR)'
  # TFDS warns "Variant folder ... has no dataset_info.json" when asked about
  # a folder it has not finished preparing: ask only once that file exists.
  if (builder.data_path / 'dataset_info.json').exists() and builder.is_prepared():
    file_format = str(getattr(builder.info.file_format, 'value', builder.info.file_format))
    if 'array_record' not in file_format:
      raise UserError(
          f'Dataset {name!r} in {where} is stored as {file_format}, but streaming '
          f'reads array_record: run `tfds build {name} --file_format=array_record '
          f'--data_dir=DIR` (needs TensorFlow: {TF_HINT}) and pass '
          f'--config.data.data_dir=DIR.')
    return
  if name == EMBEDDED:
    print(f'Building the embedded dataset {name} into {builder.data_dir} '
          '(offline, a few seconds).', flush=True)
    tfds.disable_progress_bar()  # The builder shows the project's own bar.
    try:
      builder.download_and_prepare(file_format='array_record')
    except FileExistsError:  # Each process of a multi-process run builds it; one
      if not tfds.builder(name, data_dir=data_dir).is_prepared():  # rename wins.
        raise
    return
  if not _download_host_reachable():
    raise UserError(
        f'Dataset {name!r} is not prepared in {where} and the download host is '
        f'unreachable. On a machine with network run `tfds build {name} '
        f'--file_format=array_record --data_dir=DIR`, copy DIR here and pass '
        f'--config.data.data_dir=DIR.')
  logging.info('Downloading and preparing %s into %s.', name, builder.data_dir)
  try:
    builder.download_and_prepare(file_format='array_record')
  except ImportError as e:
    if 'tensorflow' not in str(e):
      raise
    raise UserError(f'Preparing {name!r} needs TensorFlow: {TF_HINT} '
                    f'(or prepare it elsewhere with `tfds build {name} '
                    f'--file_format=array_record`).') from None


class EncodedRecords:
  """The records of a TFDS split whose features are an encoded `image` (a
  uint8 tfds.features.Image) and at most an int64 `label` (ClassLabel), as
  {'image': the encoded bytes, 'label': int}: the raw tf.train.Example bytes
  (`DeserializeMethod.RAW_BYTES`) parsed with TFDS's own proto, which is what
  `tfds.data_source` gives with the image left undecoded, in half the time.
  `TfdsSource` decodes the image (PIL, as TFDS does without OpenCV)."""

  def __init__(self, raw, label_key: str | None):
    self.raw, self.label_key = raw, label_key

  def __len__(self):
    return len(self.raw)

  def _parse(self, record) -> dict:
    from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
    feature = tf_example_pb2.Example.FromString(record).features.feature
    out = {'image': feature['image'].bytes_list.value[0]}
    if self.label_key:
      out[self.label_key] = int(feature[self.label_key].int64_list.value[0])
    return out

  def __getitem__(self, i):
    return self._parse(self.raw[i])

  def __getitems__(self, indices):
    return [self._parse(r) for r in self.raw.__getitems__(indices)]


def tfds_records(name: str, split: str, data_dir: str | None):
  """The random-access records of a prepared TFDS split (tests mock this):
  `EncodedRecords` where the features are an encoded image and a class
  label (cifar10, svhn_cropped: the image is decoded by `TfdsSource`), else
  `tfds.data_source`'s decoded dicts."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  _prepare(name, data_dir)
  features = tfds.builder(name, data_dir=data_dir).info.features
  image = features['image'] if 'image' in features else None
  others = set(features.keys()) - {'image'}
  if (isinstance(image, tfds.features.Image) and image.np_dtype == np.uint8
      and others <= {'label'} and all(isinstance(features[k], tfds.features.ClassLabel)
                                      for k in others)):
    return EncodedRecords(tfds.data_source(
        name, split=split, data_dir=data_dir, download=False,
        deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES),
                          'label' if others else None)
  return tfds.data_source(name, split=split, data_dir=data_dir, download=False)


def open_source(name: str, split: str, data_dir: str | None = None,
                image_size: int | None = None, channels: int = 0, sizes=None):
  """A random-access source of one split.

  Args:
    name: a dataset name from `DATASETS`, or 'folder:PATH'.
    split: 'train' or 'test' (mapped to the dataset's own split names), or
      any TFDS split string.
    data_dir: where TFDS keeps prepared data; see `resolve_data_dir`.
    image_size: folder datasets only, see `get_spec`.
    channels, sizes: folder datasets only, see `get_spec`.

  Returns:
    An object with `len()`, `.spec` and `.read(indices)`.
  """
  spec = get_spec(name, image_size, channels, sizes)
  if is_folder(name):
    return FolderSource(name[len(FOLDER_PREFIX):], split, spec)
  split = {'train': spec.train_split, 'test': spec.test_split}.get(split, split)
  return TfdsSource(tfds_records(name, split, resolve_data_dir(name, data_dir)), spec)


