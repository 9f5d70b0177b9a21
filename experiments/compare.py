"""The comparison study: VAE vs GAN vs VAE-GAN, equal budgets, several seeds.

  python experiments/compare.py --config=experiments/configs/compare.py --out=experiments/results/mnist5k
  python experiments/compare.py --config=experiments/configs/compare.py:smoke --out=/tmp/compare_smoke
  python experiments/compare.py --config=experiments/configs/compare.py --out=DIR --report_only

Every family of `config.families` trains `config.num_steps` steps of
`config.batch_size` images per seed (the same images seen by every run) into
OUT/runs/<family>/seed_<s>/, a normal workdir: `train.train_and_evaluate`
one seed after the other, or all seeds of a family in one vmapped step
(`config.vmap_seeds`: `train.train_seeds`, the same loop; vaegan_jax/vmap_seeds.py).
Each run's final checkpoint
is then evaluated with `vaegan_jax.evaluate.run` (so `python -m
vaegan_jax.evaluate --workdir=RUN --num_samples=N` reproduces a row), and
the study writes

  OUT/results.json   per family and seed every metric, their mean and std,
                     training curves, speeds, parameter counts, timings;
  OUT/report.md      tables, a generated summary and the PNGs it links
                     (experiments/report.py).

With `config.applications` each final checkpoint also takes the applications
benchmark (vaegan_jax/applications/benchmark.py: denoising, inpainting,
reconstruction, perceptual path length) into RUN/applications.json, and the
classical baselines restore the same damaged images once per study
(OUT/applications_baselines.json); the report's "Applications" section
tabulates both.

With `config.conditional` the study also trains each family class-conditional
(`model.conditional=True`) as a row of its own, `<family>_conditional`, with
the same budget; its evaluation adds cond_accuracy and intra_fid.

Rerunning the command skips the runs that finished (final checkpoint and
eval.json present) and resumes the others from their last checkpoint.
"""

import contextlib
import functools
import json
import logging
import os
import platform
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import ml_collections  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from vaegan_jax import kernels  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax import progress  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax.errors import UserError  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
RESULTS = 'results.json'
EVAL_FILE = 'eval.json'
TIMING_FILE = 'timing.json'
DIVERGED_FILE = 'diverged.json'  # A run whose training produced NaN/Inf: its step and message.
SPEED_FILE = 'speed.json'
APPLICATIONS_FILE = 'applications.json'            # Per run: the applications benchmark.
APPLICATIONS_EXAMPLES = 'applications_examples.npz'  # Per run: restored figure images.
BASELINES_FILE = 'applications_baselines.json'     # Per study: the classical rows.
BASELINES_EXAMPLES = 'applications_baselines.npz'
FIGURE_EXAMPLES = 4  # Restored images kept per setting for the report's figure.
GRID_KEY = 7  # Fixed sample key of the report's grids.
CONDITIONAL_SUFFIX = '_conditional'  # Row name of a family's class-conditional runs.
FEATURES = ('own', 'inception', 'dinov2')  # config.features: the final evaluation's backbone.


def define_flags():
  config_flags.DEFINE_config_file(
      'config', os.path.join(ROOT, 'experiments', 'configs', 'compare.py'),
      'Study config, e.g. experiments/configs/compare.py or ...compare.py:smoke.',
      lock_config=True)
  flags.DEFINE_string('out', '', 'Output directory; default config.out.')
  flags.DEFINE_bool('report_only', False, 'Rewrite results.json and the report from '
                    'the runs (or only the report from results.json); train nothing.')


# ---------------------------------------------------------------------------
# Configs of the runs.
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _family_config(family: str, variant: str):
  path = os.path.join(ROOT, 'configs', f'{family}.py')
  if not os.path.exists(path):
    raise UserError(f'No config file {path} for family {family!r}.')
  from vaegan_jax import config_files  # pylint: disable=g-import-not-at-top
  return config_files.load(path, variant or None)


def load_family_config(family: str, variant: str = ''):
  """A copy of configs/<family>.py:get_config(variant or None). The file is
  read once per process, so every run of a study gets the same config even
  if the file is edited while the study runs."""
  return _family_config(family, variant or '').copy_and_resolve_references()


def apply_overrides(config, overrides, where: str):
  """Sets every leaf of the nested dict `overrides` in `config`; unknown keys
  are a UserError naming `where`."""
  for key, value in overrides.items():
    if key not in config:
      raise UserError(f'{where}.{key} is not a key of the family config; check the '
                      f'spelling in experiments/configs/compare.py.')
    if hasattr(value, 'items'):
      apply_overrides(config[key], value, f'{where}.{key}')
    else:
      try:
        config[key] = value
      except TypeError as e:
        raise UserError(f'{where}.{key}={value!r}: {e}') from None


