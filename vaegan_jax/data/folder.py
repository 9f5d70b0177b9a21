"""`folder:PATH` datasets: indexing a folder of pictures and decoding its files.

Indexing (`scan_folder`) walks PATH once, reading file headers only:
  * real sub-folders first, then symlinked ones whose target was not read
    yet, so no folder (and no file) is indexed twice; a symlink loop such as
    `7/loop -> ..` is skipped with one warning line;
  * more than `PROGRESS_FILES` files print a line, and a progress bar on a
    terminal;
  * the result is cached in `$VAEGAN_JAX_CACHE/folder_index/` (default
    ~/.cache/vaegan_jax), keyed by the folder's listing (relative paths, sizes,
    modification times): a second run over an unchanged folder reads no header.
    Nothing is ever written inside PATH.
  * the channel count is the majority's (1 for grey-like modes, 3 for colour
    ones; see `file_channels`); one line says how many files disagree and
    that `config.data.channels` forces it.

Decoding (`decode`) is explicit per mode: 16-bit and 32-bit integer greys
are scaled to 8 bits (v / 257, rounded), never clipped; palette images go
through their palette (with its transparency); alpha (LA, RGBA, PA) is
premultiplied, so transparent pixels are black; CMYK and YCbCr convert to
RGB; colour to grey uses ITU-R 601 luma. Then the centre square is cropped and
resized (bicubic) to the requested size.

A file whose header reads but whose pixels do not (truncated) is named once,
the first time it fails, and counted after that (`FolderSource.num_failures`);
each read of it is replaced by the next image of the split.
"""

import dataclasses
import functools
import hashlib
import json
import os
import sys
import threading
import zlib

import numpy as np

from vaegan_jax.errors import UserError

FOLDER_PREFIX = 'folder:'
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp')
TEST_FRACTION_MOD = 10  # 1 file in 10 (by a hash of its path) goes to `test`.
PROGRESS_FILES = 2000   # Indexing more files than this says so.
_INDEX_VERSION = 2      # Bump when what the cache holds changes.
_GREY_MODES = ('1', 'L', 'LA', 'La', 'I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F')


def cache_dir() -> str:
  """$VAEGAN_JAX_CACHE, default ~/.cache/vaegan_jax."""
  return os.path.expanduser(os.environ.get('VAEGAN_JAX_CACHE')
                            or os.path.join('~', '.cache', 'vaegan_jax'))


@dataclasses.dataclass(frozen=True)
class FolderIndex:
  """The readable images of a folder, in sorted relative-path order."""
  root: str
  paths: tuple         # Relative paths.
  labels: np.ndarray   # int32 (N,), -1 when unlabelled.
  is_test: np.ndarray  # bool (N,).
  class_names: tuple   # Sorted top-level sub-folder names ('' when unlabelled).
  channels: int        # The majority's channel count (1 or 3).
  num_skipped: int     # Files with an image extension that PIL cannot open.
  sizes: np.ndarray = None          # int32 (N, 2): (width, height) of each file.
  file_channels: np.ndarray = None  # int8 (N,): 1 or 3, see `file_channels`.
  num_links_skipped: int = 0        # Symlinks not followed (target already indexed).

  @property
  def num_classes(self):
    return len(self.class_names)

  @property
  def native_size(self):
    """The side of the images when they all share one square size, else None."""
    if self.sizes is None or not len(self.sizes):
      return None
    w, h = self.sizes[0]
    return int(w) if w == h and (self.sizes == self.sizes[0]).all() else None

  @property
  def typical_size(self) -> int:
    """The median shorter side (the centre crop's side)."""
    return int(np.median(self.sizes.min(axis=1)))

  @property
  def num_disagreeing(self) -> int:
    """Files whose own channel count differs from `channels`."""
    return int((self.file_channels != self.channels).sum())


