"""Metric sanity: do the sample metrics see the damage a person sees?

  python experiments/metric_sanity.py                       # -> experiments/results/metric_sanity/
  python experiments/metric_sanity.py --weights=PATH.msgpack --out=DIR   # another feature net
  python experiments/metric_sanity.py --inception_weights=PATH.npz      # also Inception FID

Real mnist5k training digits are damaged in controlled ways, each at five
severities (vaegan_jax/metrics/degradations.py `LADDERS`: blur, noise,
salt-and-pepper, elastic warp, broken strokes, strokes dilated into blobs,
real mixed with noise images, classes dropped, copies of few training
images), and every metric the project reports is computed for each set
against the 500 test digits, exactly as a model's samples are (`num_images`
images, default the study's 2000), `replicates` times with different draws.

For each metric and ladder the script says whether the metric gets worse
with the damage ("monotone": it never improves by more than the noise from
one severity to the next and ends worse than the clean set by more than the
noise), does not see it ("blind": no change beyond the noise) or ranks it the
wrong way ("wrong": it improves with more damage beyond the noise); the
noise is two standard errors of a difference of two replicate means. It also
checks the rankings a person makes without hesitation (`PAIRS`): broken
strokes (25 % erased) and blobs (dilation radius 2) are worse than a mild
blur (sigma 0.5 px), and illegible digits (an elastic warp of alpha 64,
40 % of the strokes erased) are worse than soft but legible ones (sigma 1).
A metric *passes* when it is monotone on every ladder in its
scope (distances: all; precision, density: the fidelity ladders; recall,
coverage, classifier score, modes, class KL: the diversity ladders) and gets
the rankings right where its scope includes both ladders; the comparison
study (experiments/report.py) ranks families only on metrics that passed
with the feature network it was evaluated with.

Writes OUT/results.json (every value, per replicate), OUT/table.md (verdicts,
rankings, values) and OUT/ladder.png (the curves), OUT/examples.png (a
picture of each degradation). With Inception weights (--inception_weights
or $VAEGAN_JAX_INCEPTION) the Inception metrics are checked too (slow on a
CPU: --inception_num_images limits the images per set); without them the
output says they were not available.
"""

import json
import math
import os
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from vaegan_jax.errors import UsageError  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax.errors import UserError  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax import kernels  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax.metrics import degradations  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
RESULTS = 'results.json'
TABLE = 'table.md'
FIGURE = 'ladder.png'
EXAMPLES = 'examples.png'
DEFAULT_OUT = os.path.join('experiments', 'results', 'metric_sanity')

ALL = tuple(degradations.LADDERS)
FIDELITY = tuple(n for n, l in degradations.LADDERS.items() if l.kind == degradations.FIDELITY)
DIVERSITY = tuple(n for n, l in degradations.LADDERS.items()
                  if l.kind == degradations.DIVERSITY)

# metric -> (label, worse when: 'higher' | 'lower', the ladders it must see).
METRICS = {
    'fid': ('FID', 'higher', ALL),
    'kid': ('KID', 'higher', ALL),
    'precision': ('precision', 'lower', FIDELITY),
    'recall': ('recall', 'lower', DIVERSITY),
    'density': ('density', 'lower', FIDELITY),
    'coverage': ('coverage', 'lower', DIVERSITY),
    'classifier_score': ('classifier score', 'lower', DIVERSITY),
    'modes_covered': ('modes covered', 'lower', DIVERSITY),
    'class_kl': ('class-histogram KL', 'higher', DIVERSITY),
}
INCEPTION_METRICS = {
    'fid_inception': ('FID (Inception)', 'higher', ALL),
    'kid_inception': ('KID (Inception)', 'higher', ALL),
    'precision_inception': ('precision (Inception)', 'lower', FIDELITY),
    'recall_inception': ('recall (Inception)', 'lower', DIVERSITY),
    'density_inception': ('density (Inception)', 'lower', FIDELITY),
    'coverage_inception': ('coverage (Inception)', 'lower', DIVERSITY),
    'is_inception': ('Inception Score', 'lower', DIVERSITY),
}
# Rankings a person makes at a glance (examples.png shows each set): (worse
# ladder, severity index, better ladder, severity index, what it says).
# Index 1 = mild, 2 = moderate, 3-4 = severe. The last two set digits a
# person can no longer read against soft digits anyone reads; the project's
# classifier agrees (it reads 90 % of the sigma-1 blurs, 34 % of the
# alpha-64 warps, 56 % of the 40 %-erased digits).
PAIRS = (
    ('erase', 2, 'blur', 1, 'broken strokes (25 % erased) worse than a mild blur (sigma 0.5)'),
    ('dilate', 2, 'blur', 1, 'blobs (dilation radius 2) worse than a mild blur (sigma 0.5)'),
    ('elastic', 4, 'blur', 2, 'scrambled strokes (elastic alpha 64) worse than a legible '
     'blur (sigma 1)'),
    ('erase', 3, 'blur', 2, 'strokes 40 % erased worse than a legible blur (sigma 1)'),
)
MONOTONE, BLIND, WRONG = 'monotone', 'blind', 'wrong'