def entries(study) -> list[str]:
  """The study's rows: its families, then (with `study.conditional`) each
  family's class-conditional variant, '<family>_conditional'."""
  names = list(study.families)
  if study.get('conditional', False):
    names += [f + CONDITIONAL_SUFFIX for f in study.families]
  return names


def family_of(entry: str) -> str:
  """The family of a row name ('gan_conditional' -> 'gan')."""
  return entry[:-len(CONDITIONAL_SUFFIX)] if entry.endswith(CONDITIONAL_SUFFIX) else entry


def run_config(study, entry: str, seed: int):
  """The config of one run: the family's own, with the study's budget; a
  '<family>_conditional' entry also sets model.conditional=True."""
  family = family_of(entry)
  config = load_family_config(family, study.family_variant)
  if entry != family:
    config.model.conditional = True
  if study.get('conv_impl', ''):
    config.model.conv_impl = study.conv_impl
  config.seed = int(seed)
  config.data.name = study.dataset
  config.data.data_dir = study.data_dir
  t = config.train
  t.batch_size = study.batch_size
  t.num_steps = study.num_steps
  t.log_every_steps = study.log_every_steps
  t.eval_every_steps = study.eval_every_steps
  t.sample_every_steps = study.eval_every_steps
  t.checkpoint_every_steps = study.checkpoint_every_steps
  t.keep_checkpoints = 2
  config.eval.num_samples = study.curve_num_samples
  config.eval.iwae_k = study.iwae_k  # The NLL is measured once, at the end ...
  if 'train_iwae_k' in config.eval:
    config.eval.train_iwae_k = 0     # ... not during training.
  config.eval.best_metric = ''  # The study evaluates the final checkpoint.
  if study.get('lr_schedule', 'constant') == 'cosine':
    for section in optimiser_sections(config):
      section.decay_steps = study.num_steps
  apply_overrides(config, study.overrides.get(family, {}) or {}, f'overrides.{family}')
  return config


LR_SCHEDULES = ('constant', 'cosine')


def optimiser_sections(config) -> list:
  """The Adam sections of a family config: `optim` itself (the VAE's one
  optimiser) or its sub-sections (optim.g / optim.d, optim.enc / dec / dis)."""
  if 'learning_rate' in config.optim:
    return [config.optim]
  return [config.optim[k] for k in sorted(config.optim.keys())
          if hasattr(config.optim[k], 'keys') and 'learning_rate' in config.optim[k]]


def run_dir(out: str, family: str, seed: int) -> str:
  return os.path.join(out, 'runs', family, f'seed_{seed}')


def check_study(study):
  from vaegan_jax import families  # pylint: disable=g-import-not-at-top
  from vaegan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  if not study.families:
    raise UserError('config.families is empty.')
  for f in study.families:
    families.get(f)
  if (study.get('conditional', False)
      and not input_pipeline.get_spec(study.dataset).num_classes):
    raise UserError(f'config.conditional=True needs class labels and {study.dataset} '
                    'has none.')
  if study.seeds < 1:
    raise UserError(f'config.seeds must be at least 1, not {study.seeds}.')
  if study.num_steps < 1 or study.batch_size < 1:
    raise UserError('config.num_steps and config.batch_size must be positive.')
  if study.eval_num_samples < 10:
    raise UserError(f'config.eval_num_samples={study.eval_num_samples} is too small; use '
                    'at least 10 (FID and KID need many).')
  features = study.get('features', 'own')
  if features not in FEATURES:
    raise UserError(f"config.features={features!r} must be 'own', 'inception' or 'dinov2'.")
  from vaegan_jax.metrics import backbones  # pylint: disable=g-import-not-at-top
  try:
    backbones.check_resize(features, study.get('resize', ''))
  except UserError as e:
    raise UserError(f'config.resize: {e}') from None
  if features == 'inception':  # Fail before hours of training.
    from vaegan_jax.metrics import inception  # pylint: disable=g-import-not-at-top
    inception.resolve_weights_path(study.get('inception_weights', ''))
  elif features == 'dinov2':
    from vaegan_jax.metrics import weights  # pylint: disable=g-import-not-at-top
    weights.ensure('dinov2', study.get('dinov2_weights', ''))
  if study.get('lr_schedule', 'constant') not in LR_SCHEDULES:
    raise UserError(f'config.lr_schedule={study.lr_schedule!r} must be one of '
                    f'{", ".join(map(repr, LR_SCHEDULES))}.')
  if study.eval_every_steps > study.num_steps / 4:
    raise UserError(f'config.eval_every_steps={study.eval_every_steps} leaves no evaluation in '
                    f'each quarter of the {study.num_steps} steps; the convergence rule '
                    '(experiments/convergence.py) needs one per quarter at least.')
  for f in study.overrides:
    if f not in study.families:
      raise UserError(f'config.overrides.{f} names a family that is not in config.families.')
  # Every run's config through the trainer's own rules, before hours of
  # training (conv_impl, overrides, the budget against each family's keys).
  from vaegan_jax import validation  # pylint: disable=g-import-not-at-top
  for entry in entries(study):
    try:
      validation.validate(run_config(study, entry, 0), devices=False)
    except validation.ConfigError as e:
      raise UserError(f'The study\'s {entry} runs would train with {e} Check the study '
                      'keys and config.overrides in experiments/configs/compare.py.') from None