def file_channels(im) -> int:
  """1 for grey-like modes (L, LA, 1, I, I;16, F, grey palettes), else 3."""
  if im.mode in _GREY_MODES:
    return 1
  if im.mode in ('P', 'PA'):
    pal = np.asarray(im.getpalette() or [], np.uint8)
    pal = pal[:len(pal) // 3 * 3].reshape(-1, 3)
    return 1 if len(pal) and (pal == pal[:, :1]).all() else 3
  return 3


def _test_split(rel_paths) -> np.ndarray:
  """Deterministic, stable split: a file is in `test` when the CRC32 of its
  relative path is 0 mod 10, so adding files never moves the others. With
  fewer than 10 files that can leave `test` empty; then the last file is."""
  is_test = np.asarray([zlib.crc32(p.encode()) % TEST_FRACTION_MOD == 0
                        for p in rel_paths], bool)
  if len(rel_paths) > 1 and not is_test.any():
    is_test[-1] = True
  if len(rel_paths) > 1 and is_test.all():
    is_test[0] = False
  return is_test


def _walk(root: str):
  """Image files under `root`: (rel paths, stats, links skipped (rel, target)).

  Real folders are read first; a symlinked folder is followed only when its
  target is not a folder read already (so loops end), and a symlinked file
  only when its target is not indexed already.
  """
  seen_dirs = {os.path.realpath(root)}
  files, stats, skipped = [], [], []
  dir_links, file_links = [], []  # (abs, rel), followed after the real folders.
  stack = [(root, '')]
  while stack or dir_links:
    if not stack:
      path, rel = dir_links.pop(0)
      real = os.path.realpath(path)
      if real in seen_dirs:
        skipped.append((rel, os.readlink(path)))
        continue
      seen_dirs.add(real)
      stack.append((path, rel))
      continue
    path, rel = stack.pop()
    try:
      entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError:
      continue
    subdirs = []
    for e in entries:
      erel = os.path.join(rel, e.name) if rel else e.name
      try:
        is_dir = e.is_dir()
      except OSError:
        continue
      is_image = (not is_dir and e.name.lower().endswith(IMAGE_EXTENSIONS)
                  and not e.name.startswith('.'))
      if e.is_symlink():
        if is_dir:
          dir_links.append((e.path, erel))
        elif is_image and os.path.exists(e.path):
          file_links.append((e.path, erel))
      elif is_dir:
        real = os.path.realpath(e.path)
        if real not in seen_dirs:
          seen_dirs.add(real)
          subdirs.append((e.path, erel))
      elif is_image:
        files.append(erel)
        stats.append(e.stat())
    stack.extend(reversed(subdirs))
  if file_links:
    real_files = {os.path.realpath(os.path.join(root, p)) for p in files}
    for path, rel in file_links:
      real = os.path.realpath(path)
      if real in real_files:
        skipped.append((rel, os.readlink(path)))
        continue
      real_files.add(real)
      files.append(rel)
      stats.append(os.stat(path))
  return files, stats, skipped


def _listing_key(root, rel, stats) -> str:
  h = hashlib.sha256(f'{_INDEX_VERSION}\0{root}\0'.encode())
  for p, st in zip(rel, stats):
    h.update(f'{p}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
  return h.hexdigest()


def _cache_path(root: str) -> str:
  name = hashlib.sha256(root.encode()).hexdigest()[:20] + '.json'
  return os.path.join(cache_dir(), 'folder_index', name)


def _read_headers(spec_name, root, rel):
  """(modes' channel counts, sizes, unreadable rel paths) of `rel`."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from vaegan_jax import progress  # pylint: disable=g-import-not-at-top
  chans, sizes, bad = {}, {}, []
  if len(rel) > PROGRESS_FILES:
    print(f'{spec_name}: indexing {len(rel)} files (headers only; the index is cached '
          f'in {os.path.join(cache_dir(), "folder_index")}).', flush=True)
  with progress.bar(len(rel), f'indexing {spec_name}', 'file') as bar:
    for i, p in enumerate(rel):
      try:
        with Image.open(os.path.join(root, p)) as im:
          chans[p] = file_channels(im)
          sizes[p] = list(im.size)
      except Exception:  # pylint: disable=broad-except  # Any unreadable file.
        bad.append(p)
      if i % 256 == 255:
        bar.update(256)
  return chans, sizes, bad


def scan_folder(path: str, channels: int = 0) -> FolderIndex:
  """Indexes the images under `path` (recursively). Reads headers only, once
  per listing (cached; module doc).

  Labels: when every image sits inside a top-level sub-folder and there are at
  least two of them, the label is the index of that sub-folder's name in
  sorted order (deeper nesting is part of the class); otherwise -1.
  Unreadable files are skipped, and their count printed once.

  Args:
    path: the folder.
    channels: 1 or 3 to force the channel count; 0 = the majority's.

  Raises:
    UserError: PATH is missing, not a folder, or holds fewer than 2 images.
  """
  return _scan(str(path), int(channels or 0))


@functools.lru_cache(maxsize=16)
def _scan(path: str, channels: int) -> FolderIndex:
  spec_name = FOLDER_PREFIX + path
  root = os.path.abspath(os.path.expanduser(path))
  if not path:
    raise UserError('data.name=folder: needs a path, e.g. folder:~/my_pictures.')
  if not os.path.exists(root):
    raise UserError(f'{spec_name}: no such folder ({root}).')
  if not os.path.isdir(root):
    raise UserError(f'{spec_name}: {root} is a file, not a folder of images.')
  rel, stats, links = _walk(root)
  order = np.argsort(np.asarray(rel, dtype=object), kind='stable') if rel else []
  rel = [rel[i] for i in order]
  stats = [stats[i] for i in order]
  if links:
    first, target = links[0]
    print(f'warning: {spec_name}: did not follow {len(links)} symlink(s) to folders or '
          f'files already indexed (first: {first} -> {target}); each is read once.',
          flush=True)
  key = _listing_key(root, rel, stats)
  cache = _cache_path(root)
  entry = None
  try:
    with open(cache) as f:
      entry = json.load(f)
    if entry.get('key') != key:
      entry = None
  except (OSError, ValueError):
    entry = None
  if entry is None:
    chans, sizes, bad = _read_headers(spec_name, root, rel)
    entry = {'key': key, 'root': root, 'channels': chans, 'sizes': sizes, 'bad': bad}
    try:
      os.makedirs(os.path.dirname(cache), exist_ok=True)
      tmp = f'{cache}.{os.getpid()}.{threading.get_ident()}.tmp'
      with open(tmp, 'w') as f:
        json.dump(entry, f)
      os.replace(tmp, cache)
    except OSError as e:  # A read-only cache only costs the next run the headers.
      print(f'note: cannot cache the index of {spec_name} in {cache} ({e}).', flush=True)
  bad = entry['bad']
  good = [p for p in rel if p in entry['channels']]
  if bad:
    print(f'{spec_name}: skipped {len(bad)} unreadable image file(s) '
          f'(first: {bad[0]}).', flush=True)
  if len(good) < 2:
    raise UserError(f'{spec_name}: found {len(good)} readable PNG/JPEG/WebP '
                    f'image(s) under {root} (searched recursively); need at least 2.')
  tops = [p.split(os.sep)[0] if os.sep in p else None for p in good]
  class_names = sorted(set(tops)) if None not in tops else []
  if len(class_names) < 2:
    class_names = []
  lookup = {c: i for i, c in enumerate(class_names)}
  labels = np.asarray([lookup[t] if class_names else -1 for t in tops], np.int32)
  file_ch = np.asarray([entry['channels'][p] for p in good], np.int8)
  num_colour = int((file_ch == 3).sum())
  majority = 3 if num_colour * 2 > len(good) else 1
  chosen = int(channels) if channels else majority
  if chosen not in (1, 3):
    raise UserError(f'config.data.channels={channels} must be 0 (the majority), 1 or 3.')
  disagree = int((file_ch != chosen).sum())
  if disagree:
    kind = 'colour' if chosen == 1 else 'grey'
    how = ('forced by config.data.channels' if channels else
           'the majority; --config.data.channels=1 or 3 forces it')
    print(f'{spec_name}: {chosen} channel(s) ({how}); {disagree} of {len(good)} '
          f'files are {kind} and are converted.', flush=True)
  sizes = np.asarray([entry['sizes'][p] for p in good], np.int32).reshape(-1, 2)
  return FolderIndex(root, tuple(good), labels, _test_split(good), tuple(class_names),
                     chosen, len(bad), sizes, file_ch, len(links))


scan_folder.cache_clear = _scan.cache_clear


# ---------------------------------------------------------------------------
# Decoding.
# ---------------------------------------------------------------------------


def to_8bit(im) -> np.ndarray:
  """A PIL image in any mode -> uint8 (h, w, c) with c = 1, 3 (or 2, 4 with
  alpha as the last channel), no resizing. Integer greys wider than 8 bits
  are scaled by 255 / 65535 and rounded; float greys in [0, 1] by 255."""
  mode = im.mode
  if mode in ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N'):
    a = np.asarray(im).astype(np.float64)
    return np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)[..., None]
  if mode == 'F':
    a = np.asarray(im, np.float64)
    a = a * 255.0 if a.size and a.max() <= 1.0 else a
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)[..., None]
  if mode == '1':
    return (np.asarray(im, np.uint8) * 255).astype(np.uint8)[..., None]
  if mode in ('P', 'PA'):
    has_alpha = mode == 'PA' or 'transparency' in im.info
    im = im.convert('RGBA' if has_alpha else 'RGB')
    mode = im.mode
  if mode == 'La':
    im, mode = im.convert('LA'), 'LA'
  if mode == 'RGBa':
    im, mode = im.convert('RGBA'), 'RGBA'
  if mode not in ('L', 'LA', 'RGB', 'RGBA'):  # CMYK, YCbCr, LAB, HSV, RGBX, ...
    im, mode = im.convert('RGB'), 'RGB'
  a = np.asarray(im, np.uint8)
  return a[..., None] if a.ndim == 2 else a


def to_channels(im, channels: int) -> np.ndarray:
  """A PIL image -> uint8 (h, w, channels): `to_8bit`, alpha premultiplied
  (transparent = black), grey <-> RGB (ITU-R 601 luma for colour -> grey)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  a = to_8bit(im)
  if a.shape[-1] in (2, 4):  # Premultiply: colour * alpha / 255.
    colour, alpha = a[..., :-1].astype(np.uint16), a[..., -1:].astype(np.uint16)
    a = ((colour * alpha + 127) // 255).astype(np.uint8)
  if channels == 3 and a.shape[-1] == 1:
    a = np.repeat(a, 3, axis=-1)
  elif channels == 1 and a.shape[-1] == 3:
    a = np.asarray(Image.fromarray(a, 'RGB').convert('L'), np.uint8)[..., None]
  return a


def decode(im, size: int, channels: int) -> np.ndarray:
  """A PIL image -> uint8 (size, size, channels): `to_channels`, centre
  square crop, bicubic resize."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  a = to_channels(im, channels)
  h, w = a.shape[:2]
  if (h, w) == (size, size):
    return a
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  a = a[top:top + side, left:left + side]
  pil = Image.fromarray(a[..., 0] if channels == 1 else a)
  out = np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC), np.uint8)
  return out[..., None] if out.ndim == 2 else out


_FORMATS = {'.png': ('PNG',), '.jpg': ('JPEG',), '.jpeg': ('JPEG',), '.webp': ('WEBP',)}
PLAIN_MODES = {1: 'L', 3: 'RGB'}  # The modes `decode` takes as they are, per channel count.


_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_PNG_PLAIN = {0: 'L', 2: 'RGB'}  # Colour type -> mode, at 8 bits a sample.
_fast_decoders = [True]  # Cleared if this Pillow lacks the decoder API the fast paths use.


def _decode_png(data: bytes):
  """The most common PNGs (8-bit grey or RGB, not interlaced) decoded by
  Pillow's own zlib decoder (`Image._getdecoder`, as `PngImagePlugin` does),
  without its per-chunk Python: a loaded image with the same pixels as
  `Image.open`, in two thirds of the time on 32x32 files. None for any other
  PNG (and when this Pillow lacks the decoder API); OSError when the pixel
  data is truncated or corrupt, as `Image.open(...).load()` raises."""
  import struct  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if (not _fast_decoders[0] or len(data) < 33 or data[:8] != _PNG_SIGNATURE
      or data[12:16] != b'IHDR'):
    return None
  width, height, depth, colour, _, _, interlace = struct.unpack_from('>IIBBBBB', data, 16)
  mode = _PNG_PLAIN.get(colour)
  if depth != 8 or interlace or mode is None or not width or not height:
    return None
  idat, pos, end = [], 8, len(data)
  while pos + 8 <= end:
    length, kind = struct.unpack_from('>I4s', data, pos)
    if kind == b'IDAT':
      idat.append(data[pos + 8:pos + 8 + length])
    elif kind == b'IEND':
      break
    elif kind == b'acTL':  # Animated: its plugin picks the frame.
      return None
    pos += 12 + length
  im = Image.new(mode, (width, height))
  try:
    decoder = Image._getdecoder(mode, 'zip', mode)  # pylint: disable=protected-access
    decoder.setimage(im.im, (0, 0, width, height))
  except (AttributeError, TypeError):  # Another Pillow: its plugin decodes.
    _fast_decoders[0] = False
    return None
  try:
    consumed, error = decoder.decode(b''.join(idat))
  finally:
    decoder.cleanup()
  if error < 0 or consumed >= 0:  # A decoder error, or the image did not end.
    raise OSError('image file is truncated or corrupt')
  return im


_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD,
                       0xCE, 0xCF))  # Start-of-frame markers (not DHT, JPG, DAC).
_JPEG_PLAIN = {1: 'L', 3: 'RGB'}  # Components -> mode, at 8 bits.


def _decode_jpeg(data: bytes):
  """8-bit grey or colour JPEGs decoded by Pillow's libjpeg decoder with the
  arguments `JpegImagePlugin` gives it, without its per-marker Python: the
  same pixels as `Image.open(...).load()`, 10 % faster on 178x218 files.
  None for other JPEGs (CMYK, 12-bit, no frame header before the scan);
  OSError where the data are truncated or corrupt, as Pillow raises."""
  import struct  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if not _fast_decoders[0] or data[:2] != b'\xff\xd8':
    return None
  pos, end = 2, len(data)
  while True:
    if pos + 4 > end or data[pos] != 0xFF:
      return None
    marker = data[pos + 1]
    if marker == 0xFF:  # Fill byte.
      pos += 1
      continue
    if marker in _JPEG_SOF:
      if pos + 10 > end:
        return None
      bits, height, width, components = struct.unpack_from('>BHHB', data, pos + 4)
      break
    if marker in (0xDA, 0xD9):  # Scan or end before a frame header.
      return None
    pos += 2 + struct.unpack_from('>H', data, pos + 2)[0]
  mode = _JPEG_PLAIN.get(components)
  if bits != 8 or mode is None or not width or not height:
    return None
  im = Image.new(mode, (width, height))
  try:
    decoder = Image._getdecoder(mode, 'jpeg', (mode, ''))  # pylint: disable=protected-access
    decoder.setimage(im.im, (0, 0, width, height))
  except (AttributeError, TypeError):
    _fast_decoders[0] = False
    return None
  try:
    rest = data
    while True:  # As ImageFile.load feeds it, all the data at once.
      consumed, error = decoder.decode(rest)
      if consumed < 0:
        break
      if consumed == 0 or consumed >= len(rest):
        raise OSError('image file is truncated')
      rest = rest[consumed:]
  finally:
    decoder.cleanup()
  if error < 0:
    raise OSError('broken data stream when reading image file')
  return im


def open_image(data: bytes, name: str = ''):
  """A PIL image of the bytes of a file: plain PNGs and JPEGs by
  `_decode_png` / `_decode_jpeg`, others as the format the extension names
  (no probing of every format), then as any format PIL knows."""
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  im = _decode_png(data)
  if im is None:
    im = _decode_jpeg(data)
  if im is not None:
    return im
  formats = _FORMATS.get(os.path.splitext(name)[1].lower())
  if formats:
    try:
      return Image.open(io.BytesIO(data), formats=formats)
    except Exception:  # pylint: disable=broad-except  # Misnamed: probe them all.
      pass
  return Image.open(io.BytesIO(data))


def decode_into(out: np.ndarray, im) -> None:
  """`out[...] = decode(im, size, channels)` for `out` of shape (size, size,
  channels), the same bytes: plain L / RGB images (most files) are cropped
  and resized in PIL and copied once; every other mode goes through `decode`."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  size, channels = out.shape[0], out.shape[2]
  if im.mode != PLAIN_MODES.get(channels):
    out[...] = decode(im, size, channels)
    return
  w, h = im.size
  if (h, w) != (size, size):
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    im = im.crop((left, top, left + side, top + side)).resize(
        (size, size), Image.Resampling.BICUBIC)
  out.reshape(-1)[:] = np.frombuffer(im.tobytes(), np.uint8)


class _Failures:
  """Files that failed to decode, per folder, shared by every source of it.

  In an input worker process (`forward` set by `pipeline._WorkerStepBatch`)
  nothing is printed: each failed read is also kept as an event that goes
  back with the batch, and the training process `replay`s them, so a file is
  named once per run and counted once per read, as with reader threads."""

  def __init__(self):
    self.lock = threading.Lock()
    self.bad = {}  # (root, rel) -> failed reads.
    self.forward = False
    self.events = []  # (spec_name, root, rel) per failed read, when forwarding.

  def record(self, spec_name, root, rel) -> None:
    with self.lock:
      first = (root, rel) not in self.bad
      self.bad[(root, rel)] = self.bad.get((root, rel), 0) + 1
      if self.forward:
        self.events.append((spec_name, root, rel))
        return
    if first:
      print(f'{spec_name}: cannot decode {rel}; using the next image instead '
            '(said once per file; counted after that).', file=sys.stdout, flush=True)

  def take_events(self) -> list:
    """The failed reads recorded since the last call (forwarding only)."""
    with self.lock:
      events, self.events = self.events, []
    return events

  def replay(self, events) -> None:
    """Records failed reads a worker process forwarded."""
    for spec_name, root, rel in events:
      self.record(spec_name, root, rel)

  def is_bad(self, root, rel) -> bool:
    return (root, rel) in self.bad

  def count(self, root) -> int:
    return sum(n for (r, _), n in self.bad.items() if r == root)


FAILURES = _Failures()


class FolderSource:
  """One split of a folder dataset, decoded on demand.

  A file that opens at indexing time but fails to decode later (truncated) is
  replaced by the next readable image of the split, named once per process,
  so a run never crashes on it.
  """

  def __init__(self, path: str, split: str, spec):
    if split not in ('train', 'test'):
      raise UserError(f'{spec.name}: split must be train or test, not {split!r}.')
    self.index = scan_folder(path, getattr(spec, 'folder_channels', 0))
    self.spec = spec
    self.rows = np.flatnonzero(self.index.is_test == (split == 'test'))

  def __len__(self):
    return len(self.rows)

  @property
  def labels(self) -> np.ndarray:
    """int32 (len,) labels of the split's rows, without decoding."""
    return self.index.labels[self.rows]

  @property
  def num_failures(self) -> int:
    """Reads of this folder replaced because a file did not decode."""
    return FAILURES.count(self.index.root)

  def _decode_into(self, out: np.ndarray, row: int) -> None:
    rel = self.index.paths[row]
    with open(os.path.join(self.index.root, rel), 'rb') as f:
      data = f.read()
    with open_image(data, rel) as im:
      im.load()
      decode_into(out, im)

  def read(self, indices):
    indices = np.asarray(indices).reshape(-1)
    images = np.empty((len(indices), *self.spec.image_shape), np.uint8)
    labels = np.empty(len(indices), np.int32)
    root = self.index.root
    for k, i in enumerate(indices):
      for attempt in range(len(self.rows)):
        row = int(self.rows[(int(i) + attempt) % len(self.rows)])
        rel = self.index.paths[row]
        if FAILURES.is_bad(root, rel):
          FAILURES.record(self.spec.name, root, rel)
          continue
        try:
          self._decode_into(images[k], row)
          labels[k] = self.index.labels[row]
          break
        except Exception:  # pylint: disable=broad-except  # Truncated or corrupt.
          FAILURES.record(self.spec.name, root, rel)
      else:
        raise UserError(f'{self.spec.name}: no image of the split can be decoded.')
    return images, labels

