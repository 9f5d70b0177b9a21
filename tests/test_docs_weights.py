"""docs/evaluation.md states the registry's files, URLs and hashes as the code has them."""

import os

from vaegan_jax.metrics import weights

DOC = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'docs', 'evaluation.md')


def test_weights_table_matches_the_registry():
  with open(DOC) as f:
    text = f.read()
  for section in ('## Weights', '## The fid command', '## Protocol'):
    assert section in text
  for entry in weights.REGISTRY.values():
    assert f'| `{entry.name}` | `{entry.file}` | {entry.url} | `{entry.sha256}` |' in text
    assert f'{entry.size:,} B' in text
    assert entry.flag in text and entry.env in text