# ---------------------------------------------------------------------------
# State of a run on disk.
# ---------------------------------------------------------------------------


def _read_json(path, default=None):
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return json.load(f)


def _write_json(path, obj):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write('\n')
  os.replace(path + '.tmp', path)


def trained(workdir: str, num_steps: int) -> bool:
  """Whether `workdir` has its final checkpoint."""
  from vaegan_jax import api  # pylint: disable=g-import-not-at-top
  return num_steps in api.available_steps(workdir)


def finished(workdir: str, num_steps: int, num_samples: int, features: str = 'own',
             resize: str = '') -> bool:
  """Final checkpoint present and evaluated with the study's sample count,
  feature space and resize convention ('' = the backbone's default)."""
  from vaegan_jax.metrics import backbones  # pylint: disable=g-import-not-at-top
  result = _read_json(os.path.join(workdir, EVAL_FILE))
  if not (bool(result) and result.get('step') == num_steps
          and result.get('num_samples') == num_samples
          and result.get('features', 'own') == features):
    return False
  if features != 'own':
    proto = (result.get('protocol') or {}).get(features) or {}
    if proto.get('resize') != backbones.check_resize(features, resize):
      return False
  return trained(workdir, num_steps)


def diverged(workdir: str) -> dict | None:
  """{'step', 'message'} of a run whose training stopped on a NaN/Inf, else None.
  Such a run is not trained again (it would diverge again at the same step:
  training is deterministic) and counts as collapsed."""
  return _read_json(os.path.join(workdir, DIVERGED_FILE))


def add_timing(workdir: str, mode: str, start_step: int, end_step: int, wall: float,
               group_size: int = 1):
  """Appends one training session to WORKDIR/timing.json."""
  path = os.path.join(workdir, TIMING_FILE)
  timing = _read_json(path, {'sessions': []})
  timing['sessions'].append({'mode': mode, 'start_step': start_step, 'end_step': end_step,
                             'wall_seconds': wall, 'group_size': group_size})
  _write_json(path, timing)


# ---------------------------------------------------------------------------
# Training, evaluation, speed.
# ---------------------------------------------------------------------------


def _start_step(workdir):
  from vaegan_jax import api  # pylint: disable=g-import-not-at-top
  steps = api.available_steps(workdir)
  return steps[-1] if steps else 0


def check_schedule(config, workdir: str):
  """A UserError where a run with checkpoints would go on under another
  learning-rate schedule than it started with: with lr_schedule='cosine' the
  decay length is the budget, so raising num_steps would bend a decay that
  has already (nearly) reached 0."""
  stored = _read_json(os.path.join(workdir, 'config.json'))
  if not stored or not _start_step(workdir):
    return
  decays = lambda c: [s.get('decay_steps', 0) for s in optimiser_sections(c)]
  old, new = decays(ml_collections.ConfigDict(stored)), decays(config)
  if old != new:
    raise UserError(
        f'{workdir} was trained with decay_steps {old} and would go on with {new}: its '
        'learning-rate schedule would change mid-run. Use another --out for the new '
        'budget (with lr_schedule=\'cosine\' the decay length is num_steps), or delete '
        'that run to train it again.')


def train_family(study, out: str, family: str, echo=print):
  """Trains the seeds of `family` that lack their final checkpoint."""
  from vaegan_jax import train  # pylint: disable=g-import-not-at-top
  todo = [s for s in range(study.seeds)
          if not trained(run_dir(out, family, s), study.num_steps)
          and not diverged(run_dir(out, family, s))]
  if not todo:
    echo(f'{family}: all {study.seeds} runs trained (or diverged).')
    return
  configs = [run_config(study, family, s) for s in todo]
  workdirs = [run_dir(out, family, s) for s in todo]
  for config, w in zip(configs, workdirs):
    check_schedule(config, w)
  for w in workdirs:  # A run trained (again) is evaluated again.
    for name in (EVAL_FILE, APPLICATIONS_FILE):
      if os.path.exists(os.path.join(w, name)):
        os.remove(os.path.join(w, name))
  if study.vmap_seeds and len(todo) > 1:
    echo(f'{family}: training seeds {todo} as one vmapped step.')
    t0 = time.time()
    try:
      _, info = train.train_seeds(configs, workdirs, echo=echo)
    except train.NonFiniteError as e:
      if e.seed is None:
        raise
      _mark_diverged(run_dir(out, family, e.seed), e, echo)
      return train_family(study, out, family, echo)  # The other seeds go on.
    wall = time.time() - t0
    for w in workdirs:
      add_timing(w, 'vmap', info['start_step'], study.num_steps, wall / len(todo), len(todo))
    return
  for seed, config, workdir in zip(todo, configs, workdirs):
    echo(f'{family}: training seed {seed}.')
    start = _start_step(workdir)
    t0 = time.time()
    try:
      train.train_and_evaluate(config, workdir)
    except train.NonFiniteError as e:
      add_timing(workdir, 'sequential', start, e.step or start, time.time() - t0)
      _mark_diverged(workdir, e, echo)
      continue
    add_timing(workdir, 'sequential', start, study.num_steps, time.time() - t0)


