"""Converts pytorch-fid's Inception weights to the project's plain ``.npz``.

  python -m vaegan_jax.metrics.convert_inception \\
      --pth=~/.cache/torch/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth \\
      --out=~/.cache/vaegan_jax/inception_fid.npz

then ``export VAEGAN_JAX_INCEPTION=~/.cache/vaegan_jax/inception_fid.npz`` (or
pass ``--inception_weights=`` to the evaluate CLI). torch is *not* needed.

This is the only place in the project that reads a pickle, and it never
executes one: a ``.pth`` (either torch's zip format, ``data.pkl`` plus one
file per tensor storage, or the legacy format of torch < 1.6: pickles
followed by raw storages) is read with a restricted ``pickle.Unpickler``
whose ``find_class`` allows only ``collections.OrderedDict``, torch's tensor
rebuild functions and the storage type names; any other global in the
file stops the conversion. The rebuild functions are re-implemented here
with numpy (strided views of the raw little-endian storages).

Checks, each failing with one line and exit status 1: the file exists; its
sha256 starts with the hex digits in its name (as torch.hub checks,
``-6726825d.pth``; a renamed file is checked against pytorch-fid's known
prefix, or against ``--sha256``); it is a torch state dict with exactly the
FID Inception's keys. Tensor shapes are checked when the ``.npz`` is loaded.
"""

import collections
import io
import os
import pickle
import re
import zipfile

import numpy as np

from vaegan_jax.errors import UserError

_DTYPES = {'FloatStorage': np.float32, 'DoubleStorage': np.float64,
           'HalfStorage': np.float16, 'LongStorage': np.int64,
           'IntStorage': np.int32, 'ShortStorage': np.int16,
           'CharStorage': np.int8, 'ByteStorage': np.uint8,
           'BoolStorage': np.bool_}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


class _Storage:
  """A tensor storage: dtype and, once read, its flat data."""

  def __init__(self, dtype, key, numel):
    self.dtype, self.key, self.numel = np.dtype(dtype), str(key), int(numel)
    self.data = None


class _Tensor:
  """A strided view of a storage, materialised once every storage is read."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset = storage, int(offset)
    self.size, self.stride = tuple(size), tuple(stride)

  def numpy(self) -> np.ndarray:
    data = self.storage.data
    if data is None:
      raise ValueError(f'storage {self.storage.key} has no data')
    if not self.size:
      return np.array(data[self.offset])
    last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
    if min(self.size) > 0 and last >= len(data):
      raise ValueError(f'tensor runs past the end of storage {self.storage.key}')
    item = data.itemsize
    view = np.lib.stride_tricks.as_strided(
        data[self.offset:], self.size, tuple(s * item for s in self.stride))
    return np.array(view)


def _rebuild_tensor(storage, offset, size, stride, *unused):
  return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, *unused):
  return data


_ALLOWED = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only the few names a state dict uses."""

  def __init__(self, f, storages: dict, read_storage=None):
    super().__init__(f)
    self._storages, self._read_storage = storages, read_storage

  def find_class(self, module, name):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module == 'torch' and name in _DTYPES:
      return ('dtype', _DTYPES[name])
    raise pickle.UnpicklingError(f'the file uses {module}.{name}, which a state dict '
                                 'of tensors does not need')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == 'storage'):
      raise pickle.UnpicklingError(f'unexpected persistent id {pid!r:.60}')
    storage_type, key, _, numel = pid[1:5]
    if not (isinstance(storage_type, tuple) and storage_type[0] == 'dtype'):
      raise pickle.UnpicklingError(f'unexpected storage type {storage_type!r:.60}')
    if len(pid) > 5 and pid[5] is not None:
      raise pickle.UnpicklingError('storage views are not supported')
    key = str(key)
    if key not in self._storages:
      self._storages[key] = _Storage(storage_type[1], key, numel)
      if self._read_storage is not None:
        self._read_storage(self._storages[key])
    return self._storages[key]


def _load_zip(path: str):
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith('/data.pkl') or n == 'data.pkl']
    if not pkl:
      raise ValueError('no data.pkl in the zip')
    prefix = pkl[0][:-len('data.pkl')]
    order = (zf.read(prefix + 'byteorder').decode().strip()
             if prefix + 'byteorder' in names else 'little')
    if order != 'little':
      raise ValueError(f'byte order {order!r} is not supported')

    def read(storage):
      raw = zf.read(f'{prefix}data/{storage.key}')
      storage.data = np.frombuffer(raw, storage.dtype, count=storage.numel)

    storages = {}
    return _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), storages, read).load()


