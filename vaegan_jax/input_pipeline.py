"""The input pipeline's stable names; the code lives in `vaegan_jax/data/`.

  sources.py   random-access sources: embedded mnist5k, `tfds.data_source`,
               `folder:PATH` (DatasetSpec, DATASETS, get_spec, resolve_data_dir)
  folder.py    `folder:PATH`: indexing (cached, symlink-safe), faithful decoding
  pipeline.py  grain: (seed, step)-keyed batches, per-process slices, global
               arrays, worker processes (TrainIterator, train_iterator,
               eval_batches, load_split, Data)

See `vaegan_jax.data.pipeline` for the determinism and resume contract.
"""

# pylint: disable=unused-import
from vaegan_jax.data.sources import DATASETS
from vaegan_jax.data.sources import DEFAULT_EMBEDDED_DATA_DIR
from vaegan_jax.data.sources import DatasetSpec
from vaegan_jax.data.sources import EMBEDDED
from vaegan_jax.data.sources import get_spec
from vaegan_jax.data.sources import is_folder
from vaegan_jax.data.sources import open_source
from vaegan_jax.data.sources import resolve_data_dir
from vaegan_jax.data.pipeline import Data
from vaegan_jax.data.pipeline import TrainIterator
from vaegan_jax.data.pipeline import balanced_sample
from vaegan_jax.data.pipeline import config_channels
from vaegan_jax.data.pipeline import config_image_size
from vaegan_jax.data.pipeline import create
from vaegan_jax.data.pipeline import eval_batches
from vaegan_jax.data.pipeline import global_batch_indices
from vaegan_jax.data.pipeline import image_shape
from vaegan_jax.data.pipeline import load_split
from vaegan_jax.data.pipeline import make_global_batch
from vaegan_jax.data.pipeline import open_train_source
from vaegan_jax.data.pipeline import process_slice
from vaegan_jax.data.pipeline import read_batch
from vaegan_jax.data.pipeline import resolve_image_size
from vaegan_jax.data.pipeline import to_float
from vaegan_jax.data.pipeline import train_iterator

# pylint: enable=unused-import
import dataclasses  # pylint: disable=g-import-not-at-top,g-bad-import-order

from vaegan_jax import rules  # pylint: disable=g-import-not-at-top,g-bad-import-order
from vaegan_jax.errors import UserError  # pylint: disable=g-import-not-at-top,g-bad-import-order


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A name `get_spec` accepts (it owns the dataset registry)."""

  def _error(self, v):
    try:
      get_spec(v)
    except UserError as e:
      return str(e)
    return None

  def allowed(self):
    return 'a dataset input_pipeline.get_spec knows' + (
        f' ({", ".join(sorted(DATASETS))})' if DATASETS else '')

  def check(self, v):
    if not isinstance(v, str):
      return f'has the wrong type ({type(v).__name__})'
    error = self._error(v)
    if error is None:
      return None
    # get_spec's own reason where it is more than "unknown" (e.g. a folder: dataset).
    return 'is not allowed' + ('' if error.startswith('Unknown dataset') else f' ({error})')

  def refused(self):
    return [('type', 3), ('unknown', 'no_such_dataset')]


RULES = {
    'data.name': Dataset(),
    'data.image_size': rules.COUNT,       # folder:PATH only; 0 = native; data/sources.get_spec's minimum is 8.
    'data.channels': rules.Int(min=0, max=3),  # folder:PATH only: 0 (the majority's), 1 or 3 (2 is refused when indexing).
}