def _mark_diverged(workdir: str, error, echo):
  _write_json(os.path.join(workdir, DIVERGED_FILE), {'step': error.step, 'message': str(error)})
  echo(f'{workdir}: diverged ({error}); the study goes on and counts this run as collapsed.')


def evaluate_family(study, out: str, family: str, echo=print):
  """Evaluates the final checkpoint of every run of `family` lacking eval.json."""
  from vaegan_jax import evaluate  # pylint: disable=g-import-not-at-top
  for s in range(study.seeds):
    workdir = run_dir(out, family, s)
    features, resize = study.get('features', 'own'), study.get('resize', '')
    if (finished(workdir, study.num_steps, study.eval_num_samples, features, resize)
        or diverged(workdir)):
      continue
    evaluate.run(workdir, num_samples=study.eval_num_samples, step=study.num_steps,
                 out=os.path.join(workdir, EVAL_FILE), iwae_k=study.iwae_k,
                 data_dir=study.data_dir, echo=echo, features=features,
                 inception_weights=study.get('inception_weights', ''),
                 dinov2_weights=study.get('dinov2_weights', ''), resize=resize,
                 reference=study.get('inception_reference', 'train'),
                 num_reference=study.get('inception_num_reference', 0))


# ---------------------------------------------------------------------------
# Applications (vaegan_jax/applications/benchmark.py) of each final checkpoint.
# ---------------------------------------------------------------------------


def applications_settings(study):
  """The benchmark's protocol with the study's sizes."""
  from vaegan_jax.applications import benchmark  # pylint: disable=g-import-not-at-top
  return benchmark.Settings(num_images=study.applications_num_images,
                            inpaint_steps=study.applications_inpaint_steps,
                            restarts=study.applications_restarts,
                            ppl_samples=study.applications_ppl_samples)


_TASKS = {}


def _applications_inputs(study, echo=print):
  """(tasks, feature net, Inception net or None), built once per process."""
  key = (study.dataset, study.data_dir, json.dumps(applications_settings(study).to_dict()))
  if key not in _TASKS:
    from vaegan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    from vaegan_jax.applications import benchmark  # pylint: disable=g-import-not-at-top
    from vaegan_jax.metrics import feature_net  # pylint: disable=g-import-not-at-top
    images, labels = input_pipeline.load_split(study.dataset, 'test', study.data_dir or None)
    incep = None
    if study.get('features', 'own') == 'inception':
      from vaegan_jax.metrics import inception  # pylint: disable=g-import-not-at-top
      incep = inception.load(study.get('inception_weights', '') or None)
    tasks = benchmark.make_tasks(images, labels, applications_settings(study))
    _TASKS.clear()
    _TASKS[key] = (tasks, feature_net.get(study.dataset, study.data_dir or None), incep)
  return _TASKS[key]


def applications_done(workdir: str, study) -> bool:
  """applications.json of the final checkpoint with the study's protocol present."""
  result = _read_json(os.path.join(workdir, APPLICATIONS_FILE))
  return (bool(result) and result.get('step') == study.num_steps
          and result.get('settings') == applications_settings(study).to_dict()
          and result.get('inception', False) == (study.get('features', 'own') == 'inception'))


def applications_family(study, out: str, family: str, echo=print):
  """The applications benchmark of every run of `family` lacking it
  (RUN/applications.json, and the first restored images for the figure)."""
  if not study.get('applications', False):
    return
  import numpy as np  # pylint: disable=g-import-not-at-top
  import vaegan_jax  # pylint: disable=g-import-not-at-top
  from vaegan_jax.applications import benchmark  # pylint: disable=g-import-not-at-top
  for s in range(study.seeds):
    workdir = run_dir(out, family, s)
    if diverged(workdir) or applications_done(workdir, study):
      continue
    tasks, net, incep = _applications_inputs(study, echo)
    echo(f'{family}: applications benchmark of seed {s}.')
    model = vaegan_jax.load(workdir, study.num_steps)
    result = benchmark.evaluate(model, tasks, net, incep, keep_examples=FIGURE_EXAMPLES,
                                echo=echo)
    examples = result.pop('examples')
    np.savez(os.path.join(workdir, APPLICATIONS_EXAMPLES),
             **{k: np.asarray(v) for k, v in examples.items() if v is not None})
    result.update(step=study.num_steps, inception=incep is not None)
    _write_json(os.path.join(workdir, APPLICATIONS_FILE), result)


