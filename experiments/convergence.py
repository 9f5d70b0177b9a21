"""The study's convergence rule, stability measures and collapse count.

All of them read the training-time curves of a family's seeds (compare.py
`curves`: a metric logged every `eval_every_steps` on `curve_num_samples`
samples), so they judge training as it ran, not only its last checkpoint.

**Convergence rule.** Split a run's evaluations into quarters of its
budget T (steps in (T/2, 3T/4] and (3T/4, T]). Per seed s, m3_s and m4_s are
the mean FID over the third and the last quarter. The family has converged at
T when the mean drop over seeds, mean_s(m3_s - m4_s), is smaller than twice
the standard error of the family's last-quarter FID, 2 * std_s(m4_s) / sqrt(S)
(sample std over the S seeds, floored by the evaluations' own noise, see
below): training longer would change the family's number by less than the
uncertainty it is reported with. A family whose FID *rose* over the last
quarter also counts as converged (longer training would not help it); the
report shows the oscillation separately.

A curve that never started to learn is flat too, so the rule also asks that
training has improved the metric: the mean over seeds of (first evaluation -
last-quarter mean) must exceed the same 2 SE. A family that fails this has
*not* converged ('learned' False in the verdict). Nor has a family one of
whose runs stopped before the budget (diverged: a NaN/Inf stopped its
training; 'unfinished' counts them); the others' curves still give the
numbers. (A family that learns all it
will before its first evaluation would fail it as well: evaluate early enough,
`eval_every_steps` well below the budget, to see the fall.)

The floor: with few seeds the sample std can be near 0 by chance. The noise
of one evaluation is estimated from the last quarter itself, as the spread of
consecutive differences (std of m[t+1] - m[t], divided by sqrt 2) pooled over
seeds, and the standard error is never taken below that noise / sqrt(number
of evaluations averaged).

**Stability.** Per family: the spread across seeds of the final metric
(std over seeds), and the oscillation over the last quarter, the mean over
seeds of the std of the curve within that quarter relative to its mean.

**Collapse.** A run has collapsed when its final evaluation covers at most
`COLLAPSE_MODES` of the 10 classes (`modes_covered`, the classifier's count
of classes holding at least a share of the samples), or its final FID is not
finite.
"""

import math

import numpy as np

COLLAPSE_MODES = 3  # modes_covered <= this at the final evaluation: collapsed.


def quarter_means(steps, values, num_steps):
  """(third-quarter mean, last-quarter mean, last-quarter values, first
  value) of one curve."""
  steps = np.asarray(steps, np.float64)
  values = np.asarray([np.nan if v is None else v for v in values], np.float64)
  q3 = values[(steps > num_steps / 2) & (steps <= 3 * num_steps / 4)]
  q4 = values[steps > 3 * num_steps / 4]
  if not q3.size or not q4.size:
    return None
  return float(np.mean(q3)), float(np.mean(q4)), q4, float(values[np.argmin(steps)])


def convergence(curves, num_steps, key='fid', lower_is_better=True):
  """The convergence rule (module doc) for one family.

  Args:
    curves: per seed a dict with 'eval_step' and `key` lists.
    num_steps: the budget T the curves ran to.

  Returns:
    dict(converged, drop, noise (= 2 SE), learned, gain (first evaluation
    minus last quarter), first, q3, q4 (means over seeds), seeds); converged
    is None where the curves lack two quarters.
  """
  unfinished = sum(1 for c in curves
                   if not c or not c.get('eval_step') or max(c['eval_step']) < num_steps)
  per_seed = [quarter_means(c['eval_step'], c[key], num_steps) for c in curves
              if c and c.get(key)]
  per_seed = [p for p in per_seed if p is not None]
  if not per_seed:
    return {'converged': False if unfinished else None, 'seeds': 0, 'unfinished': unfinished,
            'reason': 'no evaluations in both of the last two quarters'}
  sign = 1.0 if lower_is_better else -1.0
  q3 = np.array([p[0] for p in per_seed])
  q4 = np.array([p[1] for p in per_seed])
  first = np.array([p[3] for p in per_seed])
  if not (np.all(np.isfinite(q3)) and np.all(np.isfinite(q4)) and np.all(np.isfinite(first))):
    return {'converged': False, 'seeds': len(per_seed), 'unfinished': unfinished,
            'reason': 'non-finite values'}
  drop = float(sign * np.mean(q3 - q4))  # > 0: still improving.
  n_eval = min(len(p[2]) for p in per_seed)
  diffs = np.concatenate([np.diff(p[2]) for p in per_seed])
  eval_noise = float(np.std(diffs) / math.sqrt(2)) if diffs.size > 1 else 0.0
  seed_std = float(np.std(q4, ddof=1)) if len(q4) > 1 else 0.0
  se = max(seed_std / math.sqrt(len(q4)),
           eval_noise / math.sqrt(max(n_eval, 1) * len(q4)))
  noise = 2.0 * se
  gain = float(sign * np.mean(first - q4))  # Improvement since the first evaluation.
  learned = bool(gain > noise)
  return {'converged': bool(learned and drop < noise and not unfinished), 'drop': drop,
          'noise': noise, 'unfinished': unfinished,
          'learned': learned, 'gain': gain, 'first': float(np.mean(first)),
          'q3': float(np.mean(q3)), 'q4': float(np.mean(q4)), 'seeds': len(per_seed),
          'seed_std': seed_std, 'eval_noise': eval_noise}


def oscillation(curves, num_steps, key='fid'):
  """Mean over seeds of std/mean of `key` over the last quarter (None if absent)."""
  values = []
  for c in curves:
    q = quarter_means(c.get('eval_step', []), c.get(key, []), num_steps) if c.get(key) else None
    if q is not None and q[2].size > 1 and np.mean(q[2]) != 0:
      values.append(float(np.std(q[2], ddof=1) / abs(np.mean(q[2]))))
  return float(np.mean(values)) if values else None


def collapsed(run) -> bool:
  """Whether a run's final evaluation (eval.json fields) shows collapse."""
  fid = run.get('fid')
  if fid is None or not math.isfinite(fid):
    return True
  modes = run.get('modes_covered')
  return modes is not None and modes <= COLLAPSE_MODES


def train_seconds(steps, images_per_s, batch_size, eval_steps):
  """Training seconds at each of `eval_steps`, integrated from the logged
  throughput: each logged row covers the steps since the previous one at its
  `images_per_s` (the first row includes compilation); evaluations and
  checkpoints are not counted."""
  seconds, total, prev = {}, 0.0, 0
  for s, ips in zip(steps, images_per_s):
    if ips:
      total += (s - prev) * batch_size / ips
    prev = s
    seconds[s] = total
  out = []
  for e in eval_steps:
    logged = [s for s in seconds if s <= e]
    out.append(seconds[max(logged)] if logged else None)
  return out
