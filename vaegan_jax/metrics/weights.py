"""The pretrained feature extractors' weights: a registry and a checked download.

    path = weights.ensure('inception')          # the converted .npz, fetched once

Each entry names one file: where it comes from (the official URL), its full
sha256 and size, how it becomes the project's plain ``.npz`` (a converter
that reads the ``.pth`` with the restricted, never-unpickling reader of
``convert_inception``), and the flag and environment variable for a copy the
user already has.

First use downloads the file into the cache directory (``$VAEGAN_JAX_CACHE``,
default ``~/.cache/vaegan_jax``) with a progress bar: into a temporary file
in that directory, hashed while it streams, renamed to its name only when
the size and the sha256 match; then it is converted once, again through a
temporary file. Later runs find the ``.npz`` and never touch the network.
Anything that goes wrong (offline, refused, truncated, a wrong file, a cache
that cannot be written) is one ``UserError`` naming the URL, the expected
sha256 and the flag for a file at hand, and leaves no partial file behind.

``$VAEGAN_JAX_WEIGHTS_MIRROR=URL`` fetches every file from ``URL/<file name>``
instead (a local mirror; the sha256 is checked all the same).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
import tempfile
import urllib.error
import urllib.request
from typing import Callable

from vaegan_jax import progress
from vaegan_jax.errors import UserError

CACHE_ENV = 'VAEGAN_JAX_CACHE'
MIRROR_ENV = 'VAEGAN_JAX_WEIGHTS_MIRROR'
DEFAULT_CACHE = os.path.join('~', '.cache', 'vaegan_jax')
TIMEOUT_S = 30.0
_BLOCK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Entry:
  """One downloadable weights file.

  Attributes:
    name: registry key, e.g. 'inception'.
    title: for messages, e.g. 'FID Inception-v3'.
    file: the downloaded file's name (as the source publishes it).
    url: the official URL.
    sha256: the file's full sha256 (hex).
    size: its size in bytes (0 = not checked before the hash).
    npz: the converted file's name in the cache.
    converter: ``function(pth, out_npz, sha256)`` or its 'module:function'
      (imported when first needed).
    flag: the command-line flag for a file the user has (.pth or .npz).
    env: the environment variable for the same.
  """
  name: str
  title: str
  file: str
  url: str
  sha256: str
  size: int
  npz: str
  converter: str | Callable
  flag: str
  env: str

  def convert(self, pth: str, out: str):
    fn = self.converter
    if isinstance(fn, str):
      module, function = fn.split(':')
      fn = getattr(importlib.import_module(module), function)
    fn(pth, out, self.sha256)


# The FID Inception-v3: TTUR's 2015-12-05 TensorFlow graph (Heusel et al. 2017)
# as pytorch-fid ports it. Source: github.com/mseitzer/pytorch-fid (release
# fid_weights, Apache-2.0; the TensorFlow weights it comes from are Apache-2.0).
# The same sha256 is pinned by torch-fidelity's re-hosted copy
# (weights-inception-2015-12-05-6726825d.pth); 95,628,359 bytes.
INCEPTION = Entry(
    name='inception', title='FID Inception-v3',
    file='pt_inception-2015-12-05-6726825d.pth',
    url='https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
        'pt_inception-2015-12-05-6726825d.pth',
    sha256='6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2',
    size=95_628_359, npz='inception_fid-6726825d.npz',
    converter='vaegan_jax.metrics.convert_inception:convert',
    flag='--inception_weights', env='VAEGAN_JAX_INCEPTION')

# DINOv2 ViT-L/14 (Oquab et al. 2023), the backbone of FD-DINOv2 (Stein et al.
# 2023, layer6ai-labs/dgm-eval). Source: github.com/facebookresearch/dinov2
# (backbone-only pretrained weights; code and weights Apache-2.0);
# 1,217,586,395 bytes.
DINOV2 = Entry(
    name='dinov2', title='DINOv2 ViT-L/14',
    file='dinov2_vitl14_pretrain.pth',
    url='https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth',
    sha256='d5383ea8f4877b2472eb973e0fd72d557c7da5d3611bd527ceeb1d7162cbf428',
    size=1_217_586_395, npz='dinov2_vitl14-d5383ea8.npz',
    converter='vaegan_jax.metrics.convert_inception:convert_dinov2',
    flag='--dinov2_weights', env='VAEGAN_JAX_DINOV2')

REGISTRY = {e.name: e for e in (INCEPTION, DINOV2)}


def get(name: str) -> Entry:
  if name not in REGISTRY:
    raise UserError(f'Unknown weights {name!r}; known: {", ".join(sorted(REGISTRY))}.')
  return REGISTRY[name]


def cache_dir() -> str:
  """``$VAEGAN_JAX_CACHE``, default ``~/.cache/vaegan_jax`` (expanded)."""
  return os.path.abspath(os.path.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE))


def source_url(entry: Entry) -> str:
  """The entry's URL, or ``$VAEGAN_JAX_WEIGHTS_MIRROR/<file>``."""
  mirror = os.environ.get(MIRROR_ENV, '').strip()
  return f'{mirror.rstrip("/")}/{entry.file}' if mirror else entry.url


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(_BLOCK), b''):
      h.update(block)
  return h.hexdigest()


def _what_to_do(entry: Entry, url: str, cache: str) -> str:
  return (f'download {url} yourself (sha256 {entry.sha256}) and pass {entry.flag}=PATH '
          f'or set ${entry.env}=PATH, or put it at {os.path.join(cache, entry.file)}')


def _remove(path: str):
  try:
    os.remove(path)
  except OSError:
    pass