def applications_baselines(study, out: str, echo=print):
  """The classical restorations of the same damaged images, once per study
  (OUT/applications_baselines.json and the figure's images)."""
  if not study.get('applications', False):
    return
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vaegan_jax.applications import benchmark  # pylint: disable=g-import-not-at-top
  path = os.path.join(out, BASELINES_FILE)
  settings = applications_settings(study).to_dict()
  if (_read_json(path) or {}).get('settings') == settings:
    return
  tasks, net, _ = _applications_inputs(study, echo)
  echo('Applications: the classical baselines on the same damaged images.')
  rows = benchmark.evaluate_baselines(tasks, net, keep_examples=FIGURE_EXAMPLES)
  arrays = {'clean': tasks.clean[:FIGURE_EXAMPLES]}
  for name, row in rows.items():
    arrays.update({f'{name}/{k}': np.asarray(v) for k, v in row.pop('examples').items()})
  np.savez(os.path.join(out, BASELINES_EXAMPLES), **arrays)
  _write_json(path, {'settings': settings, 'rows': rows})


def measure_speed(study, out: str, family: str, echo=print):
  """Images/s of the seeds vmapped vs one by one; cached in OUT/speed.json."""
  from vaegan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from vaegan_jax import vmap_seeds  # pylint: disable=g-import-not-at-top
  path = os.path.join(out, SPEED_FILE)
  speeds = _read_json(path, {})
  key = {'batch_size': study.batch_size, 'num_seeds': study.seeds,
         'steps_timed': study.speed_steps}
  if family in speeds and all(speeds[family].get(k) == v for k, v in key.items()):
    return speeds[family]
  if study.seeds < 2 or study.speed_steps < 1:
    return None
  echo(f'{family}: timing {study.seeds} seeds vmapped vs one by one '
       f'({study.speed_steps} steps each way, twice).')
  config = run_config(study, family, 0)
  images, labels = input_pipeline.load_split(study.dataset, 'train', study.data_dir or None)
  result = vmap_seeds.speed(config, range(study.seeds), images, labels, study.speed_steps)
  result['load_average'] = _load_average()
  speeds[family] = result
  _write_json(path, speeds)
  return result


def _load_average():
  try:
    return list(os.getloadavg())
  except OSError:
    return None


# ---------------------------------------------------------------------------
# Collecting results.
# ---------------------------------------------------------------------------


def param_counts(study, family: str) -> dict:
  """Parameters per network and in total (EMA copies and optimiser states
  not counted)."""
  import jax  # pylint: disable=g-import-not-at-top
  from vaegan_jax import families  # pylint: disable=g-import-not-at-top
  config = run_config(study, family, 0)
  fam = families.get(family_of(family))
  abstract = jax.eval_shape(functools.partial(fam.init_state, config), jax.random.PRNGKey(0))
  counts = {name: int(sum(x.size for x in jax.tree.leaves(p)))
            for name, p in abstract.params.items()}
  counts['total'] = sum(counts.values())
  return counts