def define_flags():
  flags.DEFINE_string('out', '', f'Output directory; default {DEFAULT_OUT} in the repository.')
  flags.DEFINE_string('weights', '', 'Feature-net weights (.msgpack with its .sha256); '
                      'default the shipped mnist5k network.')
  flags.DEFINE_enum('feature_map', '', ['', 'l2', 'scaled'], "Override the network's "
                    "feature map ('' = its own; 'scaled' = the raw map of format 1).")
  flags.DEFINE_integer('num_images', 2000, 'Images per set (the study evaluates 2000 samples).')
  flags.DEFINE_integer('replicates', 3, 'Draws of each set (different images and damage).')
  flags.DEFINE_list('ladders', list(ALL), 'Ladders to run (default all).')
  flags.DEFINE_string('data_dir', '', 'TFDS data_dir of mnist5k; default the project\'s.')
  flags.DEFINE_string('inception_weights', '', 'Converted FID Inception .npz; default '
                      '$VAEGAN_JAX_INCEPTION; without either the Inception metrics are '
                      'skipped and the output says so.')
  flags.DEFINE_integer('inception_num_images', 0, 'Images per set for the Inception '
                       'metrics; 0 = --num_images.')
  flags.DEFINE_bool('report_only', False, 'Re-judge OUT/results.json and rewrite the table '
                    'and the curves; measure nothing.')


# ---------------------------------------------------------------------------
# Verdicts (pure functions of the numbers).
# ---------------------------------------------------------------------------


def badness(values, worse: str) -> np.ndarray:
  """Values oriented so that larger is worse."""
  v = np.asarray(values, np.float64)
  return v if worse == 'higher' else -v


def noise_tolerance(per_replicate) -> float:
  """Two standard errors of the difference of two replicate means, from the
  replicate standard deviation pooled over the severities.

  Args:
    per_replicate: (S, R) values, S severities x R replicates.
  """
  a = np.asarray(per_replicate, np.float64)
  if a.shape[1] < 2:
    return 0.0
  pooled_sd = math.sqrt(float(np.mean(np.var(a, axis=1, ddof=1))))
  return 2.0 * pooled_sd * math.sqrt(2.0 / a.shape[1])


def verdict(per_replicate, worse: str) -> dict:
  """Whether a metric follows one ladder.

  Args:
    per_replicate: (S, R) values at S increasing severities, R replicates.
    worse: 'higher' or 'lower' (the direction of a worse value).

  Returns:
    {'verdict': 'monotone' | 'blind' | 'wrong', 'tolerance': float,
     'strict': bool (means strictly worse at every step),
     'change': badness of the last severity minus the first}.
  """
  a = np.asarray(per_replicate, np.float64)
  b = badness(a.mean(axis=1), worse)
  tol = noise_tolerance(a)
  steps = np.diff(b)
  change = float(b[-1] - b[0])
  if np.any(steps < -tol):
    v = WRONG
  elif change > tol:
    v = MONOTONE
  else:
    v = BLIND
  return {'verdict': v, 'tolerance': tol, 'strict': bool(np.all(steps > 0)),
          'change': change}


def pair_check(values: dict, worse: str, pair) -> dict:
  """Whether a metric ranks `pair` (worse ladder, index, better ladder, index)
  as a person does, beyond the noise of the two means.

  Args:
    values: {ladder: (S, R) per-replicate values}.
    worse: the metric's 'higher' | 'lower'.
    pair: an entry of PAIRS.
  """
  bad_ladder, bad_i, good_ladder, good_i, _ = pair
  bad = np.asarray(values[bad_ladder], np.float64)[bad_i]
  good = np.asarray(values[good_ladder], np.float64)[good_i]
  diff = float(badness(bad.mean(), worse) - badness(good.mean(), worse))
  tol = 0.0
  if len(bad) > 1 and len(good) > 1:
    tol = 2.0 * math.sqrt(np.var(bad, ddof=1) / len(bad) + np.var(good, ddof=1) / len(good))
  return {'ok': diff > tol, 'difference': diff, 'tolerance': tol}