def _load_legacy(path: str):
  with open(path, 'rb') as f:
    magic = _RestrictedUnpickler(f, {}).load()
    if magic != _LEGACY_MAGIC:
      raise ValueError('not a torch file (wrong magic number)')
    _RestrictedUnpickler(f, {}).load()  # protocol version
    _RestrictedUnpickler(f, {}).load()  # sys info
    storages = {}
    result = _RestrictedUnpickler(f, storages).load()
    keys = _RestrictedUnpickler(f, {}).load()
    for key in keys:
      storage = storages[str(key)]
      count = int(np.frombuffer(f.read(8), '<i8')[0])
      raw = f.read(count * storage.dtype.itemsize)
      if len(raw) != count * storage.dtype.itemsize:
        raise ValueError('the file is truncated')
      storage.data = np.frombuffer(raw, storage.dtype)
  return result


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a torch-saved state dict of tensors without torch or executing code.

  Args:
    path: a ``.pth`` written by ``torch.save(model.state_dict(), path)``
      (zip or legacy format).

  Returns:
    {key: numpy array} in the file's layout and dtype.

  Raises:
    ValueError: the file is not such a state dict (the message says why).
  """
  try:
    if zipfile.is_zipfile(path):
      obj = _load_zip(path)
    else:
      obj = _load_legacy(path)
  except (pickle.UnpicklingError, EOFError, KeyError, zipfile.BadZipFile,
          IndexError, TypeError, AttributeError) as e:
    raise ValueError(f'not a torch state dict ({type(e).__name__}: {e})') from None
  if isinstance(obj, dict) and 'state_dict' in obj and isinstance(obj['state_dict'], dict):
    obj = obj['state_dict']
  if not isinstance(obj, dict) or not all(isinstance(v, _Tensor) for v in obj.values()):
    raise ValueError('the file does not hold a state dict of tensors')
  return {str(k): v.numpy() for k, v in obj.items()}


def expected_sha256(path: str, sha256: str = '') -> str:
  """The hex prefix the file's sha256 must start with: ``sha256``, else the
  digits after the last '-' of its name (torch.hub's rule), else pytorch-fid's."""
  from vaegan_jax.metrics import inception  # pylint: disable=g-import-not-at-top
  if sha256:
    return sha256.lower()
  match = re.search(r'-([0-9a-f]{8,64})\.[a-z]+$', os.path.basename(path))
  return match.group(1) if match else inception.TORCH_SHA256_PREFIX


def convert(pth: str, out: str, sha256: str = '') -> dict:
  """Checks and converts ``pth`` to the ``.npz`` at ``out``.

  Args:
    pth: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (or a file
      with the same keys).
    out: the ``.npz`` to write.
    sha256: expected sha256 or prefix; default from the file name.

  Returns:
    {'out', 'sha256' (of out), 'source_sha256', 'num_tensors'}.

  Raises:
    UserError: missing file, wrong hash, not a torch state dict, or not the
      FID Inception's keys; one line.
  """
  from vaegan_jax.metrics import inception  # pylint: disable=g-import-not-at-top
  pth, out = os.path.expanduser(pth), os.path.expanduser(out)
  if not pth or not os.path.isfile(pth):
    raise UserError(f'--pth={pth!r} is not a file: give pytorch-fid\'s '
                    f'{inception.TORCH_FILE} (torch.hub puts it in '
                    '~/.cache/torch/hub/checkpoints/).')
  if not out:
    raise UserError('--out=PATH.npz is required.')
  return convert_state_dict(pth, out, expected_sha256(pth, sha256), 'FID Inception',
                            expected_keys=inception.torch_shapes())


def convert_state_dict(pth: str, out: str, sha256: str, title: str,
                       expected_keys=None, optional_keys=()) -> dict:
  """Checks ``pth`` against its full ``sha256`` and writes its tensors, in
  PyTorch layout and float32, as the project's plain ``.npz`` (the layout a
  backbone's loader converts; see ``weights.py``'s registry).

  Args:
    pth: a torch-saved state dict.
    out: the ``.npz`` to write (through a temporary file).
    sha256: the file's expected sha256 (or prefix).
    title: the network's name, for messages.
    expected_keys: the exact key set (without ``num_batches_tracked``), or
      None to take any state dict.
    optional_keys: keys that may also be there (dropped).

  Returns:
    {'out', 'sha256' (of out), 'source_sha256', 'num_tensors'}.

  Raises:
    UserError: wrong hash, not a torch state dict, other keys; one line.
  """
  from vaegan_jax.metrics import inception  # pylint: disable=g-import-not-at-top
  got = inception.file_sha256(pth)
  if not got.startswith(sha256.lower()):
    raise UserError(f'{pth} has sha256 {got[:16]}..., expected {sha256[:16]}...: the file '
                    f'is damaged or not the {title} weights; download it again.')
  try:
    state = read_state_dict(pth)
  except ValueError as e:
    raise UserError(f'{pth} cannot be converted: {e}.') from None
  state = {k: v for k, v in state.items()
           if not k.endswith('num_batches_tracked') and k not in optional_keys}
  if expected_keys is not None:
    keys = set(expected_keys)
    missing, extra = sorted(keys - set(state)), sorted(set(state) - keys)
    if missing or extra:
      what = (f'{len(missing)} keys missing (e.g. {missing[0]})' if missing
              else f'{len(extra)} unexpected keys (e.g. {extra[0]})')
      raise UserError(f'{pth} is not the {title} state dict: {what}.')
  digest = inception.save_npz(state, out, source_sha256=got)
  return {'out': out, 'sha256': digest, 'source_sha256': got, 'num_tensors': len(state)}


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise UserError(f'Unexpected arguments: {" ".join(argv[1:])}')
  info = convert(flags.FLAGS.pth, flags.FLAGS.out, flags.FLAGS.sha256)
  print(f'Wrote {info["out"]} ({info["num_tensors"]} tensors, sha256 {info["sha256"]}). '
        f'Use it with --inception_weights={info["out"]} or '
        f'VAEGAN_JAX_INCEPTION={info["out"]}.', flush=True)


if __name__ == '__main__':
  from absl import flags  # pylint: disable=g-import-not-at-top
  from vaegan_jax import cli  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('pth', '', "pytorch-fid's pt_inception-2015-12-05-6726825d.pth.")
  flags.DEFINE_string('out', '', 'The .npz to write.')
  flags.DEFINE_string('sha256', '', "Expected sha256 (or prefix) of --pth; default the hex "
                      "digits in its name, else pytorch-fid's 6726825d.")
  cli.run(main)
