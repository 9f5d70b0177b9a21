"""What a command prints: the project's own lines, not its libraries' chatter.

By default the first line of every command is the project's own. Library
start-up chatter is silenced where it starts, and real warnings are kept:

  * C++ logging of XLA/PJRT (and of TensorFlow where it is installed):
    `TF_CPP_MIN_LOG_LEVEL=1` (INFO off, warnings and errors on), set when the
    package is imported, before any of them is loaded; a value the user set
    is kept.
  * Python logging through absl (Orbax, TFDS, JAX): level WARNING, and the
    notices that say nothing is wrong are dropped (`LibraryNotices`: Orbax's
    remarks about every read-only checkpoint manager and about checkpoints
    without a metadata file).
  * TFDS's "Downloading and preparing dataset Unknown size ..." print for the
    embedded dataset: its builder logs it at INFO instead
    (vaegan_jax/datasets/mnist5k.py) and the project prints one line.

`--verbosity=N` (absl's flag, any N; 1 also prints tracebacks, see cli.py)
restores all of it: absl logs at that level, no notice is dropped, and C++
INFO logs are on (`TF_CPP_MIN_LOG_LEVEL=0` unless the user set it; XLA reads
it when jaxlib is imported, before flags are parsed, so the package looks
for the flag in sys.argv when it is imported).

`eval_block` formats an evaluation as a short aligned block of the family's
headline metrics; every metric still goes to metrics.jsonl and TensorBoard.
"""

import contextlib
import logging
import os
import sys

CPP_LOG_ENV = 'TF_CPP_MIN_LOG_LEVEL'
_QUIET_CPP_LEVEL = '1'
_cpp_level_is_ours = CPP_LOG_ENV not in os.environ
_verbose = False


def verbosity_requested(argv=None) -> bool:
  """Whether the command line has absl's --verbosity (or -v) flag.

  Read from sys.argv before flags are parsed: XLA reads TF_CPP_MIN_LOG_LEVEL
  once, when jaxlib is imported, which happens before absl parses flags.
  """
  argv = sys.argv[1:] if argv is None else argv
  return any(a in ('--verbosity', '-v') or a.startswith(('--verbosity=', '-v='))
             for a in argv)


def quiet_cpp_logging():
  """Sets the C++ log level before XLA (or TensorFlow) is loaded, unless the
  user chose one or asked for --verbosity. Called when `vaegan_jax` is
  imported."""
  if _cpp_level_is_ours:
    os.environ[CPP_LOG_ENV] = '0' if verbosity_requested() else _QUIET_CPP_LEVEL


class LibraryNotices(logging.Filter):
  """Drops library log records that say nothing is wrong (see the module doc)."""

  NOTICES = (('orbax', 'read_only'), ('orbax', 'read only'),
             ('orbax', 'Metadata file does not exist'))

  def filter(self, record):
    if _verbose or record.levelno > logging.WARNING:
      return True
    path = record.pathname.replace('\\', '/')
    message = record.getMessage()
    return not any(f'/{where}/' in path and what in message for where, what in self.NOTICES)


_NOTICES = LibraryNotices()


def set_verbose(verbose: bool):
  """Quiet (False, the default) or everything (True, `--verbosity` given).

  Quiet: absl logs WARNING and above, without `LibraryNotices`. Verbose: the
  caller's absl verbosity stands, nothing is dropped, and C++ INFO logs are
  on unless the user set TF_CPP_MIN_LOG_LEVEL (for libraries loaded from
  now on; for XLA, `quiet_cpp_logging` has decided from the command line).
  """
  global _verbose
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  _verbose = verbose
  if verbose:
    if _cpp_level_is_ours:
      os.environ[CPP_LOG_ENV] = '0'
    logging.getLogger('absl').removeFilter(_NOTICES)
    return
  quiet_cpp_logging()
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger('absl').addFilter(_NOTICES)


@contextlib.contextmanager
def quiet_notices():
  """Drops `LibraryNotices` for the duration of the block (library use, e.g.
  `vaegan_jax.load` in a notebook, where no CLI has set the level)."""
  log = logging.getLogger('absl')
  added = _NOTICES not in log.filters  # A CLI may have installed it for good.
  log.addFilter(_NOTICES)
  try:
    yield
  finally:
    if added:
      log.removeFilter(_NOTICES)


# ---------------------------------------------------------------------------
# The evaluation block.
# ---------------------------------------------------------------------------

# What each headline metric is, in a few words (docs/evaluation.md has more).
GLOSSES = {
    'elbo': 'test ELBO, nats/image (higher is better)',
    'nll_nats': 'IWAE -log p(x), nats/image (lower is better)',
    'fid': "FID, the project's feature space (lower is better)",
    'kid': 'KID, same space (lower is better)',
    'precision': 'sample precision (higher is better)',
    'recall': 'sample recall (higher is better)',
    'modes_covered': 'classes found among the samples',
    'psnr': 'reconstruction PSNR on the test split, dB',
    'cond_accuracy': 'samples classified as their class (chance 1/K)',
    'intra_fid': 'per-class FID, averaged (lower is better)',
    'fid_inception': 'FID in Inception features (lower is better)',
    'fd_dinov2': 'FD in DINOv2 ViT-L/14 features (lower is better)',
}
CONDITIONAL_METRICS = ('cond_accuracy', 'intra_fid')
# The backbone's distance where config.eval.features picks one.
BACKBONE_METRICS = ('fid_inception', 'fd_dinov2')


def eval_block(step: int, scalars: dict, headline: tuple, prefix: str = 'eval/') -> str:
  """A few aligned lines for the console: the headline metrics of one eval.

  Args:
    step: the training step.
    scalars: every eval metric, keys `prefix + name` -> float.
    headline: the family's names to show (its EVAL_CONSOLE_METRICS), in
      order; the conditional and backbone metrics follow when present.
    prefix: the prefix of the keys of `scalars`.

  Returns:
    'eval at step N (k of M metrics; all in metrics.jsonl)' and one line per
    metric present: name, value (4 significant digits), gloss.
  """
  names = [n for n in tuple(headline) + CONDITIONAL_METRICS + BACKBONE_METRICS
           if prefix + n in scalars]
  values = [f'{scalars[prefix + n]:.4g}' for n in names]
  head = (f'eval at step {step} ({len(names)} of {len(scalars)} metrics; '
          'all in metrics.jsonl and TensorBoard)')
  if not names:
    return head
  wn, wv = max(map(len, names)), max(map(len, values))
  return '\n'.join([head] + [f'  {n:<{wn}}  {v:>{wv}}  {GLOSSES.get(n, "")}'.rstrip()
                             for n, v in zip(names, values)])