def judge(values: dict, metrics: dict) -> dict:
  """Verdicts of every metric on every ladder, the pair checks and `passed`.

  Args:
    values: {metric: {ladder: (S, R) values}}.
    metrics: METRICS (or INCEPTION_METRICS): label, direction and scope.

  Returns:
    {metric: {'ladders': {ladder: verdict dict + 'in_scope'}, 'pairs':
     [pair_check + 'pair'], 'passed': bool, 'failures': [str]}}.
  """
  out = {}
  for key, (label, worse, scope) in metrics.items():
    if key not in values:
      continue
    ladders, failures = {}, []
    for ladder, per_rep in values[key].items():
      v = verdict(per_rep, worse)
      v['in_scope'] = ladder in scope
      ladders[ladder] = v
      if v['in_scope'] and v['verdict'] != MONOTONE:
        failures.append(f'{v["verdict"]} on {ladder}')
    pairs = []
    for pair in PAIRS:
      if pair[0] in scope and pair[2] in scope and pair[0] in values[key] and (
          pair[2] in values[key]):
        c = pair_check(values[key], worse, pair)
        c['pair'] = pair[4]
        pairs.append(c)
        if not c['ok']:
          failures.append(f'ranks {pair[4].replace(" worse than", " no worse than")}')
    out[key] = {'label': label, 'worse': worse, 'ladders': ladders, 'pairs': pairs,
                'passed': not failures, 'failures': failures}
  return out


# ---------------------------------------------------------------------------
# Measuring.
# ---------------------------------------------------------------------------


def measure(net, train_x, train_y, test_x, ladders, num_images: int, replicates: int,
            inception=None, inception_num_images: int = 0, echo=print) -> dict:
  """Metric values of every ladder, severity and replicate.

  Args:
    net: the feature network (`feature_net.FeatureNetwork`).
    train_x, train_y: the real images the ladders damage, and their labels.
    test_x: the reference images.
    ladders: names of `degradations.LADDERS`.
    num_images: images per set.
    replicates: draws per set (seed r for replicate r).
    inception: optional `inception.InceptionNetwork`.
    inception_num_images: images per set for the Inception metrics.

  Returns:
    {metric: {ladder: [[value per replicate] per severity]}}.
  """
  from vaegan_jax.metrics import generative  # pylint: disable=g-import-not-at-top
  from vaegan_jax.metrics import inception as inception_lib  # pylint: disable=g-import-not-at-top
  real_feats, _ = net.compute(test_x)
  incep_ref = None
  if inception is not None:
    incep_ref = inception.compute(test_x, 50)['pool3']
  values = {}
  for name in ladders:
    ladder = degradations.LADDERS[name]
    t0 = time.time()
    for si, severity in enumerate(ladder.severities):
      for r in range(replicates):
        images = degradations.ladder_images(name, severity, train_x, train_y, num_images, r)
        feats, probs = net.compute(images)
        m = generative.feature_metrics(real_feats, feats, probs, net.num_classes)
        if inception is not None:
          k = inception_num_images or num_images
          out = inception.compute(inception_lib.quantize(images[:k]), 50)
          m.update(generative.inception_metrics(incep_ref, out['pool3'],
                                                out['logits_unbiased']))
        for key, value in m.items():
          per_sev = values.setdefault(key, {}).setdefault(
              name, [[] for _ in ladder.severities])
          per_sev[si].append(float(value))
    echo(f'{name}: {len(ladder.severities)} severities x {replicates} replicates '
         f'({time.time() - t0:.0f} s).')
  return values


# ---------------------------------------------------------------------------
# Output.
# ---------------------------------------------------------------------------


def _fmt(x):
  if x is None or not math.isfinite(x):
    return 'n/a'
  a = abs(x)
  return f'{x:.3g}' if a >= 100 or a == 0 else (f'{x:.3f}' if a < 10 else f'{x:.2f}')


_MARK = {MONOTONE: '✓', BLIND: '–', WRONG: '✗'}


