"""report.md and its PNGs from a comparison study's results (experiments/compare.py).

  python experiments/report.py --out=experiments/results/mnist5k   # rewrite from results.json

Tables hold mean ± std over seeds (sample std, ddof = 1) or 'n/a' where a
measure is undefined for a family (no encoder: no reconstruction error; no
likelihood: no NLL). The summary calls a difference between the two best
families "beyond seed noise" when |mean1 - mean2| > 2 sqrt(std1²/S + std2²/S),
i.e. about two standard errors of the difference of the means.
"""

import argparse
import json
import math
import os

import numpy as np

REPORT = 'report.md'
SAMPLES_PNG = 'samples.png'
RECON_PNG = 'reconstructions.png'
FID_PNG = 'curves_fid.png'
LOSSES_PNG = 'curves_losses.png'
COMPUTE_PNG = 'curves_compute.png'
APPLICATIONS_PNG = 'applications.png'

# (key in results, label, better: 'min' | 'max' | None, format, scale).
QUALITY = [
    ('fid', 'FID', 'min', '.2f', 1.0),
    ('kid', 'KID', 'min', '.4f', 1.0),
    ('precision', 'precision', 'max', '.3f', 1.0),
    ('recall', 'recall', 'max', '.3f', 1.0),
    ('density', 'density', 'max', '.3f', 1.0),
    ('coverage', 'coverage', 'max', '.3f', 1.0),
    ('modes_covered', 'modes covered', 'max', '.2f', 1.0),
    ('class_kl', 'class-histogram KL', 'min', '.4f', 1.0),
    ('classifier_score', 'classifier score', 'max', '.3f', 1.0),
    ('recon_mse', 'reconstruction MSE', 'min', '.4f', 1.0),
    ('psnr', 'reconstruction PSNR (dB)', 'max', '.2f', 1.0),
    ('nll_nats', 'NLL (nats, IWAE bound)', 'min', '.2f', 1.0),
    ('bits_per_dim', 'bits/dim', 'min', '.4f', 1.0),
]


def _manifold_rows(backbone: str, title: str) -> list:
  """Precision, recall, density and coverage in a backbone's feature space."""
  return [(f'{name}_{backbone}', f'{name} ({title})', 'max', '.3f', 1.0)
          for name in ('precision', 'recall', 'density', 'coverage')]


# The literature's metrics (python -m vaegan_jax.evaluate --features=inception).
INCEPTION_QUALITY = [
    ('fid_inception', 'FID (Inception)', 'min', '.2f', 1.0),
    ('kid_inception', 'KID (Inception)', 'min', '.4f', 1.0),
    ('is_inception', 'Inception Score', 'max', '.3f', 1.0),
    *_manifold_rows('inception', 'Inception'),
]
# FD-DINOv2 (python -m vaegan_jax.evaluate --features=dinov2; Stein et al. 2023).
DINOV2_QUALITY = [
    ('fd_dinov2', 'FD (DINOv2)', 'min', '.2f', 1.0),
    ('kd_dinov2', 'KD (DINOv2)', 'min', '.4f', 1.0),
    *_manifold_rows('dinov2', 'DINOv2'),
]
# Rows shown only when a family of the study is class-conditional.
CONDITIONAL = [
    ('cond_accuracy', 'conditional accuracy', 'max', '.3f', 1.0),
    ('intra_fid', 'intra-class FID', 'min', '.2f', 1.0),
]
COST = [
    ('params_total', 'parameters', None, ',.0f', 1.0),
    ('train_images_per_s', 'train images/s', 'max', '.0f', 1.0),
    ('wall_seconds', 'training wall time per run (s)', 'min', '.0f', 1.0),
    ('eval_seconds', 'final evaluation per run (s)', None, '.0f', 1.0),
]
PER_SEED = ['fid', 'kid', 'precision', 'recall', 'coverage', 'modes_covered',
            'recon_mse', 'nll_nats', 'wall_seconds']


def _fmt(value, fmt, scale=1.0):
  return 'n/a' if value is None or not math.isfinite(value) else format(value * scale, fmt)


def _stat(results, family, key):
  """(mean, std, n) of `key` for `family`, or (None, None, 0)."""
  fam = results['families'][family]
  if key == 'params_total':
    return float(fam['params']['total']), 0.0, 1
  values = [r.get(key) for r in fam['runs'].values()]
  values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
  if not values:
    return None, None, 0
  a = np.asarray(values, np.float64)
  return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0, len(a)


def _cell(results, family, key, fmt, scale, best):
  mean, std, n = _stat(results, family, key)
  if mean is None:
    return 'n/a'
  # One value for all seeds (a per-family quantity, or one seed): no ± part.
  text = _fmt(mean, fmt, scale) if n < 2 or std == 0 else (
      f'{_fmt(mean, fmt, scale)} ± {_fmt(std, fmt, scale)}')
  return f'**{text}**' if best else text


def _best_family(results, key, better, fmt='.6g', scale=1.0):
  """The family with the best mean of `key`; None on a tie (as printed)."""
  stats = [(f, _stat(results, f, key)[0]) for f in results['families']]
  stats = [(f, m) for f, m in stats if m is not None]
  if better is None or len(stats) < 2:
    return None
  stats.sort(key=lambda x: x[1], reverse=better == 'max')
  if _fmt(stats[0][1], fmt, scale) == _fmt(stats[1][1], fmt, scale):
    return None
  return stats[0][0]


