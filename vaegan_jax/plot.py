"""A run's curves as one PNG: `python -m vaegan_jax.plot --workdir=DIR [--out=FILE.png]`.

Reads DIR/metrics.jsonl (what training logs) and draws one axis per metric
group: a training metric and its evaluation counterpart share an axis
('elbo' and 'eval/elbo'), a '_std' key is a band around its metric, and
per-class keys are one line each (vaegan_jax/viz.py, `curves_figure`).
Default output: DIR/curves.png.
"""

import json
import os

from absl import app
from absl import flags

from vaegan_jax import cli
from vaegan_jax.errors import UsageError
from vaegan_jax.errors import UserError

FLAGS = flags.FLAGS
METRICS_FILE = 'metrics.jsonl'
DEFAULT_OUT = 'curves.png'


def define_flags():
  flags.DEFINE_string('workdir', None, 'Run directory holding metrics.jsonl.')
  flags.DEFINE_string('out', '', f'PNG to write; default WORKDIR/{DEFAULT_OUT}.')


def read_metrics(workdir: str) -> list[dict]:
  """The rows of WORKDIR/metrics.jsonl; a line cut short by a kill is skipped,
  and of rows logged twice for one step (a resumed run) the last one counts.

  Raises:
    UserError: no such workdir or file, or no row in it.
  """
  if not os.path.isdir(workdir):
    raise UserError(f'Workdir {workdir} does not exist.')
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    raise UserError(f'No {METRICS_FILE} in {workdir}: train first '
                    f'(python -m vaegan_jax.main --workdir={workdir} ...).')
  rows = []
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(row, dict) and 'step' in row:  # Curves of numbers: notes
        rows.append({k: v for k, v in row.items() if not isinstance(v, str)})  # left out.
  if not rows:
    raise UserError(f'{path} holds no logged step yet.')
  return latest_rows(rows)


def latest_rows(rows: list[dict]) -> list[dict]:
  """`rows` where a later row of the same step and the same keys supersedes
  an earlier one (a run resumed from an earlier checkpoint logged those
  steps again), in the order of the rows kept."""
  last = {}
  for i, row in enumerate(rows):
    last[(row['step'], frozenset(row))] = i
  return [rows[i] for i in sorted(last.values())]


def _title(workdir: str) -> str:
  try:
    with open(os.path.join(workdir, 'config.json')) as f:
      config = json.load(f)
    return f'{config["model"]["family"]} on {config["data"]["name"]}: {workdir}'
  except (OSError, ValueError, KeyError, TypeError):
    return workdir


def run(workdir: str, out: str = '') -> str:
  """Writes the curves of the run in `workdir`; returns the PNG's path."""
  from vaegan_jax import viz  # pylint: disable=g-import-not-at-top
  rows = read_metrics(workdir)
  out = out or os.path.join(workdir, DEFAULT_OUT)
  return viz.save_curves(out, rows, _title(workdir))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS.workdir:
    raise UsageError('--workdir is required: the directory of a training run.')
  print(f'Wrote {run(FLAGS.workdir, FLAGS.out)}', flush=True)


def cli_main():
  """The `vaegan-plot` command: the same as `python -m vaegan_jax.plot`."""
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  cli_main()