def verdict_table(judged: dict, ladders) -> list[str]:
  lines = ['| metric | ' + ' | '.join(ladders) + ' | rankings | passes |',
           '|---|' + ':---:|' * len(ladders) + ':---:|:---:|']
  for key, j in judged.items():
    cells = []
    for ladder in ladders:
      v = j['ladders'].get(ladder)
      if v is None:
        cells.append('')
        continue
      mark = _MARK[v['verdict']]
      cells.append(f'**{mark}**' if v['in_scope'] else f'({mark})')
    pairs = ' '.join('✓' if p['ok'] else '✗' for p in j['pairs']) or 'n/a'
    lines.append(f'| {j["label"]} | ' + ' | '.join(cells) +
                 f' | {pairs} | {"**yes**" if j["passed"] else "no"} |')
  return lines


def value_table(key: str, judged: dict, values: dict, ladders) -> list[str]:
  j = judged[key]
  lines = [f'**{j["label"]}** ({"higher" if j["worse"] == "higher" else "lower"} = worse; '
           'mean over replicates; verdict)', '',
           '| ladder | parameter | ' + ' | '.join(f'sev. {i}' for i in range(5)) +
           ' | verdict |', '|---|---|' + '---:|' * 5 + '---|']
  for ladder in ladders:
    lad = degradations.LADDERS[ladder]
    means = [float(np.mean(v)) for v in values[key][ladder]]
    cells = [_fmt(m) for m in means] + [''] * (5 - len(means))
    v = j['ladders'][ladder]
    note = v['verdict'] + ('' if v['in_scope'] else ' (out of scope)')
    lines.append(f'| {lad.title} | {lad.parameter}: '
                 f'{", ".join(_fmt(float(s)) for s in lad.severities)} | '
                 + ' | '.join(cells) + f' | {note} |')
  return lines


def ranking_line(key: str, judged: dict, values: dict, ladders, index: int) -> str:
  j = judged[key]
  scores = [(ladder, badness(np.mean(values[key][ladder][index]), j['worse']))
            for ladder in ladders if index < len(values[key][ladder])]
  scores.sort(key=lambda x: -x[1])
  return (f'- {j["label"]}: ' + ' > '.join(l for l, _ in scores))


def plot(values: dict, judged: dict, ladders, path: str):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  keys = list(judged)
  ncol = 3
  nrow = math.ceil(len(keys) / ncol)
  fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.0 * nrow), squeeze=False)
  colours = plt.get_cmap('tab10')
  for ax, key in zip(axes.flat, keys):
    j = judged[key]
    for c, ladder in enumerate(ladders):
      a = np.asarray(values[key][ladder], np.float64)
      x = np.arange(len(a))
      style = '-' if j['ladders'][ladder]['in_scope'] else ':'
      ax.errorbar(x, a.mean(1), yerr=a.std(1, ddof=1) if a.shape[1] > 1 else None,
                  linestyle=style, marker='o', markersize=3, capsize=2,
                  color=colours(c % 10), label=ladder)
    ax.set_title(f'{j["label"]} ({"↑" if j["worse"] == "higher" else "↓"} = worse)'
                 f'{"" if j["passed"] else " — fails"}', fontsize=9)
    ax.set_xticks(range(5))
    ax.set_xlabel('severity (0 = clean)', fontsize=8)
    ax.tick_params(labelsize=7)
    if key in ('fid', 'kid', 'fid_inception', 'kid_inception'):
      ax.set_yscale('symlog', linthresh=1.0 if key.startswith('fid') else 0.01)
      ax.set_ylim(bottom=0.0)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(keys):]:
    ax.axis('off')
  handles, labels = axes.flat[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc='lower center', ncol=min(len(ladders), 9), fontsize=8)
  fig.suptitle('Metrics along the degradation ladders (mean ± std over replicates; '
               'dotted = outside the metric\'s scope)', fontsize=10)
  fig.tight_layout(rect=(0, 0.05, 1, 0.97))
  fig.savefig(path, dpi=80)
  plt.close(fig)


