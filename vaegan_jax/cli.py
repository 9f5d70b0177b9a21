"""What every command-line entry point shares: flag parsing and error exits
that print one line instead of a traceback."""

import sys

from absl import app
from absl import flags
from absl import logging

from vaegan_jax.errors import UserError


def _fail(message: str):
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(1)


def _one_line(text: str, limit: int = 400) -> str:
  text = ' '.join(str(text).replace('\\n', ' ').split())
  return text if len(text) <= limit else text[:limit] + ' ...'


def parse_flags(argv):
  """absl flag parsing where a bad flag or config override is one line."""
  try:
    argv = flags.FLAGS(argv)
  except flags.Error as e:
    lines = [l for l in str(e).splitlines() if l.strip()]
    if any('Traceback' in l for l in lines):  # An exception inside a config file.
      lines = [lines[0], lines[-1]]
    _fail(_one_line(' '.join(lines)))
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections reports a misspelt --config.key as a KeyError/AttributeError
    # whose text already holds "Did you mean ...".
    text = str(e).replace('\\n', ' ').replace('\\', '').replace("'", '')
    _fail(f'bad flag or config override: unknown key {_one_line(text)}')
  if 'config' in flags.FLAGS and flags.FLAGS['config'].value is not None:
    try:  # config_flags defers a missing config file's error to first use.
      flags.FLAGS.config.to_dict()
    except OSError as e:
      _fail(f'cannot load the config file: {_one_line(str(e).splitlines()[-1])}')
  return argv


def run(main):
  """app.run(main) with one-line errors for flags and `UserError`s."""

  def wrapped(argv):
    if not flags.FLAGS['verbosity'].present:  # Keep library INFO chatter quiet.
      logging.set_verbosity(logging.WARNING)
    try:
      main(argv)
    except UserError as e:
      _fail(str(e))

  app.run(wrapped, flags_parser=parse_flags)
