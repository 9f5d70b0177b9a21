"""The README documents every config key and names only flags that exist."""

import importlib
import os
import re
import subprocess
import sys

from conftest import ROOT

README = open(os.path.join(ROOT, 'README.md')).read()


def flatten(d, prefix=''):
  out = []
  for k, v in d.items():
    out += flatten(v, f'{prefix}{k}.') if hasattr(v, 'items') else [prefix + k]
  return out


def test_every_config_key_is_in_the_reference():
  missing = []
  for name in ('vae', 'gan', 'vaegan'):
    for key in flatten(importlib.import_module(name).get_config().to_dict()):
      if f'`{key}`' not in README:
        missing.append(f'{name}:{key}')
  assert not missing, missing


def test_quick_start_opens_the_readme_with_two_commands():
  blocks = re.findall(r'```bash\n(.*?)\n```', README, re.S)
  assert 'python -m vaegan_jax.main --config=configs/vae.py' in blocks[0]
  assert 'python -m pytest tests -q' in blocks[1]
  ci = open(os.path.join(ROOT, '.ci', 'run')).read()
  assert blocks[1].split('&& ')[-1] in ci  # CI runs exactly the README's test command.


def test_every_documented_flag_exists():
  modules = {'vaegan_jax.main': [], 'vaegan_jax.sample': [], 'vaegan_jax.evaluate': [],
             'vaegan_jax.plot': []}
  for line in README.splitlines():
    for module in modules:
      if f'python -m {module} ' in line:
        modules[module] += re.findall(r'(?<![\w.])--(\w+)', line.split(module, 1)[1])
  for module, names in modules.items():
    helpfull = subprocess.run([sys.executable, '-m', module, '--helpfull'], cwd=ROOT,
                              capture_output=True, text=True, timeout=120).stdout
    for name in set(names):
      assert f'--{name}' in helpfull or f'--[no]{name}' in helpfull, f'{module} has no flag --{name}'