def table(results, rows, header='measure') -> list[str]:
  families = list(results['families'])
  lines = [f'| {header} | ' + ' | '.join(families) + ' |',
           '|---|' + '---:|' * len(families)]
  for key, label, better, fmt, scale in rows:
    arrow = {'min': ' ↓', 'max': ' ↑', None: ''}[better]
    best = _best_family(results, key, better, fmt, scale)
    cells = [_cell(results, f, key, fmt, scale, f == best) for f in families]
    lines.append(f'| {label}{arrow} | ' + ' | '.join(cells) + ' |')
  return lines


def compare_top_two(results, key, better, families=None):
  """The best and second-best family of `key` (among `families`, default
  all) and whether they differ beyond seed noise; None where fewer than two
  families define it."""
  stats = []
  for f in families if families is not None else results['families']:
    mean, std, n = _stat(results, f, key)
    if mean is not None:
      stats.append((f, mean, std, n))
  if len(stats) < 2 or better is None:
    return None
  stats.sort(key=lambda x: x[1], reverse=better == 'max')
  (f1, m1, s1, n1), (f2, m2, s2, n2) = stats[:2]
  noise = 2.0 * math.sqrt(s1**2 / max(n1, 1) + s2**2 / max(n2, 1))
  return {'winner': f1, 'mean': m1, 'std': s1, 'runner_up': f2, 'runner_up_mean': m2,
          'runner_up_std': s2, 'diff': abs(m1 - m2), 'noise': noise,
          'significant': min(n1, n2) > 1 and abs(m1 - m2) > noise,
          'families': len(stats)}


def converged_families(results) -> list[str]:
  """Families the convergence rule passed (all where no verdict is recorded,
  as in results written before the rule existed)."""
  return [f for f, fam in results['families'].items()
          if (fam.get('convergence') or {}).get('converged', True) is not False]


def ladder_status(results, key) -> str:
  """'passed', 'failed' or 'unchecked': the metric ladder's verdict on `key`
  in the study's feature space (experiments/metric_sanity.py)."""
  ladder = results.get('ladder')
  if not ladder or key not in ladder.get('passed', {}):
    return 'unchecked'
  shas = {r.get('feature_net_sha256') for fam in results['families'].values()
          for r in fam['runs'].values() if r.get('diverged_step') is None}  # Evaluated runs.
  if shas != {ladder.get('feature_net_sha256')}:
    return 'unchecked'  # The ladder judged another feature net.
  return 'passed' if ladder['passed'][key] else 'failed'


def rankable_families(results) -> list[str]:
  """Families the summary ranks: converged by the rule, no run collapsed."""
  converged = converged_families(results)
  return [f for f in converged if not results['families'][f].get('collapsed_runs', 0)]


def summary(results) -> list[str]:
  """Rankings of the families that converged without a collapsed run, on the
  metrics that passed the ladder (or that measure reconstruction/likelihood,
  which it does not judge). Where fewer than two families qualify, every
  family is ranked and the summary says it is provisional."""
  lines, wins = [], {f: [] for f in results['families']}
  converged = converged_families(results)
  rankable = rankable_families(results)
  provisional = len(rankable) < 2
  ranked = list(results['families']) if provisional else rankable

  def why(f):
    return 'not converged by the rule' if f not in converged else 'runs collapsed'

  excluded = [f'{f} ({why(f)})' for f in results['families'] if f not in rankable]
  if provisional:
    which = (f'only {rankable[0]} has' if rankable else 'no family has')
    lines.append(f'- **Provisional**: {which} converged by the rule at this budget without '
                 'a collapsed run (see "Convergence and stability"), so these rankings '
                 'compare families that were still improving or collapsed; '
                 + ('; '.join(excluded) + '; ' if excluded else '')
                 + 'longer training can change them.')
  elif excluded:
    lines.append(f'- Not ranked: {", ".join(excluded)}; see "Convergence and stability"; '
                 'their numbers are in the tables.')
  skipped = []
  for key, label, better, fmt, scale in QUALITY:
    if ladder_status(results, key) == 'failed':
      skipped.append(label)
      continue
    c = compare_top_two(results, key, better, ranked)
    if c is None:
      continue
    if _fmt(c['mean'], fmt, scale) == _fmt(c['runner_up_mean'], fmt, scale):
      tied = [f for f in ranked
              if _stat(results, f, key)[0] is not None
              and _fmt(_stat(results, f, key)[0], fmt, scale) == _fmt(c['mean'], fmt, scale)]
      lines.append(f'- **{label}**: {", ".join(tied[:-1])} and {tied[-1]} tie at '
                   f'{_fmt(c["mean"], fmt, scale)}.')
      continue
    verdict = ('beyond seed noise' if c['significant'] else
               'within seed noise' if min(_stat(results, c['winner'], key)[2],
                                          _stat(results, c['runner_up'], key)[2]) > 1
               else 'one seed only: no noise estimate')
    if c['significant']:
      wins[c['winner']].append(label)
    lines.append(
        f'- **{label}** ({"lower" if better == "min" else "higher"} is better): '
        f'**{c["winner"]}** {_fmt(c["mean"], fmt, scale)} vs {c["runner_up"]} '
        f'{_fmt(c["runner_up_mean"], fmt, scale)}; the difference '
        f'{_fmt(c["diff"], fmt, scale)} is {verdict} (2·SE = {_fmt(c["noise"], fmt, scale)}).')
  if skipped:
    lines.append(f'- Not ranked by {", ".join(skipped)}: the metric ladder '
                 '(experiments/results/metric_sanity) found them untrustworthy in this '
                 'feature space.')
  head = []
  for f, labels in wins.items():
    if f not in ranked:
      continue
    if labels:
      head.append(f'**{f}** wins {len(labels)} measure{"s" if len(labels) > 1 else ""} '
                  f'beyond seed noise ({", ".join(labels)})')
    else:
      head.append(f'**{f}** wins no measure beyond seed noise')
  speed = sorted(((f, _stat(results, f, 'train_images_per_s')[0]) for f in results['families']),
                 key=lambda x: -(x[1] or 0))
  if all(v for _, v in speed):
    lines.append('- **training speed**: ' + ', '.join(f'{f} {v:.0f}' for f, v in speed)
                 + ' train images/s (one measurement per family, on a shared machine: '
                 'see the load average above).')
  return [f'In short{" (provisional)" if provisional else ""}: ' + '; '.join(head) + '.',
          ''] + lines


