"""What experiments/default_runs.sh measured, as the numbers the docs quote.

  python experiments/default_runs_summary.py [OUT_DIR]   # default /tmp/default_runs

Per run: wall time and peak RSS (/usr/bin/time -v), the conv_impl the run
stored, the median training speed of its logged steps, and every training-time
evaluation (FID, ELBO, PSNR, classes covered, cond_accuracy, intra_fid where
the family has them); then the 10000-sample evaluations.
"""

import glob
import json
import os
import re
import statistics
import sys

EVAL_KEYS = ('fid', 'kid', 'elbo', 'nll_nats', 'psnr', 'precision', 'recall',
             'modes_covered', 'cond_accuracy', 'intra_fid')


def time_file(path):
  """(wall seconds, peak RSS in MiB) from /usr/bin/time -v's output."""
  with open(path) as f:
    text = f.read()
  match = re.search(r'Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)', text)
  if not match:
    return None, None  # Still running.
  wall = match.group(1)
  seconds = 0.0
  for part in wall.split(':'):
    seconds = seconds * 60 + float(part)
  rss_kb = int(re.search(r'Maximum resident set size \(kbytes\): (\d+)', text).group(1))
  return seconds, rss_kb / 1024


def fmt_time(seconds):
  return f'{int(seconds // 60)} min {int(round(seconds % 60)):02d} s'


def main(out):
  for time_path in sorted(glob.glob(os.path.join(out, '*.time'))):
    name = os.path.basename(time_path)[:-len('.time')]
    wall, rss = time_file(time_path)
    if wall is None:
      print(f'## {name}: still running')
      continue
    print(f'## {name}: {fmt_time(wall)} wall, peak RSS {rss:.0f} MiB')
    workdir = os.path.join(out, name)
    if name.startswith('eval_'):
      with open(os.path.join(out, name + '.json')) as f:
        result = json.load(f)
      shown = {k: result[k] for k in ('step', *EVAL_KEYS, 'recon_mse', 'coverage',
                                      'density', 'bits_per_dim') if k in result}
      print('  ', json.dumps(shown))
      continue
    with open(os.path.join(workdir, 'config.json')) as f:
      print('  conv_impl', json.load(f)['model']['conv_impl'])
    rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
    speed = [r['steps_per_s'] for r in rows if 'steps_per_s' in r]
    images = [r['images_per_s'] for r in rows if 'images_per_s' in r]
    if speed:
      print(f'  median {statistics.median(speed):.2f} steps/s, '
            f'{statistics.median(images):.0f} images/s over {len(speed)} logged steps')
    for r in rows:
      values = {k: r[f'eval/{k}'] for k in EVAL_KEYS if f'eval/{k}' in r}
      if values:
        print(f'  step {r["step"]}: ' + ', '.join(
            f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}' for k, v in values.items()))


if __name__ == '__main__':
  main(sys.argv[1] if len(sys.argv) > 1 else '/tmp/default_runs')
