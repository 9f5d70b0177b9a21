"""Progress bars: one line on stderr, only on a terminal and outside CI."""

import contextlib
import io
import os
import pty
import sys


from vaegan_jax import progress


@contextlib.contextmanager
def terminal():
  """sys.stderr on a pseudo-terminal, CI unset; yields a function that reads
  what the terminal got. Entered in the test body: pytest's output capture
  sets sys.stderr again after fixtures have run."""
  master, slave = pty.openpty()
  stream = os.fdopen(slave, 'w')
  saved, ci = sys.stderr, os.environ.pop('CI', None)
  sys.stderr = stream

  def read():
    stream.flush()
    os.set_blocking(master, False)
    chunks = []
    while True:
      try:
        chunk = os.read(master, 65536)
      except (BlockingIOError, OSError):
        break
      if not chunk:
        break
      chunks.append(chunk)
    return b''.join(chunks).decode()

  try:
    yield read
  finally:
    sys.stderr = saved
    if ci is not None:
      os.environ['CI'] = ci
    stream.close()
    os.close(master)


def test_bar_draws_one_line_on_a_terminal(capsys):
  with terminal() as read:
    assert progress.enabled()
    items = list(progress.iterate(range(5), 'IWAE k=10', unit='batch', delay=0))
    text = read()
  assert items == [0, 1, 2, 3, 4]
  assert 'IWAE k=10: 100% [########################] 5/5 batch' in text
  assert '\n' not in text  # One line, redrawn with \r and erased at the end.
  assert text.endswith('\r\x1b[K')
  assert capsys.readouterr().out == ''  # Nothing on stdout.


def test_nested_bars_share_the_line_and_prints_clear_it(capsys):
  with terminal() as read:
    with progress.bar(2, 'study', unit='run', delay=0) as outer:
      outer.update(1)
      with progress.bar(4, 'samples', unit='img', delay=0) as inner:
        inner.update(2)
        print('a line of the command')
      outer.update(1)
    text = read()
  assert 'study 1/2 > samples:  50%' in text
  assert '\n' not in text
  # The printed line went to stdout whole, after the bar was erased.
  assert capsys.readouterr().out == 'a line of the command\n'
  assert sys.stdout is not None and not isinstance(sys.stdout, progress._ClearingStdout)  # pylint: disable=protected-access


def test_no_bar_off_a_terminal_in_ci_or_before_the_delay(monkeypatch):
  with terminal() as read:
    os.environ['CI'] = 'true'
    assert not progress.enabled()
    list(progress.iterate(range(3), 'quiet', delay=0))
    del os.environ['CI']
    list(progress.iterate(range(3), 'too short to show'))  # Default delay: 2 s.
    list(progress.iterate(range(3), '', delay=0))  # No description, no bar.
    assert read() == ''
  pipe = io.StringIO()
  monkeypatch.setattr(sys, 'stderr', pipe)
  assert not progress.enabled()
  list(progress.iterate(range(3), 'piped', delay=0))
  assert pipe.getvalue() == ''
