"""The resolved config stored in the workdir, so a checkpoint is usable alone.

`WORKDIR/config.json` is written on the first start. A restart compares the
new config with it: keys that define the model or the data (everything under
`model` and `data` except `data.data_dir` and `model.conv_impl`, and `seed`)
must not change; training length, logging and evaluation keys may.
`model.conv_impl` is stored as resolved for the machine (the trainer turns
'auto' into the implementation that ran); it says how the convolutions are
computed, not what the model is, so a restart on another machine may run
another one (the trainer says so).
"""

import json
import os
import tempfile

import jax
import ml_collections

from vaegan_jax.errors import UsageError
from vaegan_jax.errors import UserError

CONFIG_FILE = 'config.json'
_FROZEN_SECTIONS = ('model', 'data')
_FREE_KEYS = ('data.data_dir', 'model.conv_impl')


def check_workdir(workdir: str):
  """Creates `workdir`; a UserError if it is a file or cannot be written."""
  path = os.path.abspath(workdir)
  probe = path
  while probe and not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if os.path.exists(probe) and not os.path.isdir(probe):
    raise UsageError(f'--workdir={workdir}: {probe} is a file, not a directory; '
                     'choose another --workdir.')
  try:
    os.makedirs(path, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.write_test_', dir=path)
    os.close(fd)
    os.remove(tmp)
  except OSError as e:
    raise UserError(f'--workdir={workdir} is not writable ({e.strerror or e}); '
                    'choose a directory you can write to.') from None


def _flatten(d, prefix=''):
  out = {}
  for k, v in d.items():
    key = f'{prefix}{k}'
    if isinstance(v, dict):
      out.update(_flatten(v, key + '.'))
    else:
      out[key] = v
  return out


def _frozen(flat):
  # data.image_size shapes only folder:PATH datasets (and configs written
  # before it existed lack it), so it is frozen only for them.
  free = _FREE_KEYS + (() if str(flat.get('data.name', '')).startswith('folder:')
                       else ('data.image_size', 'data.channels'))
  return {k: v for k, v in flat.items()
          if (k == 'seed' or k.split('.')[0] in _FROZEN_SECTIONS) and k not in free}


def to_dict(config) -> dict:
  return json.loads(config.to_json_best_effort())


def drift(stored: dict, new: dict) -> list[str]:
  """Lines 'key: stored -> new' for every frozen key that differs."""
  a, b = _frozen(_flatten(stored)), _frozen(_flatten(new))
  return [f'{k}: {a.get(k, "<absent>")!r} -> {b.get(k, "<absent>")!r}'
          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_and_save(config, workdir: str):
  """Refuses a config that drifted from the stored one; saves it otherwise."""
  path = os.path.join(workdir, CONFIG_FILE)
  new = to_dict(config)
  if os.path.exists(path):
    with open(path) as f:
      stored = json.load(f)
    diff = drift(stored, new)
    if diff:
      raise UserError(
          f'The config differs from the one stored in {path} in keys that define '
          f'the model or data: {"; ".join(diff)}. Use a new --workdir, or restore '
          f'those values.')
  if jax.process_index() == 0:
    with open(path + '.tmp', 'w') as f:
      json.dump(new, f, indent=2, sort_keys=True)
    os.replace(path + '.tmp', path)


def stored_value(workdir: str, key: str):
  """The value of the dotted `key` in `workdir`'s stored config; None when
  there is no stored config or it lacks the key."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return _flatten(json.load(f)).get(key)


def load(workdir: str) -> ml_collections.ConfigDict:
  """The config stored in `workdir`."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise UserError(f'No {CONFIG_FILE} in {workdir}: is it a vaegan_jax workdir?')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))
