"""docs/evaluation.md's "Resize conventions" names every convention metrics/resize.py has."""

import os
import re

from vaegan_jax.metrics import resize

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs',
                   'evaluation.md')


def test_every_convention_is_documented():
  text = open(DOC, encoding='utf-8').read()
  section = text[text.index('## Resize conventions'):]
  section = section[:section.find('\n## ', 1)] if '\n## ' in section[1:] else section
  rows = set(re.findall(r'^\| `(\w+)` \|', section, flags=re.M))
  assert rows == set(resize.CONVENTIONS)