def read_metrics(workdir: str):
  """(train rows, eval rows) of WORKDIR/metrics.jsonl, the last row per step
  (a resumed run logs some steps twice)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  train_rows, eval_rows = {}, {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        row = json.loads(line)
        is_eval = any(k.startswith('eval/') for k in row)
        (eval_rows if is_eval else train_rows)[row['step']] = row
  return ([train_rows[s] for s in sorted(train_rows)],
          [eval_rows[s] for s in sorted(eval_rows)])


# Training-time evaluations kept as curves (quality against compute).
CURVE_KEYS = ('fid', 'precision', 'recall', 'coverage', 'modes_covered')


def curves(workdir: str, loss_keys, batch_size: int) -> dict:
  """Training curves of a run: the losses at every logged step; FID,
  precision, recall, coverage and modes at every evaluation, with the
  training seconds spent up to it (convergence.train_seconds)."""
  import convergence  # pylint: disable=g-import-not-at-top
  train_rows, eval_rows = read_metrics(workdir)
  out = {'step': [r['step'] for r in train_rows]}
  for k in loss_keys:
    out[k] = [r.get(k) for r in train_rows]
  out['images_per_s'] = [r.get('images_per_s') for r in train_rows]
  evals = [r for r in eval_rows if 'eval/fid' in r]
  out['eval_step'] = [r['step'] for r in evals]
  for k in CURVE_KEYS:
    out[k] = [r.get(f'eval/{k}') for r in evals]
  out['train_seconds'] = convergence.train_seconds(out['step'], out['images_per_s'],
                                                   batch_size, out['eval_step'])
  return out


def ladder_verdicts() -> dict | None:
  """The metric ladder's verdicts (experiments/metric_sanity.py): which
  metric passed, for which feature net; None where it was not run."""
  path = os.path.join(ROOT, 'experiments', 'results', 'metric_sanity', 'results.json')
  sanity = _read_json(path)
  if not sanity:
    return None
  return {'passed': sanity['passed'], 'feature_net_sha256': sanity['feature_net']['sha256'],
          'feature_map': sanity['feature_net'].get('feature_map', ''),
          'source': os.path.relpath(path, ROOT)}


def train_images_per_s(workdir: str, group_size: int) -> float | None:
  """Median logged training throughput after the first interval (which holds
  the compilation); times `group_size` for vmapped seeds (all seeds' images)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rows, _ = read_metrics(workdir)
  values = [r['images_per_s'] for r in rows[1:] if 'images_per_s' in r]
  if not values:
    values = [r['images_per_s'] for r in rows if 'images_per_s' in r]
  return float(np.median(values)) * group_size if values else None


def mean_std(values):
  import numpy as np  # pylint: disable=g-import-not-at-top
  values = [v for v in values if v is not None]
  if not values:
    return None, None
  a = np.asarray(values, np.float64)
  return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def collect(study, out: str) -> dict:
  """results.json from the run directories (and OUT/speed.json)."""
  import convergence  # pylint: disable=g-import-not-at-top
  from vaegan_jax import families  # pylint: disable=g-import-not-at-top
  speeds = _read_json(os.path.join(out, SPEED_FILE), {})
  result = {'families': {}, 'speed': {}}
  for family in entries(study):
    fam = families.get(family_of(family))
    runs = {}
    for s in range(study.seeds):
      workdir = run_dir(out, family, s)
      metrics = _read_json(os.path.join(workdir, EVAL_FILE))
      stopped = diverged(workdir)
      if stopped:  # No final checkpoint: no final metrics; collapsed.
        metrics = {'diverged_step': stopped['step'], 'fid': None}
      if not metrics:
        raise UserError(f'Run {workdir} has no {EVAL_FILE}; rerun the study without '
                        '--report_only to finish it.')
      timing = _read_json(os.path.join(workdir, TIMING_FILE), {'sessions': []})
      sessions = timing['sessions']
      group = sessions[-1]['group_size'] if sessions else 1
      run = dict(metrics)
      run['wall_seconds'] = sum(x['wall_seconds'] for x in sessions) or None
      run['train_mode'] = sessions[-1]['mode'] if sessions else 'unknown'
      run['resumed'] = any(x['start_step'] > 0 for x in sessions)
      run['train_images_per_s'] = train_images_per_s(workdir, group)
      run['curves'] = curves(workdir, fam.CONSOLE_METRICS, study.batch_size)
      run['collapsed'] = convergence.collapsed(run)
      apps_result = _read_json(os.path.join(workdir, APPLICATIONS_FILE))
      if apps_result and not stopped:
        run.update({f'app/{k}': v for k, v in apps_result['metrics'].items()})
        run['app_inpaint_methods'] = apps_result['inpaint_methods']
      runs[str(s)] = run
    numeric = sorted({k for r in runs.values() for k, v in r.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)})
    stats = {k: mean_std([r.get(k) for r in runs.values()]) for k in numeric}
    run_curves = [r['curves'] for r in runs.values()]
    result['families'][family] = {
        'config': _read_json(os.path.join(run_dir(out, family, 0), 'config.json')),
        'params': param_counts(study, family),
        'runs': runs,
        'mean': {k: v[0] for k, v in stats.items()},
        'std': {k: v[1] for k, v in stats.items()},
        'loss_keys': list(fam.CONSOLE_METRICS),
        'convergence': convergence.convergence(run_curves, study.num_steps),
        'oscillation': convergence.oscillation(run_curves, study.num_steps),
        'collapsed_runs': sum(r['collapsed'] for r in runs.values()),
    }
    if family in speeds:
      result['speed'][family] = speeds[family]
  result['ladder'] = ladder_verdicts()
  baselines = _read_json(os.path.join(out, BASELINES_FILE))
  if baselines:
    result['applications'] = {'settings': baselines['settings'], 'baselines': {
        name: row['metrics'] for name, row in baselines['rows'].items()}}
  return result


def _git_commit() -> str:
  """The checkout's commit, '+dirty' when files differ from it; '' without git."""
  import subprocess  # pylint: disable=g-import-not-at-top
  try:
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, check=True,
                            capture_output=True, text=True, timeout=10).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'],
                           cwd=ROOT, check=True, capture_output=True, text=True,
                           timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return ''
  return commit + ('+dirty' if dirty else '')


def environment(commit: str | None = None) -> dict:
  """Versions and machine; `commit`: the checkout the study started from
  (default: now)."""
  import jax  # pylint: disable=g-import-not-at-top
  return {'jax': jax.__version__, 'backend': jax.default_backend(),
          'devices': jax.device_count(), 'cpu_count': os.cpu_count(),
          'python': platform.python_version(), 'machine': platform.machine(),
          'git_commit': _git_commit() if commit is None else commit}


