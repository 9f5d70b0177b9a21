"""docs/datasets.md's "Your own pictures" names only config keys and CLI modes that exist."""

import os
import re

from conftest import ROOT, load_config

DOC = open(os.path.join(ROOT, 'docs', 'datasets.md')).read()


def _section(title):
  start = DOC.index(f'## {title}\n')
  end = DOC.find('\n## ', start + 1)
  return DOC[start:] if end < 0 else DOC[start:end]


def test_your_own_pictures_names_existing_keys_and_every_data_key():
  text = _section('Your own pictures')
  flat = set()
  for family in ('vae', 'gan', 'vaegan'):
    config = load_config(family).to_dict()
    flat |= {f'{s}.{k}' for s, v in config.items() if isinstance(v, dict) for k in v}
  named = set(re.findall(r'config\.([a-z_]+\.[a-z_]+)', text))
  assert named and named <= flat, named - flat
  for key in ('data.image_size', 'data.channels', 'data.cache_mb', 'eval.best_metric'):
    assert key in text, key


def test_worked_example_uses_real_commands():
  text = _section('Your own pictures')
  from vaegan_jax import sample  # pylint: disable=g-import-not-at-top
  modes = re.findall(r'vaegan_jax\.sample .*--mode=(\w+)', text)
  assert modes and set(modes) <= set(sample.MODES)
  assert '--config.data.name=folder:' in text and 'configs/vae.py' in text
  assert 'BENCH' not in text  # The measured speed is filled in.
