"""The exception types for mistakes a user can fix.

Entry points (`cli.run`) catch them and print one line, `error: <message>`:
a `UsageError` (a bad flag, config key or value: the command itself is wrong)
exits with status 2, any other `UserError` (missing data or checkpoint, a
NaN, a full disk: the command was fine, the run failed) with status 1.
"""


class UserError(Exception):
  """A problem with the user's input or environment: a dataset, a path, a disk."""


class UsageError(UserError):
  """The command line or the config is wrong; nothing was started."""


class WorkerError(RuntimeError):
  """A worker thread (input prefetch, ...) died; raised in the main thread."""


class SigTerm(KeyboardInterrupt):
  """SIGTERM during training (a scheduler's preemption), raised in the main
  thread by train's handler and handled as Ctrl-C: the step reached is
  saved; entry points exit with status 143."""


class ForcedStop(KeyboardInterrupt):
  """A second Ctrl-C while the training loop was saving the step reached on
  the first: it stops at once and says what it skipped (exit status 130)."""