# ---------------------------------------------------------------------------
# Grids.
# ---------------------------------------------------------------------------


def write_grids(study, out: str, echo=print) -> dict:
  """Sample grids (every family and seed) and reconstruction grids (families
  with an encoder, seed 0), as uint8 arrays for report.py to draw.

  Returns:
    {'samples': {family: [uint8 grid per seed]}, 'reconstructions':
     {'inputs': grid, family: grid}}.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import vaegan_jax  # pylint: disable=g-import-not-at-top
  from vaegan_jax import viz  # pylint: disable=g-import-not-at-top
  from vaegan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  echo('Drawing the sample and reconstruction grids.')
  test_images, test_labels = input_pipeline.load_split(study.dataset, 'test',
                                                       study.data_dir or None)
  inputs = input_pipeline.to_float(test_images[:36])
  grids = {'samples': {}, 'reconstructions': {'inputs': viz.make_grid(inputs)}}
  for family in entries(study):
    grids['samples'][family] = []
    for s in range(study.seeds):
      if diverged(run_dir(out, family, s)):
        grids['samples'][family].append(None)  # No final checkpoint to sample.
        continue
      model = vaegan_jax.load(run_dir(out, family, s), study.num_steps)
      x = model.sample(jax.random.PRNGKey(GRID_KEY), 36,  # Conditional: classes 0, 1, ...
                       (jax.numpy.arange(36) % model.num_classes) if model.num_classes else None)
      grids['samples'][family].append(viz.make_grid(jax.device_get(x)))
      if model.has_encoder and family not in grids['reconstructions']:  # First finished seed.
        grids['reconstructions'][family] = viz.make_grid(
            jax.device_get(model.reconstruct(
                inputs, test_labels[:36] if model.num_classes else None)))
  grids['applications'] = application_examples(study, out)
  return grids


# The figure's rows: (setting, which kind of baseline restores it).
FIGURE_SETTINGS = (('gaussian_0.25', 'denoise'), ('salt_pepper_0.3', 'denoise'),
                   ('center_0.5', 'inpaint'), ('blocks_0.25', 'inpaint'))


def application_examples(study, out: str) -> dict | None:
  """One damaged test image per task (row i shows image i), restored by each
  family (its seed-0 run, or the first that finished) and each baseline.

  Returns:
    {'images': rows x columns of uint8 (H, W, C) or None (n/a), 'row_titles',
    'col_titles'}, or None without the applications' files.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vaegan_jax import viz  # pylint: disable=g-import-not-at-top
  from vaegan_jax.applications import baselines as baselines_lib  # pylint: disable=g-import-not-at-top
  from vaegan_jax.applications import benchmark  # pylint: disable=g-import-not-at-top
  path = os.path.join(out, BASELINES_EXAMPLES)
  if not study.get('applications', False) or not os.path.exists(path):
    return None
  with np.load(path) as f:
    base = dict(f)
  fams = {}
  for family in entries(study):
    for s in range(study.seeds):
      p = os.path.join(run_dir(out, family, s), APPLICATIONS_EXAMPLES)
      if os.path.exists(p) and not diverged(run_dir(out, family, s)):
        with np.load(p) as f:
          fams[family] = dict(f)
        break
  names = list(baselines_lib.DENOISERS) + list(baselines_lib.INPAINTERS)
  cols = ['clean', 'damaged'] + list(entries(study)) + [baselines_lib.TITLES[n] for n in names]
  rows, titles = [], []
  for i, (setting, task) in enumerate(FIGURE_SETTINGS):
    if f'{benchmark.DAMAGED}/{setting}' not in base:
      continue
    k = i % len(base['clean'])
    cell = lambda a: None if a is None else viz.to_uint8(a[k])
    row = [cell(base['clean']), cell(base[f'{benchmark.DAMAGED}/{setting}'])]
    row += [cell(fams.get(f, {}).get(setting)) for f in entries(study)]
    row += [cell(base.get(f'{n}/{setting}')) for n in names]
    rows.append(row)
    titles.append(setting.replace('_', ' '))
  return {'images': rows, 'row_titles': titles, 'col_titles': cols} if rows else None


