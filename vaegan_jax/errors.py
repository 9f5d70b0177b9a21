"""The one exception type for mistakes a user can fix.

Entry points catch `UserError`, print its one-line message and exit with
status 1, so bad input never ends in a traceback wall.
"""


class UserError(Exception):
  """A problem with the user's input: a config key, a dataset, a path, a flag."""
