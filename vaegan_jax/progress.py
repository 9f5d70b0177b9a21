"""Progress bars for long waits: one self-overwriting line on stderr.

    for batch in progress.iterate(batches, 'IWAE k=100', total=n, unit='img'):
      ...
    with progress.bar(num_samples, 'samples -> features', unit='img') as bar:
      ...
      bar.update(len(images))

A bar is drawn only when stderr is a terminal and the environment variable CI
is not 'true' (`enabled`); in logs, pipes, notebooks without a terminal and CI
nothing is written. It appears only once a wait has lasted `DELAY_S` seconds,
so short waits stay silent, and it erases itself when done (the command's own
lines say what happened). While a bar is shown, lines printed to stdout and
absl log records first clear it, so they never share its line. Nested bars
show as one line, the outer bar's position in front of the inner bar
(`study: train, evaluate 2/3 > IWAE bound, k=100:  40% ...`).
"""

import contextlib
import logging
import os
import shutil
import sys
import time

DELAY_S = 2.0       # A wait shorter than this shows no bar.
REDRAW_S = 0.25     # At most one redraw per this many seconds.
WIDTH = 24          # Characters of the bar itself.

_active = []        # Open bars, outermost first.
_saved_stdout = None


def enabled() -> bool:
  """Whether bars are drawn: stderr is a terminal and CI is not 'true'."""
  if os.environ.get('CI', '').strip().lower() == 'true':
    return False
  try:
    return sys.stderr.isatty()
  except (AttributeError, ValueError):  # Replaced or closed stream.
    return False


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 60}:{seconds % 60:02d}'


class Bar:
  """One progress line; `update(n)` after each piece of work, `close()` at the end.

  Args:
    total: units of work (e.g. images), or None when unknown.
    desc: what is being waited for, e.g. 'samples -> features'; '' draws
      nothing (for callers whose progress display is optional).
    unit: the unit's name shown with the rate ('img', 'step'), or ''.
    delay: seconds before the bar first appears.
  """

  def __init__(self, total, desc: str, unit: str = '', delay: float = DELAY_S):
    self.total = None if total is None else int(total)
    self.desc, self.unit, self.delay = desc, unit, delay
    self.n = 0
    self.start = time.monotonic()
    self._drawn = 0.0       # monotonic time of the last draw; 0 = never drawn.
    self._stream = sys.stderr
    self._on = bool(desc) and enabled()

  @property
  def on(self) -> bool:
    """Whether this bar draws at all (`enabled` and a non-empty desc)."""
    return self._on

  # -- text ---------------------------------------------------------------
  def position(self) -> str:
    """'desc n/total' (the prefix a nested bar shows)."""
    count = f'{self.n}/{self.total}' if self.total else f'{self.n}'
    return f'{self.desc} {count}'

  def text(self) -> str:
    elapsed = time.monotonic() - self.start
    rate = self.n / elapsed if elapsed > 0 else 0.0
    unit = f' {self.unit}' if self.unit else ''
    if self.total:
      frac = min(1.0, self.n / self.total)
      filled = int(round(frac * WIDTH))
      eta = (self.total - self.n) / rate if rate > 0 else 0.0
      core = (f'{frac:4.0%} [{"#" * filled}{"." * (WIDTH - filled)}] {self.n}/{self.total}'
              f'{unit} [{_duration(elapsed)}<{_duration(eta)}, {rate:.1f}{unit}/s]')
    else:
      core = f'{self.n}{unit} [{_duration(elapsed)}, {rate:.1f}{unit}/s]'
    outer = ' > '.join(b.position() for b in _active[:_active.index(self)]
                       ) if self in _active else ''
    return f'{outer} > {self.desc}: {core}' if outer else f'{self.desc}: {core}'

  # -- drawing ------------------------------------------------------------
  def _visible(self) -> bool:
    return self._on and bool(_active) and _active[-1] is self

  def draw(self, force: bool = False):
    """Redraws the line (at most every REDRAW_S seconds unless `force`)."""
    now = time.monotonic()
    if not self._visible() or now - self.start < self.delay:
      return
    if not force and self._drawn and now - self._drawn < REDRAW_S:
      return
    width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
    self._stream.write('\r' + self.text()[:width] + '\x1b[K')
    self._stream.flush()
    self._drawn = now

  def clear(self):
    """Erases the line if it is shown."""
    if self._on and self._drawn:
      self._stream.write('\r\x1b[K')
      self._stream.flush()
      self._drawn = 0.0

  def update(self, n: int = 1):
    self.n += int(n)
    self.draw(force=self.total is not None and self.n >= self.total)

  def close(self):
    self.clear()
    if self in _active:
      _active.remove(self)
      _leave()
    if _active:
      _active[-1].draw(force=True)


class _ClearingStdout:
  """sys.stdout while a bar is shown: a line printed clears the bar first."""

  def __init__(self, wrapped):
    self._wrapped = wrapped

  def write(self, text):
    if _active:
      _active[-1].clear()
    n = self._wrapped.write(text)
    if _active and text.endswith('\n'):
      self._wrapped.flush()
      _active[-1].draw(force=True)
    return n

  def __getattr__(self, name):
    return getattr(self._wrapped, name)


class _ClearForLogRecords(logging.Filter):
  """On the absl handler: a log record clears the bar before it is written."""

  def filter(self, record):
    if _active:
      _active[-1].clear()
    return True


_LOG_FILTER = _ClearForLogRecords()


def _absl_handler():
  try:
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    return absl_logging.get_absl_handler()
  except ImportError:
    return None


def _enter(bar: Bar):
  global _saved_stdout
  if _active and _active[-1]._on:  # pylint: disable=protected-access
    _active[-1].clear()
  _active.append(bar)
  if bar._on and _saved_stdout is None:  # pylint: disable=protected-access
    _saved_stdout = sys.stdout
    sys.stdout = _ClearingStdout(sys.stdout)
    handler = _absl_handler()
    if handler is not None:
      handler.addFilter(_LOG_FILTER)


def _leave():
  global _saved_stdout
  if not _active and _saved_stdout is not None:
    if isinstance(sys.stdout, _ClearingStdout):
      sys.stdout = _saved_stdout
    _saved_stdout = None
    handler = _absl_handler()
    if handler is not None:
      handler.removeFilter(_LOG_FILTER)


@contextlib.contextmanager
def bar(total, desc: str, unit: str = '', delay: float = DELAY_S):
  """A `Bar` for the duration of the block; see the module doc."""
  b = Bar(total, desc, unit, delay)
  _enter(b)
  try:
    yield b
  finally:
    b.close()


def iterate(iterable, desc: str, total=None, unit: str = '', delay: float = DELAY_S):
  """Yields the items of `iterable`, one `update()` per item, under a bar.

  Args:
    total: the number of items; default `len(iterable)` where it has one.
  """
  if total is None and hasattr(iterable, '__len__'):
    total = len(iterable)
  with bar(total, desc, unit, delay) as b:
    for item in iterable:
      yield item
      b.update(1)
