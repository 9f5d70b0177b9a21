"""The rule book's vocabulary: rule types, `ConfigError`, and the checks.

A rule sits next to what it checks: each module that owns a config key (and
the constant listing its allowed values) defines a `RULES` table, e.g.
families/vae.py

    LIKELIHOODS = ('bernoulli', 'gaussian')
    RULES = {'vae.likelihood': rules.OneOf(LIKELIHOODS), ...}

and, for combinations its code relies on, `CROSS_RULES`: functions
`(config, flat) -> None` that raise `ConfigError`. `vaegan_jax/validation.py`
gathers every table in one place for `validate`; every family's `init_state`
checks its own tables with `check` (one way for all families). This module
imports nothing of the project but errors, so every owner can import it.
"""

import dataclasses
import fnmatch
import math
from typing import Any, Callable, Sequence

from vaegan_jax.errors import UsageError


class ConfigError(UsageError):
  """A config value (or combination) the code cannot run with.

  Attributes:
    key: dotted key without the 'config.' prefix, e.g. 'train.batch_size'.
    value: the refused value.
    problem: e.g. 'is out of range'.
    allowed: what would be accepted, in words.
    source: the config file (`--config` flag value); `cli.run` fills it in.
  """

  def __init__(self, key: str, value: Any, problem: str, allowed: str, source: str = ''):
    self.key, self.value, self.problem, self.allowed = key, value, problem, allowed
    self.source = source
    super().__init__(key)

  def __str__(self):
    where = f' (config file {self.source})' if self.source else ''
    return f'config.{self.key}={self.value!r} {self.problem}; allowed: {self.allowed}{where}.'


# ---------------------------------------------------------------------------
# Per-key rules. `check` returns None or a problem ('has the wrong type (str)',
# 'is out of range', 'is not allowed'); `refused` gives values each rule must
# refuse, for the table-driven test.
# ---------------------------------------------------------------------------


def _is_int(v):
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
  return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclasses.dataclass(frozen=True)
class Int:
  """An integer in [min, max] (either bound may be None)."""
  min: int | None = 0
  max: int | None = None

  def allowed(self):
    if self.max is None:
      return f'an integer >= {self.min}' if self.min is not None else 'an integer'
    return f'an integer in [{self.min}, {self.max}]'

  def check(self, v):
    if not _is_int(v):
      return f'has the wrong type ({type(v).__name__})'
    if (self.min is not None and v < self.min) or (self.max is not None and v > self.max):
      return 'is out of range'
    return None

  def refused(self):
    out = [('type', 'x'), ('type', 1.5)]
    if self.min is not None:
      out.append(('range', self.min - 1))
    if self.max is not None:
      out.append(('range', self.max + 1))
    return out


@dataclasses.dataclass(frozen=True)
class Float:
  """A finite number; `min` <= v (or `min` < v with `open_min`), v < `below`."""
  min: float | None = None
  open_min: bool = False
  below: float | None = None

  def allowed(self):
    parts = []
    if self.min is not None:
      parts.append(f'{">" if self.open_min else ">="} {self.min:g}')
    if self.below is not None:
      parts.append(f'< {self.below:g}')
    return 'a finite number' + (' ' + ' and '.join(parts) if parts else '')

  def check(self, v):
    if not _is_number(v):
      return f'has the wrong type ({type(v).__name__})'
    if not math.isfinite(v):
      return 'is not finite'
    if self.min is not None and (v <= self.min if self.open_min else v < self.min):
      return 'is out of range'
    if self.below is not None and v >= self.below:
      return 'is out of range'
    return None

  def refused(self):
    out = [('type', 'x'), ('range', float('nan'))]
    if self.min is not None:
      out.append(('range', self.min if self.open_min else self.min - 1.0))
    if self.below is not None:
      out.append(('range', self.below))
    return out


@dataclasses.dataclass(frozen=True)
class _OfType:
  """Any value of the type TYPE (WORDS says it; WRONG: values to refuse)."""
  TYPE, WORDS, WRONG = object, '', ()

  def allowed(self):
    return self.WORDS

  def check(self, v):
    return None if isinstance(v, self.TYPE) else f'has the wrong type ({type(v).__name__})'

  def refused(self):
    return [('type', w) for w in self.WRONG]


class Bool(_OfType):
  """True or False (not 0 or 1)."""
  TYPE, WORDS, WRONG = bool, 'True or False', ('yes', 1)


class Str(_OfType):
  """Any string (paths, metric names checked where they are used)."""
  TYPE, WORDS, WRONG = str, 'a string', (3,)


@dataclasses.dataclass(frozen=True)
class OneOf:
  """One of `choices`: the constant the code uses (or a function returning it)."""
  choices: Sequence[str] | Callable[[], Sequence[str]]

  def _choices(self):
    return self.choices() if callable(self.choices) else self.choices

  def allowed(self):
    return 'one of ' + ', '.join(repr(c) for c in self._choices())

  def check(self, v):
    if not isinstance(v, str):
      return f'has the wrong type ({type(v).__name__})'
    return None if v in self._choices() else 'is not allowed'

  def refused(self):
    return [('type', 3), ('unknown', 'no_such_choice')]


POSITIVE = Int(min=1)
COUNT = Int(min=0)              # 0 = off, where the key's comment says so.
RATE = Float(min=0.0, open_min=True)
NONNEG = Float(min=0.0)
PROBABILITY = Float(min=0.0, below=1.0)   # Dropout rates, Adam betas, EMA decay.


def flatten(d: dict, prefix: str = '') -> dict:
  """{'train.batch_size': 128, ...} for every leaf of a nested dict."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def as_flat(config) -> dict:
  """`flatten` of a ConfigDict or nested dict."""
  return flatten(config.to_dict() if hasattr(config, 'to_dict') else dict(config))


def _match(key: str, pattern: str) -> bool:
  parts, pats = key.split('.'), pattern.split('.')
  return len(parts) == len(pats) and all(fnmatch.fnmatchcase(k, p) for k, p in zip(parts, pats))


def rule_for(key: str, table: dict):
  """The rule of a dotted key in `table` (exact keys first, then `*`
  patterns), or None."""
  if key in table:
    return table[key]
  for pattern, rule in table.items():
    if '*' in pattern and _match(key, pattern):
      return rule
  return None


def check_value(key: str, value, table: dict):
  """ConfigError if `value` breaks the rule of `key` in `table` (no rule:
  accepted)."""
  rule = rule_for(key, table)
  if rule is None:
    return
  problem = rule.check(value)
  if problem:
    raise ConfigError(key, value, problem, rule.allowed())


def check(config, table: dict, cross_rules: Sequence[Callable] = ()):
  """The rules of `table` for every key `config` has, then `cross_rules`:
  how every family's `init_state` checks its config (training,
  `vaegan_jax.load`, evaluation). Only the keys the config has are checked,
  so a stored config that predates a key still loads."""
  flat = as_flat(config)
  for key, value in flat.items():
    check_value(key, value, table)
  for rule in cross_rules:
    rule(config, flat)