def download(entry: Entry, dest: str, url: str | None = None, timeout: float = TIMEOUT_S,
             echo: Callable = print) -> str:
  """Downloads ``entry``'s file to ``dest``, checked, or raises and leaves nothing.

  The bytes go to a temporary file beside ``dest`` and are hashed as they
  arrive; the file is renamed to ``dest`` only when its size and sha256 are
  those of the entry.

  Args:
    entry: the registry entry.
    dest: the final path.
    url: default ``source_url(entry)``.
    timeout: seconds a connection or read may stall.
    echo: where to say what happens.

  Returns:
    ``dest``.

  Raises:
    UserError: one line (URL, expected sha256, the flag for a file at hand).
  """
  url = url or source_url(entry)
  folder = os.path.dirname(os.path.abspath(dest))
  todo = _what_to_do(entry, url, folder)
  try:
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{entry.file}.', suffix='.part', dir=folder)
  except OSError as e:
    raise UserError(f'Cannot write the {entry.title} weights into {folder} '
                    f'({e.strerror or e}): set ${CACHE_ENV} to a writable folder, or '
                    f'{todo}.') from None
  h, got = hashlib.sha256(), 0
  try:
    with os.fdopen(fd, 'wb') as out:
      try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
          echo(f'Downloading the {entry.title} weights ({entry.size / 1e6:.0f} MB) from '
               f'{url} into {folder} (once).')
          length = int(response.headers.get('Content-Length') or 0) or entry.size or None
          with progress.bar(length, f'download {entry.file}', 'B') as bar:
            while True:
              block = response.read(_BLOCK)
              if not block:
                break
              out.write(block)
              h.update(block)
              got += len(block)
              bar.update(len(block))
      except (urllib.error.URLError, OSError, ValueError) as e:
        if isinstance(e, OSError) and e.filename == tmp or getattr(e, 'errno', 0) == 28:
          raise UserError(f'Cannot write the {entry.title} weights into {folder} '
                          f'({e.strerror or e}): free space or set ${CACHE_ENV}, or '
                          f'{todo}.') from None
        reason = getattr(e, 'reason', None) or e
        raise UserError(f'Cannot download the {entry.title} weights from {url} ({reason}; '
                        f'offline?): {todo}.') from None
    if entry.size and got != entry.size:
      raise UserError(f'The download of the {entry.title} weights from {url} is incomplete '
                      f'({got} of {entry.size} bytes): run again, or {todo}.')
    digest = h.hexdigest()
    if digest != entry.sha256:
      raise UserError(f'The file downloaded from {url} has sha256 {digest}, not the '
                      f'{entry.title} weights\' {entry.sha256}: run again, or {todo}.')
    os.replace(tmp, dest)
  except BaseException:
    _remove(tmp)
    raise
  return dest


def _convert(entry: Entry, pth: str, out: str, echo: Callable):
  echo(f'Converting {pth} to {out} (once).')
  try:
    os.makedirs(os.path.dirname(out), exist_ok=True)
    entry.convert(pth, out)
  except OSError as e:
    raise UserError(f'Cannot write {out} ({e.strerror or e}): set ${CACHE_ENV} to a '
                    'writable folder.') from None
  finally:
    for leftover in (out + '.tmp.npz', out + '.tmp'):
      _remove(leftover)


def ensure(name: str | Entry, path: str = '', url: str | None = None,
           cache: str | None = None, echo: Callable = print) -> str:
  """The converted ``.npz`` of a registry entry, fetched and converted if needed.

  Order: ``path`` (a flag), else ``$<entry.env>``; each may be the ``.npz`` or
  the downloaded ``.pth`` (converted once into the cache); else the cache's
  ``.npz``; else the cache's ``.pth``; else a download (:func:`download`).

  Args:
    name: registry key ('inception', 'dinov2') or an Entry.
    path: a file the user gives (the entry's flag).
    url: download URL; default :func:`source_url`.
    cache: cache folder; default :func:`cache_dir`.
    echo: where to say what happens.

  Returns:
    the ``.npz`` path.

  Raises:
    UserError: one line saying what to do.
  """
  entry = name if isinstance(name, Entry) else get(name)
  cache = os.path.abspath(os.path.expanduser(cache or cache_dir()))
  path = os.path.expanduser(path or os.environ.get(entry.env, ''))
  if path:
    if not os.path.isfile(path):
      raise UserError(f'{entry.title} weights file {path} does not exist (from '
                      f'{entry.flag} or ${entry.env}): give the .npz or the .pth '
                      f'({entry.file}), or leave both unset to download it.')
    if not path.endswith('.pth'):
      return path
    out = os.path.join(cache, entry.npz)
    if not os.path.isfile(out):
      _convert(entry, path, out, echo)
    return out
  out = os.path.join(cache, entry.npz)
  if os.path.isfile(out):
    return out
  pth = os.path.join(cache, entry.file)
  if not (os.path.isfile(pth) and file_sha256(pth) == entry.sha256):
    download(entry, pth, url, echo=echo)
  _convert(entry, pth, out, echo)
  return out


def main(argv):
  """`python -m vaegan_jax.metrics.weights NAME...`: fetch, check and convert."""
  names = argv[1:]
  if not names:
    from vaegan_jax.errors import UsageError  # pylint: disable=g-import-not-at-top
    raise UsageError('usage: python -m vaegan_jax.metrics.weights NAME... (names: '
                     f'{", ".join(sorted(REGISTRY))}).')
  for name in names:
    path = ensure(name)
    print(f'{get(name).title}: {path}', flush=True)


if __name__ == '__main__':
  from vaegan_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run(main)