def examples(train_x, train_y, ladders, path: str, per_cell: int = 6):
  """A picture of each degradation: rows = ladders, columns = severities."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  h, w = train_x.shape[1:3]
  gap, left, head = 6, 96, 14
  cell_w = per_cell * w
  ncol = max(len(degradations.LADDERS[l].severities) for l in ladders)
  canvas = Image.new('L', (left + ncol * (cell_w + gap), head + len(ladders) * (h + gap)), 255)
  draw = ImageDraw.Draw(canvas)
  for j in range(ncol):
    draw.text((left + j * (cell_w + gap) + 2, 1), f'severity {j}', fill=0)
  for i, name in enumerate(ladders):
    top = head + i * (h + gap)
    draw.text((2, top + h // 2 - 6), name, fill=0)
    for j, severity in enumerate(degradations.LADDERS[name].severities):
      imgs = degradations.ladder_images(name, severity, train_x, train_y, per_cell, 0)
      strip = np.concatenate(list(imgs.max(axis=-1)), axis=1)
      canvas.paste(Image.fromarray((np.clip(strip, 0, 1) * 255).round().astype(np.uint8)),
                   (left + j * (cell_w + gap), top))
  canvas.save(path, format='PNG', optimize=True)


def write_table(result: dict, path: str):
  ladders = result['ladders']
  judged, values = result['judged'], result['values']
  net = result['feature_net']
  lines = [
      '# Metric sanity: the metrics along controlled degradations of real digits',
      '',
      f'Generated by `{result["command"]}` ({result["num_images"]} '
      f'damaged mnist5k training digits per set against the {result["num_reference"]} '
      f'test digits, {result["replicates"]} replicates; feature net '
      f'`{net["path"]}`, '
      + (f'sha256 {net["sha256"][:12]}…' if net['sha256'] else 'its stored feature map overridden')
      + f', feature map {net.get("feature_map")!r}, test accuracy '
      f'{_fmt(net.get("test_accuracy"))}). Pictures of every degradation: '
      f'[{EXAMPLES}]({EXAMPLES}); curves: [{FIGURE}]({FIGURE}).',
      '',
      '## Verdicts',
      '',
      '✓ monotone (never better by more than the noise from one severity to the next, '
      'and worse than the clean set at the last one), – blind (no change beyond the '
      'noise), ✗ wrong (better with more damage). **Bold**: a ladder in the metric\'s '
      'scope; (parenthesised): outside it (a fidelity measure need not see mode '
      'dropping, a diversity measure need not see blur). Rankings: '
      + '; '.join(f'{i + 1}. {p[4]}' for i, p in enumerate(PAIRS)) + '.',
      '',
      *verdict_table(judged, ladders),
      '',
  ]
  failed = [j for j in judged.values() if not j['passed']]
  if failed:
    lines += ['Not to be trusted for (the comparison study does not rank families on '
              'them):', '']
    lines += [f'- **{j["label"]}**: ' + '; '.join(j['failures']) + '.' for j in failed]
    lines.append('')
  else:
    lines += ['Every metric passed.', '']
  lines += [f'Inception metrics: {result["inception"]}', '',
            '## How each metric ranks the degradations (moderate severity, worst first)', '']
  lines += [ranking_line(k, judged, values, ladders, 2) for k in judged]
  lines += ['', '## Values', '']
  for key in judged:
    lines += value_table(key, judged, values, ladders) + ['']
  with open(path, 'w') as f:
    f.write('\n'.join(lines))


def run(out: str, weights: str = '', num_images: int = 2000, replicates: int = 3,
        ladders=ALL, data_dir: str = '', inception_weights: str = '',
        inception_num_images: int = 0, feature_map: str = '', echo=print) -> dict:
  """Measures, judges and writes OUT/results.json, table.md and the PNGs."""
  from vaegan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from vaegan_jax.metrics import feature_net  # pylint: disable=g-import-not-at-top
  from vaegan_jax.metrics import inception as inception_lib  # pylint: disable=g-import-not-at-top
  unknown = [l for l in ladders if l not in degradations.LADDERS]
  if unknown:
    raise UsageError(f'--ladders: unknown {", ".join(unknown)}; choose from '
                     f'{", ".join(degradations.LADDERS)}.')
  if num_images < 10 or replicates < 1:
    raise UsageError('--num_images must be at least 10 and --replicates at least 1.')
  t0 = time.time()
  net = feature_net.load(weights) if weights else feature_net.get('mnist5k')
  if feature_map and feature_map != net.feature_map:
    import dataclasses  # pylint: disable=g-import-not-at-top
    net = dataclasses.replace(net, feature_map=feature_map,
                              metadata={**net.metadata, 'sha256': ''})
  incep, incep_note = None, ''
  try:
    incep = inception_lib.load(inception_weights or None)
  except UserError:
    if inception_weights or os.environ.get(inception_lib.ENV_VAR):
      raise  # Asked for: a missing or bad file is an error.
    incep_note = ('not available on this machine (no weights: --inception_weights=PATH or '
                  '$VAEGAN_JAX_INCEPTION, README "Inception metrics"); not checked')
  train_x, train_y = input_pipeline.load_split('mnist5k', 'train', data_dir or None)
  test_x, _ = input_pipeline.load_split('mnist5k', 'test', data_dir or None)
  values = measure(net, train_x, train_y, test_x, ladders, num_images, replicates,
                   incep, inception_num_images, echo)
  metrics = dict(METRICS, **(INCEPTION_METRICS if incep is not None else {}))
  judged = judge(values, metrics)
  os.makedirs(out, exist_ok=True)
  meta = net.metadata
  options = [f'--weights={weights}' if weights else '',
             f'--feature_map={feature_map}' if feature_map else '',
             f'--num_images={num_images}' if num_images != 2000 else '',
             f'--replicates={replicates}' if replicates != 3 else '',
             f'--ladders={",".join(ladders)}' if tuple(ladders) != ALL else '']
  result = {
      'command': ' '.join(['python experiments/metric_sanity.py'] + [o for o in options if o]),
      'num_images': num_images, 'replicates': replicates, 'num_reference': len(test_x),
      'ladders': list(ladders),
      'severities': {l: list(degradations.LADDERS[l].severities) for l in ladders},
      'feature_net': {'path': os.path.relpath(meta.get('path', ''), ROOT)
                               if meta.get('path', '').startswith(ROOT) else meta.get('path', ''),
                      'sha256': meta.get('sha256', ''), 'feature_map': net.feature_map,
                      'test_accuracy': meta.get('test_accuracy')},
      'inception': (f'computed with {incep.path} (sha256 {incep.sha256[:12]}…, '
                    f'{inception_num_images or num_images} images per set)'
                    if incep is not None else incep_note),
      'passed': {k: j['passed'] for k, j in judged.items()},
      'judged': judged, 'values': values, 'seconds': round(time.time() - t0, 1),
  }
  with open(os.path.join(out, RESULTS), 'w') as f:
    json.dump(result, f, indent=1, sort_keys=True)
    f.write('\n')
  write_table(result, os.path.join(out, TABLE))
  plot(values, judged, ladders, os.path.join(out, FIGURE))
  examples(train_x, train_y, ladders, os.path.join(out, EXAMPLES))
  return result


def rewrite(out: str) -> dict:
  """Re-judges OUT/results.json (after a change of the rules) and rewrites
  it, the table and the curves; the measured values stay as they are."""
  path = os.path.join(out, RESULTS)
  if not os.path.exists(path):
    raise UserError(f'--report_only: no {RESULTS} in {out}.')
  with open(path) as f:
    result = json.load(f)
  metrics = dict(METRICS, **INCEPTION_METRICS)
  result['judged'] = judge(result['values'], metrics)
  result['passed'] = {k: j['passed'] for k, j in result['judged'].items()}
  with open(path, 'w') as f:
    json.dump(result, f, indent=1, sort_keys=True)
    f.write('\n')
  write_table(result, os.path.join(out, TABLE))
  plot(result['values'], result['judged'], result['ladders'], os.path.join(out, FIGURE))
  return result


def main(argv):
  if len(argv) > 1:
    raise UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  kernels.setup()
  out = FLAGS.out or os.path.join(ROOT, DEFAULT_OUT)
  if FLAGS.report_only:
    result = rewrite(out)
    print(f'Rewrote {os.path.join(out, TABLE)}, {RESULTS} and {FIGURE}.')
    return
  result = run(out, FLAGS.weights, FLAGS.num_images, FLAGS.replicates, FLAGS.ladders,
               FLAGS.data_dir, FLAGS.inception_weights, FLAGS.inception_num_images,
               FLAGS.feature_map)
  for key, j in result['judged'].items():
    cells = ' '.join(f'{l}:{_MARK[v["verdict"]]}' for l, v in j['ladders'].items())
    print(f'{j["label"]:>20}: {"passes" if j["passed"] else "FAILS "} {cells}'
          + ('' if j['passed'] else f'  ({"; ".join(j["failures"])})'))
  print(f'Inception metrics: {result["inception"]}')
  print(f'Wrote {os.path.join(out, TABLE)}, {RESULTS}, {FIGURE}, {EXAMPLES} '
        f'({result["seconds"]:.0f} s).')


if __name__ == '__main__':
  from vaegan_jax import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run(main)
