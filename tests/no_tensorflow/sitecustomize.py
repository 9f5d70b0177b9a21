"""Put this folder on PYTHONPATH to run Python as if TensorFlow were not installed.

`import tensorflow` (and keras, tf_keras) then fails with ModuleNotFoundError,
and `importlib.util.find_spec('tensorflow')` is None, exactly as in a
virtualenv without it. Used by tests/test_no_tensorflow.py.
"""

import importlib.machinery
import sys

BLOCKED = ('tensorflow', 'keras', 'tf_keras')


class _PathFinderWithoutTF(importlib.machinery.PathFinder):

  @classmethod
  def find_spec(cls, fullname, path=None, target=None):
    if fullname.split('.')[0] in BLOCKED:
      return None
    return super().find_spec(fullname, path, target)


sys.meta_path[:] = [_PathFinderWithoutTF if f is importlib.machinery.PathFinder else f
                    for f in sys.meta_path]