# ---------------------------------------------------------------------------
# The study.
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def compilation_cache(directory: str):
  """JAX's persistent compilation cache in `directory` while the study runs:
  it compiles the same functions many times (per seed, for evaluation, for
  timing), and a rerun compiles nothing it compiled before. Left alone if the
  user set a cache directory already."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache as cc  # pylint: disable=g-import-not-at-top
  if jax.config.jax_compilation_cache_dir:
    yield
    return
  min_time = jax.config.jax_persistent_cache_min_compile_time_secs
  os.makedirs(directory, exist_ok=True)
  cc.reset_cache()
  cc.set_cache_dir(directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  try:
    yield
  finally:
    cc.reset_cache()
    cc.set_cache_dir(None)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', min_time)


def record_stopped_session(results_path: str, session: dict):
  """Appends the record of a session that stopped with an error to
  RESULTS_PATH's sessions (creating the file if needed), so that the report's
  study time still counts the training it did; the next complete session
  rewrites every other field."""
  results = _read_json(results_path, {})
  results['sessions'] = results.get('sessions', []) + [session]
  _write_json(results_path, results)


class _StageTimer:
  """Seconds spent per stage and family, for results.json."""

  def __init__(self):
    self.seconds = {}

  def run(self, stage, family, fn, *args, **kwargs):
    t0 = time.time()
    try:
      return fn(*args, **kwargs)
    finally:
      key = f'{stage}/{family}'
      self.seconds[key] = self.seconds.get(key, 0.0) + time.time() - t0


def run_study(study, out: str, report_only: bool = False, echo=print) -> dict:
  """Trains, evaluates and reports; returns the results dict (results.json)."""
  import report  # pylint: disable=g-import-not-at-top
  check_study(study)
  out = os.path.abspath(out)
  os.makedirs(out, exist_ok=True)
  t0, cpu0 = time.time(), time.process_time()
  timer = _StageTimer()
  load_start = _load_average()
  # The checkout as this process loaded it: commits made while the study runs
  # are not the code it ran.
  commit = _git_commit()
  results_path = os.path.join(out, RESULTS)
  have_runs = os.path.isdir(os.path.join(out, 'runs'))
  if report_only and not have_runs:
    results = _read_json(results_path)
    if results is None or 'families' not in results:
      raise UserError(f'--report_only: no runs and no complete {RESULTS} in {out}.')
    report.write(results, out)
    echo(f'Wrote {os.path.join(out, report.REPORT)} from {results_path}.')
    return results
  if not have_runs and os.path.exists(results_path):
    # A new study where an earlier one's results lie (e.g. the committed
    # report, rerun from a fresh checkout): that study's sessions are not this
    # one's time.
    old = _read_json(results_path, {})
    if old.get('sessions'):
      _write_json(results_path, {**old, 'sessions': []})

  def session(**extra):
    return {'seconds': time.time() - t0, 'load_average_start': load_start,
            'load_average_end': _load_average(), 'report_only': report_only,
            'stage_seconds': timer.seconds, 'cpu_seconds': time.process_time() - cpu0,
            'git_commit': commit, **extra}

  with compilation_cache(os.path.join(out, 'runs', 'jax_cache')):
    try:
      if not report_only:
        for family in progress.iterate(entries(study), 'study: train, evaluate', unit='run'):
          timer.run('train', family, train_family, study, out, family, echo)
          timer.run('evaluate', family, evaluate_family, study, out, family, echo)
          timer.run('applications', family, applications_family, study, out, family, echo)
        timer.run('applications', 'baselines', applications_baselines, study, out, echo)
        for family in progress.iterate(entries(study), 'study: speed', unit='run'):
          timer.run('speed', family, measure_speed, study, out, family, echo)
    except BaseException as e:  # Ctrl-C included: the session's time still counts.
      record_stopped_session(results_path, session(stopped=f'{type(e).__name__}: {e}'[:300]))
      raise
    results = collect(study, out)
    grids = timer.run('grids', 'all', write_grids, study, out, echo)
  previous = _read_json(results_path, {})
  results['study'] = json.loads(study.to_json_best_effort())
  results['environment'] = environment(commit)
  results['sessions'] = previous.get('sessions', []) + [session()]
  report.write(results, out, grids)
  _write_json(results_path, results)
  echo(f'Wrote {results_path} and {os.path.join(out, report.REPORT)} '
       f'({time.time() - t0:.0f} s).')
  return results


class _DropOrbaxReadNotices(logging.Filter):
  """Orbax warns about every read-only manager it opens; evaluating and
  drawing from finished runs opens many."""

  def filter(self, record):
    message = record.getMessage()
    return not ('orbax' in record.pathname and record.levelno <= logging.WARNING and
                ('read_only' in message or 'read only' in message or
                 'Metadata file does not exist' in message))


def main(argv):
  if len(argv) > 1:
    raise UserError(f'Unexpected arguments: {" ".join(argv[1:])}')
  kernels.setup()
  study = FLAGS.config
  out = FLAGS.out or os.path.join(ROOT, study.out)  # config.out is relative to the repo.
  logging.getLogger('absl').addFilter(_DropOrbaxReadNotices())
  if study.get('keep_host_memory', True):
    from vaegan_jax import host_memory  # pylint: disable=g-import-not-at-top
    host_memory.keep_freed_memory()  # As vaegan_jax.main does for training.
  t0 = time.time()

  def echo(message):
    minutes, seconds = divmod(int(time.time() - t0), 60)
    print(f'[{minutes:02d}:{seconds:02d}] {message}', flush=True)

  run_study(study, out, FLAGS.report_only, echo=echo)


if __name__ == '__main__':
  from vaegan_jax import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run(main)