def convergence_section(results) -> list[str]:
  """The rule's verdict per family, stability and collapse."""
  fams = results['families']
  if not any('convergence' in fam for fam in fams.values()):
    return []
  study = results.get('study', {})
  lines = [
      '## Convergence and stability', '',
      f'Rule (experiments/convergence.py): a family has converged at its budget when the '
      'drop of its mean training-time FID from the third to the last quarter of training '
      '(mean over seeds) is smaller than twice the standard error of its last-quarter FID '
      '(from the seeds\' spread, floored by the evaluations\' own noise), and its FID has '
      'improved since the first evaluation by more than that (a curve that never learned '
      'is flat too). The summary ranks only families that converged without a collapsed '
      'run. Training-time '
      f'FID: {study.get("curve_num_samples")} samples every {study.get("eval_every_steps")} '
      'steps. Oscillation: std / mean of the FID within the last quarter, mean over seeds. '
      'Collapsed: final evaluation covers at most 3 of the 10 classes, or a non-finite FID, '
      'or the run diverged (a NaN/Inf stopped its training; it has no final numbers, the '
      'means and stds over seeds leave it out, and its family has not converged).',
      '',
      f'| family | converged | FID first evaluation | FID 3rd quarter | FID last quarter '
      f'| drop | 2·SE | oscillation | final FID std over seeds '
      f'| collapsed runs (of {study.get("seeds")}) |',
      '|---|:---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  for f, fam in fams.items():
    c = fam.get('convergence') or {}
    verdict = {True: 'yes', False: '**no**', None: 'n/a'}[c.get('converged')]
    if c.get('unfinished'):
      verdict += f' ({c["unfinished"]} run{"s" if c["unfinished"] > 1 else ""} diverged)'
    elif c.get('learned') is False:
      verdict += ' (no gain since the first evaluation)'
    diverged = [f'seed {k} at step {r["diverged_step"]}' for k, r in fam['runs'].items()
                if r.get('diverged_step') is not None]
    lines.append(
        f'| {f} | {verdict} | {_fmt(c.get("first"), ".2f")} | {_fmt(c.get("q3"), ".2f")} '
        f'| {_fmt(c.get("q4"), ".2f")} | '
        f'{_fmt(c.get("drop"), ".2f")} | {_fmt(c.get("noise"), ".2f")} | '
        f'{_fmt(fam.get("oscillation"), ".3f")} | {_fmt(_stat(results, f, "fid")[1], ".2f")} '
        f'| {fam.get("collapsed_runs", 0)}'
        f'{" (diverged: " + ", ".join(diverged) + ")" if diverged else ""} |')
  return lines + ['']


def ladder_line(results) -> str:
  ladder = results.get('ladder')
  statuses = {key: ladder_status(results, key) for key, *_ in QUALITY}
  judged = [k for k, v in statuses.items() if v != 'unchecked']
  if not ladder or not judged:
    return ('Metric ladder: not checked for this feature space (run '
            'experiments/metric_sanity.py); the summary ranks on every metric.')
  failed = [k for k in judged if statuses[k] == 'failed']
  return (f'Metric ladder ({ladder.get("source")}, same feature net): '
          + (f'{", ".join(failed)} failed and are not ranked; ' if failed else
             'every generative metric passed; ')
          + 'reconstruction and likelihood measures are outside its scope.')


def speed_table(results) -> list[str]:
  speed = results.get('speed') or {}
  if not speed:
    return ['Not measured (one seed, or `speed_steps = 0`).']
  families = [f for f in results['families'] if f in speed]
  first = speed[families[0]]
  lines = [f'{first["num_seeds"]} seeds, batch {first["batch_size"]}, the same batches both '
           f'ways; the faster of two alternating blocks of {first["steps_timed"]} steps '
           'each, after compilation (vaegan_jax/vmap_seeds.py `speed`).', '',
           '| seeds trained | ' + ' | '.join(families) + ' |',
           '|---|' + '---:|' * len(families)]
  rows = [('one by one (images/s)', 'sequential_images_per_s', '.0f'),
          ('vmapped (images/s)', 'vmap_images_per_s', '.0f'),
          ('vmapped / one by one', 'ratio', '.2f')]
  for label, key, fmt in rows:
    lines.append(f'| {label} | ' + ' | '.join(_fmt(speed[f][key], fmt) for f in families)
                 + ' |')
  loads = [speed[f].get('load_average') for f in families if speed[f].get('load_average')]
  if loads:
    lines += ['', 'Load average (1 min) while timing: ' +
              ', '.join(f'{f} {speed[f]["load_average"][0]:.1f}' for f in families
                        if speed[f].get('load_average')) +
              f' on {results.get("environment", {}).get("cpu_count", "?")} cores.']
  return lines


def per_seed_table(results) -> list[str]:
  labels = {k: (l, fmt, scale) for k, l, _, fmt, scale in QUALITY + COST}
  lines = ['| family | seed | ' + ' | '.join(labels[k][0] for k in PER_SEED) + ' |',
           '|---|---:|' + '---:|' * len(PER_SEED)]
  for f, fam in results['families'].items():
    for s, run in fam['runs'].items():
      cells = [_fmt(run.get(k), labels[k][1], labels[k][2]) for k in PER_SEED]
      if run.get('diverged_step') is not None:
        cells = [f'diverged at step {run["diverged_step"]}'] + [''] * (len(PER_SEED) - 1)
      lines.append(f'| {f} | {s} | ' + ' | '.join(cells) + ' |')
  return lines


# ---------------------------------------------------------------------------
# Applications (vaegan_jax/applications/benchmark.py).
# ---------------------------------------------------------------------------

# (title, task, measure, better, format): one table each, settings as columns.
APPLICATION_TABLES = [
    ('Denoising: PSNR (dB) of the restored image against the clean one', 'denoise', 'psnr',
     'max', '.2f'),
    ('Denoising: SSIM of the restored image against the clean one', 'denoise', 'ssim', 'max',
     '.3f'),
    ('Inpainting: PSNR (dB) on the hole', 'inpaint', 'psnr_hole', 'max', '.2f'),
    ('Inpainting: SSIM on the hole', 'inpaint', 'ssim_hole', 'max', '.3f'),
    ('Inpainting: PSNR (dB) of the whole image', 'inpaint', 'psnr', 'max', '.2f'),
    ('Inpainting: SSIM of the whole image', 'inpaint', 'ssim', 'max', '.3f'),
    ('Inpainting: FID of the inpainted set (own features, against the test split)', 'inpaint',
     'fid', 'min', '.2f'),
]
# Reconstruction and interpolation: one column each, families only.
MODEL_APPLICATIONS = [
    ('reconstruct/psnr', 'reconstruction PSNR (dB)', 'max', '.2f'),
    ('reconstruct/ssim', 'reconstruction SSIM', 'max', '.3f'),
    ('ppl/own', 'PPL, own features (smoother: lower)', 'min', '.1f'),
    ('ppl/inception', 'PPL, Inception pool3 (smoother: lower)', 'min', '.1f'),
]
BASELINE_TITLES = {'damaged': 'damaged input (unrestored)', 'median': 'median filter 3x3',
                   'gaussian': 'Gaussian filter σ 0.7 px', 'nl_means': 'non-local means',
                   'biharmonic': 'biharmonic inpainting'}
BASELINE_SHORT = {'median': 'median', 'gaussian': 'gauss. filter', 'nl_means': 'NL-means',
                  'biharmonic': 'biharmonic'}


def _setting_names(settings, task):
  pairs = settings['noise'] if task == 'denoise' else settings['masks']
  return [f'{kind}_{level:g}' for kind, level in pairs]


def _app_cells(results, keys, better, fmt):
  """Rows (name, [cell text per key]) for the families (mean ± std over
  seeds) and the baselines (one value: they see the same images every time),
  the best mean per column in bold; None-only baseline rows are left out."""
  baselines = (results.get('applications') or {}).get('baselines', {})
  values = {}
  for f in results['families']:
    values[f] = [_stat(results, f, 'app/' + k) for k in keys]
  order = list(BASELINE_TITLES)
  for name, metrics in sorted(baselines.items(),
                              key=lambda x: order.index(x[0]) if x[0] in order else len(order)):
    row = [(metrics.get(k), 0.0, 1) if metrics.get(k) is not None else (None, None, 0)
           for k in keys]
    if any(m is not None for m, _, _ in row):
      values[BASELINE_TITLES.get(name, name)] = row
  best = []
  for j in range(len(keys)):
    means = sorted(((v[j][0], name) for name, v in values.items() if v[j][0] is not None),
                   reverse=better == 'max')
    tie = len(means) > 1 and _fmt(means[0][0], fmt) == _fmt(means[1][0], fmt)
    best.append(None if not means or tie else means[0][1])
  rows = []
  for name, v in values.items():
    cells = []
    for j, (mean, std, n) in enumerate(v):
      if mean is None:
        cells.append('n/a')
        continue
      text = _fmt(mean, fmt) if n < 2 or std == 0 else f'{_fmt(mean, fmt)} ± {_fmt(std, fmt)}'
      cells.append(f'**{text}**' if best[j] == name else text)
    rows.append((name, cells))
  return rows


def _md_table(header, columns, rows):
  return ([f'| {header} | ' + ' | '.join(columns) + ' |', '|---|' + '---:|' * len(columns)]
          + [f'| {name} | ' + ' | '.join(cells) + ' |' for name, cells in rows])


def _has_applications(results) -> bool:
  return any(k.startswith('app/') for fam in results['families'].values()
             for r in fam['runs'].values() for k in r)


def applications_summary(results) -> list[str]:
  """Per setting, the best family against the best classical method (and
  the median filter / biharmonic inpainting), PSNR on the restored image or
  the hole."""
  apps = results.get('applications') or {}
  if not apps.get('settings'):
    return []
  baselines = apps.get('baselines', {})
  lines = []
  for task, measure, reference in (('denoise', 'psnr', 'median'),
                                   ('inpaint', 'psnr_hole', 'biharmonic')):
    parts = []
    for setting in _setting_names(apps['settings'], task):
      key = f'{task}/{setting}/{measure}'
      fams = [(f, _stat(results, f, 'app/' + key)[0]) for f in results['families']]
      fams = [(f, m) for f, m in fams if m is not None]
      ref = (baselines.get(reference) or {}).get(key)
      if not fams or ref is None:
        continue
      f, m = max(fams, key=lambda x: x[1])
      classical = max(((n, b[key]) for n, b in baselines.items()
                       if n != 'damaged' and b.get(key) is not None), key=lambda x: x[1])
      margin = lambda d: f'{abs(d):.2f} dB {"above" if d >= 0 else "below"}'
      parts.append(f'{setting.replace("_", " ")}: **{f}** {m:.2f} dB, '
                   f'{margin(m - ref)} the {BASELINE_TITLES[reference]}'
                   + (f' ({margin(m - classical[1])} the best classical method, '
                      f'{BASELINE_TITLES[classical[0]]})' if classical[0] != reference else ''))
    if parts:
      what = ('Denoising (PSNR of the restored image)' if task == 'denoise'
              else 'Inpainting (PSNR on the hole)')
      lines.append(f'- **{what}**, best family per setting: ' + '; '.join(parts) + '.')
  return lines


def applications_section(results, out) -> list[str]:
  """The "Applications" section: one table per task and measure, families
  and baselines as rows, damage settings as columns; the figure."""
  if not _has_applications(results):
    return []
  apps = results.get('applications') or {}
  settings = apps.get('settings')
  run = next(r for fam in results['families'].values() for r in fam['runs'].values()
             if any(k.startswith('app/') for k in r))
  if settings is None:  # Baselines missing: the settings from a run's keys.
    keys = [k[4:] for k in run if k.startswith('app/')]
    names = lambda t: sorted({k.split('/')[1] for k in keys if k.startswith(t + '/')})
    settings = {'noise': [], 'masks': []}
    setting_names = {'denoise': names('denoise'), 'inpaint': names('inpaint')}
  else:
    setting_names = {t: _setting_names(settings, t) for t in ('denoise', 'inpaint')}
  methods = {f: next((r['app_inpaint_methods'] for r in fam['runs'].values()
                      if r.get('app_inpaint_methods')), None)
             for f, fam in results['families'].items()}
  n = settings.get('num_images', '?') if isinstance(settings, dict) else '?'
  lines = [
      '## Applications', '',
      f'Restoration and interpolation of each final checkpoint '
      f'(`vaegan_jax/applications/benchmark.py`; `python -m vaegan_jax.evaluate '
      f'--workdir=RUN --applications` reproduces a run), on {n} test images, the same images '
      'and the same damage for every family, seed and baseline. Families: mean ± std over '
      'seeds; baselines (scikit-image, `vaegan_jax/applications/baselines.py`): one value, as '
      'they see the same images every time; best mean per column in bold; n/a where a method '
      'cannot do the task (no encoder: no denoising or reconstruction). PSNR is capped at '
      '100 dB; SSIM as Wang et al. 2004 (Gaussian window σ 1.5, = scikit-image\'s); the hole '
      'measures average over the missing pixels only.', '']
  inpaint_line = '; '.join(
      f'{f}: ' + ', '.join(f'{s} {m}' for s, m in ms.items()) for f, ms in methods.items() if ms)
  if inpaint_line:
    lines += [f'Inpainting methods (`--inpaint_method=auto` of `sample`; latent optimisation '
              f'{settings.get("inpaint_steps", "?")} Adam steps from '
              f'{settings.get("restarts", "?")} starts per image): {inpaint_line}.', '']
  lines += applications_summary(results) + ['']
  for title, task, measure, better, fmt in APPLICATION_TABLES:
    cols = setting_names[task]
    keys = [f'{task}/{c}/{measure}' for c in cols]
    arrow = ' ↑' if better == 'max' else ' ↓'
    lines += [f'### {title}{arrow}', '',
              *_md_table('method', [c.replace('_', ' ') for c in cols],
                         _app_cells(results, keys, better, fmt)), '']
  fam_only = dict(results, applications={})
  rows = [r for r in MODEL_APPLICATIONS
          if r[0] != 'ppl/inception' or any(_stat(results, f, 'app/ppl/inception')[0] is not None
                                           for f in results['families'])]
  cells = [_app_cells(fam_only, [k], better, fmt) for k, _, better, fmt in rows]
  lines += ['### Reconstruction and interpolation smoothness', '',
            'Perceptual path length (Karras et al. 2019, torch-fidelity\'s definition: '
            'ε = 1e-4, lerp, 1st-99th percentiles kept) with the squared distance of the '
            'project\'s own features (and of Inception pool3 features where its weights were '
            f'given), over {settings.get("ppl_samples", "?")} latent pairs: lower is a smoother '
            'latent space.', '',
            *_md_table('family', [label + (' ↑' if b == 'max' else ' ↓')
                                  for _, label, b, _ in rows],
                       [(f, [c[i][1][0] for c in cells])
                        for i, f in enumerate(results['families'])]), '']
  if os.path.exists(os.path.join(out, APPLICATIONS_PNG)):
    lines += [f'![applications]({APPLICATIONS_PNG})', '',
              'One damaged test image per task (rows), restored by each family (seed 0) and '
              'each classical method (blank: the method does not do that task).', '']
  return lines


def applications_figure(grid, path):
  """Rows of single images (uint8 (H, W, C) or None = blank), titled."""
  from vaegan_jax import viz  # pylint: disable=g-import-not-at-top
  cells = [g for r in grid['images'] for g in r if g is not None]
  blank = np.full_like(cells[0], viz.WHITE)
  images = np.stack([blank if g is None else g for r in grid['images'] for g in r])
  cols = [BASELINE_SHORT.get(c, c) for c in grid['col_titles']]
  for name, short in (('median filter', 'median'), ('Gaussian filter', 'gauss. filter'),
                      ('non-local', 'NL-means'), ('biharmonic', 'biharmonic')):
    cols = [short if c.startswith(name) else c for c in cols]
  viz.save(path, [viz.Panel(images, ncol=len(cols), row_labels=grid['row_titles'],
                            col_labels=cols)], scale=3)


# ---------------------------------------------------------------------------
# Plots.
# ---------------------------------------------------------------------------


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _mean_curve(runs, step_key, value_key):
  """(steps, mean, min, max) at every logged step, over the seeds that logged
  it (a diverged run's curve ends early; the others' go on)."""
  series = [(r['curves'][step_key], r['curves'][value_key]) for r in runs
            if r.get('curves') and r['curves'].get(value_key)]
  if not series:
    return None
  steps = sorted(set.union(*[set(s) for s, _ in series]))
  if not steps:
    return None
  by_step = [dict(zip(s, v)) for s, v in series]
  table_ = np.array([[np.nan if d.get(t) is None else d[t] for t in steps] for d in by_step],
                    np.float64)
  return np.asarray(steps), np.nanmean(table_, 0), np.nanmin(table_, 0), np.nanmax(table_, 0)


def plot_fid(results, path):
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for f, fam in results['families'].items():
    c = _mean_curve(list(fam['runs'].values()), 'eval_step', 'fid')
    if c is None:
      continue
    steps, mean, lo, hi = c
    ax.plot(steps, mean, marker='o', label=f)
    ax.fill_between(steps, lo, hi, alpha=0.2)
  ax.set_xlabel('training step')
  ax.set_ylabel('FID (training-time eval; lower is better)')
  ax.set_yscale('log')
  ax.set_title('FID over training: mean over seeds, band = min..max')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def _curve_on(runs, x_key, value_key):
  """(x, mean, min, max) over seeds, on the evaluation steps (each over the
  seeds that logged it); x is the step itself for x_key 'step', else the mean
  over seeds of the curve `x_key` (e.g. 'train_seconds') at those steps."""
  c = _mean_curve(runs, 'eval_step', value_key)
  if c is None:
    return None
  steps, mean, lo, hi = c
  if x_key == 'step':
    return steps, mean, lo, hi
  xs = []
  for t in steps:
    vals = [dict(zip(r['curves']['eval_step'], r['curves'].get(x_key) or []))
            .get(t) for r in runs]
    vals = [v for v in vals if v is not None]
    xs.append(np.mean(vals) if vals else np.nan)
  return np.asarray(xs), mean, lo, hi


def plot_compute(results, path):
  """Quality against compute: FID against images seen and against training
  seconds, precision and recall against images seen; seeds as bands."""
  plt = _pyplot()
  batch = results.get('study', {}).get('batch_size', 1)
  panels = [('step', 'fid', 'images seen', 'FID ↓', True),
            ('train_seconds', 'fid', 'training seconds (logged throughput)', 'FID ↓', True),
            ('step', 'precision', 'images seen', 'precision ↑', False),
            ('step', 'recall', 'images seen', 'recall ↑', False)]
  fig, axes = plt.subplots(2, 2, figsize=(10, 7))
  for ax, (x_key, y_key, x_label, y_label, log) in zip(axes.flat, panels):
    for f, fam in results['families'].items():
      c = _curve_on(list(fam['runs'].values()), x_key, y_key)
      if c is None:
        continue
      x, mean, lo, hi = c
      if x_key == 'step':
        x = x * batch
      ax.plot(x, mean, marker='.', label=f)
      ax.fill_between(x, lo, hi, alpha=0.2)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    if log:
      ax.set_yscale('log')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle('Quality against compute (training-time evaluations; mean over seeds, '
               'band = min..max)', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def plot_losses(results, path):
  plt = _pyplot()
  fams = results['families']
  ncol = max(len(f['loss_keys']) for f in fams.values())
  fig, axes = plt.subplots(len(fams), ncol, figsize=(3.0 * ncol, 2.4 * len(fams)),
                           squeeze=False)
  for i, (f, fam) in enumerate(fams.items()):
    for j in range(ncol):
      ax = axes[i, j]
      if j >= len(fam['loss_keys']):
        ax.axis('off')
        continue
      key = fam['loss_keys'][j]
      c = _mean_curve(list(fam['runs'].values()), 'step', key)
      if c is not None:
        steps, mean, lo, hi = c
        ax.plot(steps, mean)
        ax.fill_between(steps, lo, hi, alpha=0.25)
      ax.set_title(f'{f}: {key}', fontsize=9)
      ax.tick_params(labelsize=7)
      ax.grid(alpha=0.3)
  fig.suptitle('Training losses (mean over seeds, band = min..max) vs step', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def grid_figure(rows, col_titles, row_titles, path):
  """Grids side by side (rows x columns) with text labels, pixel for pixel
  (viz.render at scale 1).

  Args:
    rows: rows[i][j] a uint8 grid (H, W, C), all of one shape, or None (left
      blank).
    col_titles: one title per column; row_titles: one per row, or None.
  """
  from vaegan_jax import viz  # pylint: disable=g-import-not-at-top
  cells = [np.asarray(g) for r in rows for g in r if g is not None]
  blank = np.full_like(cells[0], viz.WHITE)
  images = np.stack([blank if g is None else np.asarray(g) for r in rows for g in r])
  viz.save(path, [viz.Panel(images, ncol=len(col_titles), row_labels=row_titles,
                            col_labels=col_titles)], scale=1)


def write_images(results, out, grids):
  families = list(results['families'])
  seeds = max(len(f['runs']) for f in results['families'].values())
  rows = [[grids['samples'][f][s] if s < len(grids['samples'][f]) else None
           for f in families] for s in range(seeds)]
  grid_figure(rows, families, [f'seed {s}' for s in range(seeds)],
              os.path.join(out, SAMPLES_PNG))
  recon = grids['reconstructions']
  cols = [f for f in families if f in recon]
  if cols:
    grid_figure([[recon['inputs']] + [recon[c] for c in cols]], ['test images'] + cols,
                None, os.path.join(out, RECON_PNG))
  if grids.get('applications'):
    applications_figure(grids['applications'], os.path.join(out, APPLICATIONS_PNG))


# ---------------------------------------------------------------------------
# The report.
# ---------------------------------------------------------------------------


def study_flags(study: dict) -> str:
  """' --config.KEY=VALUE' for every scalar study key that differs from the
  study config's default (of the same variant), so the report's command line
  reproduces it."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs', 'compare.py')
  spec = importlib.util.spec_from_file_location('_study_defaults', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  variant = 'smoke' if study.get('family_variant') == 'smoke' else None
  default = module.get_config(variant).to_dict()
  flags = []
  for key, value in sorted(study.items()):
    if key in ('out',) or isinstance(value, (dict, list, tuple)) or key not in default:
      continue
    if value != default[key]:
      flags.append(f' --config.{key}={value}')
  return ''.join(flags)


def _budget_line(results):
  s = results.get('study', {})
  images = s.get('num_steps', 0) * s.get('batch_size', 0)
  return (f'Every family trains {s.get("num_steps")} steps × {s.get("batch_size")} images '
          f'= {images:,} images seen per run, for {len(next(iter(results["families"].values()))["runs"])} '
          f'seeds (seed = init and data order), with its own default networks and optimisers '
          f'(`configs/<family>.py`{", variant " + repr(s["family_variant"]) if s.get("family_variant") else ""}'
          f'{"; overrides: " + json.dumps(s["overrides"]) if any((s.get("overrides") or {}).values()) else ""})'
          + ('; every learning rate decays to 0 over the budget (cosine; '
             '`lr_schedule=\'cosine\'`).' if s.get('lr_schedule') == 'cosine' else
             '; each family\'s own learning-rate schedule (`lr_schedule=\'constant\'`).'))


def backbone_protocol(run: dict, name: str) -> str:
  """How a run's numbers in backbone `name` were made: backbone, weights
  sha256, resize, sample count, reference and its count (the protocol
  `vaegan_jax.evaluate` records; older results: its Inception keys)."""
  proto = (run.get('protocol') or {}).get(name) or {}
  default_resize = {'inception': 'pytorch_fid', 'dinov2': 'dgm_eval'}.get(name, 'none')
  sha = proto.get('weights_sha256') or run.get('inception_source_sha256', '')
  num = proto.get('num_samples', run.get('num_samples'))
  ref = proto.get('reference') or run.get('inception_reference')
  num_ref = proto.get('num_reference', run.get('num_inception_reference'))
  return (f'backbone `{name}`, weights sha256 {sha[:8] or "unknown"}, '
          f'`{proto.get("resize", default_resize)}` resize, {num} samples against '
          f'{num_ref} {ref} images')


def _backbone_section(results, key: str, backbone: str, title: str, space: str,
                      rows) -> list[str]:
  """The table of one backbone's metrics, when the study was evaluated with
  it (a run has `key`): `title`, then `space` (the feature space and what its
  numbers are) with the protocol of the backbone, then the table of `rows`."""
  runs = [r for fam in results['families'].values() for r in fam['runs'].values()]
  r = next((r for r in runs if key in r), None)
  if r is None:
    return []
  return [f'## {title} (mean ± std over seeds; best in bold)', '',
          space.format(protocol=backbone_protocol(r, backbone)) + ' Every other table is in '
          'the project\'s own feature space.', '', *table(results, rows), '']


def inception_section(results) -> list[str]:
  """The Inception-feature table, when the study was evaluated with them."""
  return _backbone_section(
      results, 'fid_inception', 'inception', 'Inception metrics',
      'In the feature space of the FID Inception-v3 (pytorch-fid\'s weights; '
      '`vaegan_jax/metrics/inception.py`; {protocol}): the numbers papers report (FID, '
      'KID and IS as pytorch-fid/torch-fidelity; IS over 10 splits).', INCEPTION_QUALITY)


def dinov2_section(results) -> list[str]:
  """The FD-DINOv2 table, when the study was evaluated with DINOv2."""
  return _backbone_section(
      results, 'fd_dinov2', 'dinov2', 'DINOv2 metrics',
      'In the feature space of DINOv2 ViT-L/14 (`vaegan_jax/metrics/dinov2.py`, '
      'preprocessing as dgm-eval; {protocol}): the Fréchet distance Stein et al. (2023) '
      'recommend over Inception\'s, with KD and precision/recall/density/coverage in the '
      'same space.', DINOV2_QUALITY)


def _code_at(results) -> str:
  """', code at C' (the commit of the last session), naming the training
  sessions' commits where they differ from it."""
  env = results.get('environment', {})
  if not env.get('git_commit'):
    return ''
  trained = []
  for x in results.get('sessions', []):
    if not x.get('report_only') and x.get('git_commit') and x['git_commit'] not in trained:
      trained.append(x['git_commit'])
  if trained and trained != [env['git_commit']]:
    return f', trained at {", ".join(trained)}, report at {env["git_commit"]}'
  return f', code at {env["git_commit"]}'


def _stopped_sessions(sessions) -> str:
  """'; N of the M sessions stopped early (...)' where a session ended with an
  error or Ctrl-C: its time is in the total, its work resumed by the next."""
  stopped = [x['stopped'] for x in sessions if x.get('stopped')]
  if not stopped:
    return ''
  return (f'; {len(stopped)} of the {len(sessions)} sessions stopped early, their time '
          f'included ({"; ".join(stopped)})')


def write(results, out, grids=None):
  """Writes OUT/report.md and its PNGs; `grids` (from compare.write_grids) to
  redraw the sample/reconstruction figures, else the existing ones are linked."""
  os.makedirs(out, exist_ok=True)
  if grids is not None:
    write_images(results, out, grids)
  plot_fid(results, os.path.join(out, FID_PNG))
  plot_losses(results, os.path.join(out, LOSSES_PNG))
  plot_compute(results, os.path.join(out, COMPUTE_PNG))
  study = results.get('study', {})
  env = results.get('environment', {})
  train_sessions = [x for x in results.get('sessions', []) if not x.get('report_only')]
  total = sum(x['seconds'] for x in train_sessions)
  cpu = sum(x.get('cpu_seconds', 0.0) for x in train_sessions)
  loads = [x.get('load_average_start') for x in train_sessions if x.get('load_average_start')]
  fam0 = next(iter(results['families'].values()))
  any_run = next(iter(fam0['runs'].values()))
  lines = [
      f'# Comparison study: {" vs ".join(results["families"])} on {study.get("dataset")}',
      '',
      'Generated by `python experiments/compare.py --config=experiments/configs/compare.py'
      f'{":" + study["family_variant"] if study.get("family_variant") == "smoke" else ""}'
      f'{study_flags(study)} --out=DIR` (rerun it to reproduce; finished runs are skipped).',
      '',
      _budget_line(results) + ' Each final checkpoint is evaluated by `vaegan_jax.evaluate` '
      f'with {any_run.get("num_samples")} samples against the {any_run.get("num_reference")} '
      'test images, in the feature space of the project\'s own classifier '
      '(`vaegan_jax/metrics/feature_net.py`, not Inception): compare these numbers only '
      'with this project\'s, same dataset and sample count.',
      '',
      f'Study time: {total / 60:.1f} min wall, {cpu / 60:.1f} min of CPU time, on '
      f'{env.get("cpu_count")} CPU cores '
      f'({env.get("backend")}, jax {env.get("jax")}'
      + _code_at(results) + ')'
      + (f'; load average at start {", ".join(f"{l[0]:.1f}" for l in loads)} '
         '(other jobs shared the machine when it is above the core count)' if loads else '')
      + _stopped_sessions(train_sessions) + '.',
      '',
      '## Summary',
      '',
      ladder_line(results),
      '',
      *summary(results),
      '',
      *convergence_section(results),
      '## Results (mean ± std over seeds; best in bold)',
      '',
      *table(results, QUALITY + [r for r in CONDITIONAL if any(
          r[0] in f.get('mean', {}) for f in results['families'].values())]),
      '',
      *inception_section(results),
      *dinov2_section(results),
      '## Cost',
      '',
      *table(results, COST, header='cost'),
      '',
      'Train images/s: median logged training throughput (compilation, evaluations and '
      'checkpoints excluded); for vmapped seeds, all seeds together. Wall time: the '
      'whole training call per run (compilation and training-time evaluations included; '
      'vmapped seeds share one call, split evenly).',
      '',
      '## Seeds as a batch dimension: vmapped vs one by one',
      '',
      *speed_table(results),
      '',
      '## Samples',
      '',
      '36 samples of the final checkpoint of every run (rows: seeds), drawn with the '
      'same key.',
      '',
      f'![samples]({SAMPLES_PNG})',
      '',
  ]
  if os.path.exists(os.path.join(out, RECON_PNG)):
    lines += ['## Reconstructions', '',
              'Test images and their reconstructions (decoded posterior means, seed 0) by '
              'the families with an encoder.', '', f'![reconstructions]({RECON_PNG})', '']
  lines += applications_section(results, out)
  lines += [
      '## Training curves',
      '',
      f'![FID over training]({FID_PNG})',
      '',
      f'![quality against compute]({COMPUTE_PNG})',
      '',
      f'Training-time FID uses {study.get("curve_num_samples")} samples, so it sits above '
      'the final numbers (FID is biased upwards for small sample counts).',
      '',
      f'![training losses]({LOSSES_PNG})',
      '',
      '## Per seed',
      '',
      *per_seed_table(results),
      '',
  ]
  with open(os.path.join(out, REPORT), 'w') as f:
    f.write('\n'.join(lines))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True, help='Study directory holding results.json.')
  args = parser.parse_args()
  path = os.path.join(args.out, 'results.json')
  if not os.path.exists(path):
    raise SystemExit(f'error: no results.json in {args.out}.')
  with open(path) as f:
    write(json.load(f), args.out)
  print(f'Wrote {os.path.join(args.out, REPORT)}.')


if __name__ == '__main__':
  main()
