"""What every command-line entry point shares: flag parsing and one-line errors.

Every failure ends with one line on stderr, `error: <what is wrong and what
to do>`, and an exit status:
  2  bad usage: an unknown or unparsable flag, config key or config value
     (`errors.UsageError`, `validation.ConfigError`); nothing was started;
  1  the run failed: missing data or checkpoint, a NaN, a full disk, a
     crashed worker thread, or an unexpected exception (a bug: its type and
     message are on the line);
  130  interrupted with Ctrl-C, 143 terminated with SIGTERM (the trainer saves
       the step reached and says which checkpoint it kept; docs/reliability.md).
The traceback is printed above the line with `--verbosity=1` (or higher) or
when the environment variable VAEGAN_JAX_TRACEBACK=1 is set, for bug reports.

Without `--verbosity` the libraries' start-up chatter and notices are
silenced (vaegan_jax/console.py); with `--verbosity=N` (any N) all of it is
printed again, absl logging at level N (0 INFO, 1 DEBUG).
"""

import logging as py_logging
import os
import sys
import traceback

from absl import app
from absl import flags
from absl import logging

from vaegan_jax import console
from vaegan_jax.errors import SigTerm
from vaegan_jax.errors import UsageError
from vaegan_jax.errors import UserError
from vaegan_jax.errors import WorkerError

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM.
TRACEBACK_ENV = 'VAEGAN_JAX_TRACEBACK'
HELP_FLAGS = ('help', 'h', '?', 'helpshort', 'helpfull', 'helpxml')


def one_line(text, limit: int = 600) -> str:
  text = ' '.join(str(text).replace('\\n', ' ').split())
  return text if len(text) <= limit else text[:limit] + ' ...'


def _fail(message: str, code: int = EXIT_USAGE):
  print(f'error: {one_line(message)}', file=sys.stderr, flush=True)
  sys.exit(code)


def want_traceback() -> bool:
  """Whether to print tracebacks: --verbosity>=1 or VAEGAN_JAX_TRACEBACK=1."""
  if os.environ.get(TRACEBACK_ENV, '') not in ('', '0'):
    return True
  try:
    return flags.FLAGS['verbosity'].present and flags.FLAGS.verbosity >= 1
  except (KeyError, flags.UnparsedFlagAccessError):
    return False


def config_source() -> str:
  """The --config flag's value (file[:variant]) where this CLI has one."""
  if 'config' not in flags.FLAGS:
    return ''
  try:
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
    return config_flags.get_config_filename(flags.FLAGS['config']) or ''
  except Exception:  # pylint: disable=broad-except
    return str(flags.FLAGS['config'].serialize()).partition('=')[2]


def _variants_with_key(argv) -> str:
  """' configs/X.py:V has config.KEY ...' where the --config.KEY=... override
  that a variant lacks exists in other variants of the same config file."""
  config = [a.split('=', 1)[1] for a in argv[1:] if a.startswith('--config=')]
  keys = [a[len('--config.'):].split('=', 1)[0] for a in argv[1:] if a.startswith('--config.')]
  if not config or not keys:
    return ''
  path, _, variant = config[-1].partition(':')
  try:
    from vaegan_jax import config_files  # pylint: disable=g-import-not-at-top
    module = config_files.load_module(path)
    def has(v, key):
      node = module.get_config(v or None)
      for part in key.split('.'):
        if part not in node:
          return False
        node = node[part]
      return True
    for key in keys:
      if has(variant, key):
        continue
      others = [v for v in getattr(module, 'VARIANTS', ()) if v != variant and has(v, key)]
      if others:
        return (f' config.{key} exists in {", ".join(f"{path}:{v}" for v in others)};'
                ' use one of those.')
  except Exception:  # pylint: disable=broad-except
    return ''  # Only a hint: the error line stands without it.
  return ''


def parse_flags(argv):
  """absl flag parsing where a bad flag or config override is one line, exit 2."""
  try:
    argv = flags.FLAGS(argv)
  except SystemExit as e:  # absl ends --help with status 1; asking for help is no failure.
    if e.code == 1 and any(a.lstrip('-').split('=')[0] in HELP_FLAGS for a in argv[1:]):
      sys.exit(0)
    raise
  except flags.Error as e:
    lines = [l for l in str(e).splitlines() if l.strip()]
    if any('Traceback' in l for l in lines):  # An exception inside a config file.
      lines = [lines[0], lines[-1]]
    _fail(' '.join(lines))
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections reports a misspelt --config.key as a KeyError/AttributeError
    # whose text already holds "Did you mean ...".
    text = str(e).replace('\\n', ' ').replace('\\', '').replace("'", '')
    text = one_line(text).rstrip('.')
    _fail(f'bad flag or config override: unknown key {text}.{_variants_with_key(argv)}')
  if 'config' in flags.FLAGS and flags.FLAGS['config'].value is not None:
    try:  # config_flags defers a missing config file's error to first use.
      flags.FLAGS.config.to_dict()
    except OSError as e:
      _fail(f'cannot load the config file: {one_line(str(e).splitlines()[-1])}')
  return argv


def error_line(exc: BaseException) -> tuple[str, int]:
  """(the one line without 'error: ', exit status) for an exception."""
  if isinstance(exc, UserError):
    if getattr(exc, 'source', None) == '':  # A ConfigError: name the config file.
      exc.source = config_source()
    code = EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILURE
    return one_line(str(exc)), getattr(exc, 'exit_code', code)
  if isinstance(exc, app.UsageError):
    return one_line(str(exc)), EXIT_USAGE
  hint = '' if want_traceback() else (
      f' (traceback: rerun with --verbosity=1 or {TRACEBACK_ENV}=1)')
  if isinstance(exc, WorkerError):
    return one_line(str(exc), 400) + hint, EXIT_FAILURE
  text = one_line(f'{type(exc).__name__}: {exc}', 400)
  return f'unexpected {text}{hint}', EXIT_FAILURE


def _drop_orbax_errors(record) -> bool:
  return not (record.levelno >= py_logging.ERROR
              and '/orbax/' in record.pathname.replace('\\', '/'))


def run(main):
  """app.run(main) where every failure is one `error:` line (see module doc).

  `--help` prints the docstring of `main`'s module (also for the console
  scripts, whose __main__ has none) and exits 0.
  """
  entry = sys.modules.get('__main__')
  if entry is not None and not entry.__doc__:
    entry.__doc__ = sys.modules[main.__module__].__doc__

  def wrapped(argv):
    console.set_verbose(flags.FLAGS['verbosity'].present)
    if not want_traceback():  # Orbax logs a failed save's traceback, which the
      logging.get_absl_handler().addFilter(_drop_orbax_errors)  # error line reports.
    try:
      main(argv)
    except KeyboardInterrupt as e:
      if want_traceback():
        traceback.print_exc()
      if isinstance(e, SigTerm):
        print('error: terminated (SIGTERM).', file=sys.stderr, flush=True)
        os._exit(EXIT_TERMINATED)  # pylint: disable=protected-access
      print('error: interrupted (Ctrl-C).', file=sys.stderr, flush=True)
      os._exit(EXIT_INTERRUPTED)  # pylint: disable=protected-access
    except SystemExit:
      raise
    except Exception as e:  # pylint: disable=broad-except
      if want_traceback():
        traceback.print_exc()
      line, code = error_line(e)
      print(f'error: {line}', file=sys.stderr, flush=True)
      # Worker threads (Orbax, prefetch) must not keep the process alive.
      sys.stdout.flush()
      os._exit(code)  # pylint: disable=protected-access

  app.run(wrapped, flags_parser=parse_flags)
