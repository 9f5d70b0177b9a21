"""Metrics of a checkpoint: `python -m vaegan_jax.evaluate --workdir=DIR --out=FILE.json`.

Reads only the workdir (the stored config.json and a checkpoint) and the
dataset's test split, then writes one flat JSON object:

  fid, kid, kid_std, precision, recall, density, coverage, classifier_score,
  modes_covered, class_kl                        every family
  recon_mse, psnr                                families with an encoder
  elbo, nll_nats, bits_per_dim                   the VAE (IWAE, --iwae_k)
  cond_accuracy, cond_accuracy/<k>, intra_fid    class-conditional models
  step, num_samples, dataset, family, features, feature_net_sha256, eval_seconds
  protocol   {backbone: {backbone, weights_sha256, resize, num_samples,
              reference, num_reference}}: how every number was made
  lines      one line per backbone to paste into a paper, also printed last, e.g.
             FID-50k (Inception, pytorch_fid resize, vs cifar10 train 50000) = 9.01

The unsuffixed distribution metrics live in the feature space of the project's
own classifier (vaegan_jax/metrics/feature_net.py), not Inception-v3: compare
them only with numbers from this project, on the same dataset and with the
same --num_samples.

  --features=inception  also the literature's numbers, in the FID Inception's
      feature space: fid_inception, kid_inception(_std), is_inception(_std),
      precision_inception, recall_inception, density_inception,
      coverage_inception.
  --features=dinov2     also FD-DINOv2 (Stein et al. 2023): fd_dinov2,
      kd_dinov2(_std), precision_dinov2, recall_dinov2, density_dinov2,
      coverage_dinov2.
      Weights from --inception_weights / --dinov2_weights, the environment
      variables, or downloaded and checked once (vaegan_jax/metrics/weights.py).
      Default protocol: 50000 samples against the whole train split
      (--reference, --num_reference), resize per --resize; the reference
      features are cached in $VAEGAN_JAX_CACHE/fid_refs. Without a flag the
      run's config.eval.features decides. Folder datasets have no feature net
      of the project: only these backbones measure their samples (their
      reconstruction and likelihood metrics are reported all the same).

  --applications  also the applications benchmark (vaegan_jax/applications/
      benchmark.py; docs/evaluation.md "Applications benchmark"), under
      "applications": denoising, inpainting, reconstruction and perceptual
      path length of the model ("metrics", null where the family cannot take
      part) and of the classical baselines on the same damaged test images
      ("baselines"); the Inception PPL too with --features=inception.

  --step=N      a checkpoint in DIR/checkpoints (default: the latest);
  --step=best   the best checkpoint kept in DIR/checkpoints_best.

In several processes (--coordinator_address, --num_processes, --process_id,
as for training; vaegan_jax/distributed.py) sampling and features are split
over every device of every process; every process computes the same JSON and
process 0 writes --out.
"""

import functools
import json
import os
import sys

from absl import flags

from vaegan_jax import kernels
from vaegan_jax.errors import UsageError
from vaegan_jax.errors import UserError

FLAGS = flags.FLAGS
FEATURES = ('own', 'inception', 'dinov2')


def define_flags():
  flags.DEFINE_string('workdir', None, 'Run directory holding config.json and checkpoints/.')
  flags.DEFINE_string('step', '', "Checkpoint step; '' = the latest, 'best' = the best "
                      'kept in checkpoints_best/.')
  flags.DEFINE_integer('num_samples', 0, 'Model samples to compare with the reference; '
                       '0 = 10000, or 50000 with --features=inception.')
  flags.DEFINE_string('out', '', 'JSON file to write; the JSON is printed either way.')
  flags.DEFINE_integer('iwae_k', -1, 'Importance samples for the VAE likelihood; '
                       '-1 = config.eval.iwae_k (default 100), 0 = skip.')
  flags.DEFINE_string('data_dir', '', 'TFDS data_dir for the test split; default the '
                      'one stored in the run config.')
  flags.DEFINE_enum('features', '', ['', *FEATURES], "'own': the project's feature net "
                    "only; 'inception' / 'dinov2': also the FID Inception (*_inception) / "
                    "FD-DINOv2 (*_dinov2) metrics; '' = the run's config.eval.features.")
  flags.DEFINE_string('resize', '', 'Resize convention of --features=inception|dinov2: '
                      "pytorch_fid, clean, tf1, dgm_eval; '' = the backbone's default.")
  flags.DEFINE_string('inception_weights', '', "FID Inception weights at hand (pytorch-fid's "
                      '.pth or its converted .npz); default $VAEGAN_JAX_INCEPTION, else '
                      'downloaded and checked once into $VAEGAN_JAX_CACHE.')
  flags.DEFINE_string('dinov2_weights', '', 'DINOv2 ViT-L/14 weights at hand (the official '
                      '.pth or its .npz); default $VAEGAN_JAX_DINOV2, else downloaded once.')
  flags.DEFINE_enum('reference', 'train', ['train', 'test'], 'Split the Inception / '
                    'DINOv2 metrics compare with (the literature uses train).')
  flags.DEFINE_integer('num_reference', 0, 'Reference images for the Inception / DINOv2 '
                       'metrics; 0 = the whole split.')
  flags.DEFINE_bool('applications', False, 'Also measure restoration and interpolation '
                    '(denoising, inpainting, reconstruction, PPL) beside classical baselines.')


def load_state(workdir: str, step: str | int | None = None, mesh=None):
  """(config, family, state, step) of a checkpoint of `workdir`: `api.load`'s
  (the one way to open a run: its step parsing, 'best' and errors)."""
  from vaegan_jax import api  # pylint: disable=g-import-not-at-top
  model = api.load(workdir, step, mesh)
  return model.config, model.family, model.state, model.step


def run(workdir: str, num_samples: int | None = None, step: str | int | None = None,
        out: str = '', iwae_k: int = -1, data_dir: str = '', echo=print,
        features: str = '', inception_weights: str = '', reference: str = 'train',
        num_reference: int = 0, resize: str = '', dinov2_weights: str = '',
        applications: bool = False, applications_settings=None) -> dict:
  """Evaluates a checkpoint of `workdir`; returns (and optionally writes) the dict.

  `features` '' = the run's config.eval.features ('own' by default).
  `num_samples` None or 0: 10000, or 50000 with 'inception' / 'dinov2'. The
  other arguments are those of the flags of the same names.
  `applications`: also `run_applications` (with `applications_settings`, a
  `benchmark.Settings`, default the benchmark's protocol) under 'applications'.
  """
  import time  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from vaegan_jax import api  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  stored = api.load_config(workdir)
  features = features or (stored.get('eval') or {}).get('features', 'own') or 'own'
  if features not in FEATURES:
    raise UsageError(f"--features={features!r} must be one of {', '.join(FEATURES)}.")
  num_samples = num_samples or (10000 if features == 'own' else 50000)
  if num_samples < 10:
    raise UsageError(f'--num_samples={num_samples} is too small; use at least 10 '
                    '(FID and KID need many; 10000 is the usual count).')
  from vaegan_jax.metrics import backbones  # pylint: disable=g-import-not-at-top
  bb = None  # Weights first: a missing file fails before the slow work.
  if features != 'own':
    bb = backbones.get(features, resize, inception_weights if features == 'inception'
                       else dinov2_weights, echo=echo)
  elif resize:
    backbones.check_resize('own', resize)
  from vaegan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from vaegan_jax import sharding  # pylint: disable=g-import-not-at-top
  from vaegan_jax.metrics import generative  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh()
  config, family, state, chosen = load_state(workdir, step, mesh)
  echo(f'Evaluating the {config.model.family} checkpoint at step {chosen} of {workdir} '
       f'with {num_samples} samples.')
  name = config.data.name
  data_dir = data_dir or config.data.get('data_dir') or None
  size = config.data.get('image_size')
  test_images, test_labels = input_pipeline.load_split(
      name, 'test', data_dir, image_size=size, channels=input_pipeline.config_channels(config))
  result, protocol, lines = {}, {}, []
  evaluator = None
  if not input_pipeline.is_folder(name) and input_pipeline.get_spec(name).num_classes:
    evaluator = generative.Evaluator(
        config, family, test_images, mesh, iwae_k=None if iwae_k < 0 else iwae_k,
        test_labels=test_labels)
    result.update(evaluator(state, num_samples))
    own_bb = backbones.Backbone(f'own:{name}', f'own {name} feature net', '', 'none',
                                evaluator.net.metadata.get('sha256', ''), None)
    protocol[own_bb.name] = backbones.protocol(own_bb, num_samples, f'{name} test',
                                               evaluator.num_reference)
    lines.append(backbones.line(own_bb, result['fid'], protocol[own_bb.name]))
    result.update(num_reference=evaluator.num_reference,
                  feature_net_sha256=own_bb.weights_sha256)
    if evaluator.iwae_k and generative.has_likelihood(family):
      result['iwae_k'] = evaluator.iwae_k
  elif features == 'own':
    raise UserError(f'{name} has no feature net of the project (folder datasets and '
                    'unlabelled sets): use --features=inception or --features=dinov2 '
                    '(weights downloaded once).')
  elif generative.has_encoder(family) or generative.has_likelihood(family):
    # No feature net of the project: what needs none is reported all the same
    # (reconstruction; the VAE's ELBO and IWAE bound).
    result.update(generative.Evaluator(
        config, family, test_images, mesh, iwae_k=None if iwae_k < 0 else iwae_k,
        test_labels=test_labels, sample_metrics=False)(state, num_samples))
  if bb is not None:
    ref = backbones.reference_features(
        bb, name, reference, lambda: input_pipeline.load_split(
            name, reference, data_dir, image_size=size,
            channels=input_pipeline.config_channels(config))[0], num_reference or None, mesh,
        echo=echo)
    metrics = backbones.SampleMetrics(config, family, mesh, bb, ref, f'{name} {reference}')
    result.update(metrics(state, num_samples))
    protocol[bb.name] = metrics.protocol(num_samples)
    if bb.name == 'inception':  # The keys the study's report reads.
      result.update(inception_reference=reference,
                    num_inception_reference=protocol[bb.name]['num_reference'],
                    inception_source_sha256=bb.weights_sha256)
    lines.insert(0, backbones.line(bb, result[bb.fd_key], protocol[bb.name]))
  if applications:
    if evaluator is None:
      raise UserError(f'--applications needs the project\'s feature net, which {name} '
                      'lacks (folder datasets and unlabelled sets).')
    result['applications'] = run_applications(
        api.Model(workdir, int(chosen), config, family, state), test_images, test_labels,
        evaluator.net, bb.net if bb is not None and bb.name == 'inception' else None,
        applications_settings, echo)
  result.update(step=int(chosen), num_samples=int(num_samples), dataset=name,
                family=config.model.family, features=features, protocol=protocol,
                lines=lines, eval_seconds=round(time.time() - t0, 1))
  if out and jax.process_index() == 0:  # One writer in a multi-process job.
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
      json.dump(result, f, indent=2, sort_keys=True)
      f.write('\n')
    echo(f'Wrote {out}.')
  return result


def run_applications(model, test_images, test_labels, net, inception_net=None,
                     settings=None, echo=print) -> dict:
  """The applications benchmark of `model` (an api.Model) on the test split:
  `benchmark.evaluate`'s dict plus 'baselines', {name: metrics} of the
  classical restorations of the same damaged images."""
  from vaegan_jax.applications import benchmark  # pylint: disable=g-import-not-at-top
  tasks = benchmark.make_tasks(test_images, test_labels, settings or benchmark.Settings())
  echo(f'Applications benchmark on {len(tasks.clean)} test images.')
  out = benchmark.evaluate(model, tasks, net, inception_net, echo=echo)
  out['baselines'] = {name: row['metrics']
                      for name, row in benchmark.evaluate_baselines(tasks, net).items()}
  return out


def main(argv):
  if len(argv) > 1:
    raise UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS.workdir:
    raise UsageError('--workdir is required.')
  kernels.setup()
  from vaegan_jax import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize()
  result = run(FLAGS.workdir, FLAGS.num_samples, FLAGS.step, FLAGS.out, FLAGS.iwae_k,
               FLAGS.data_dir, echo=lambda m: print(m, file=sys.stderr, flush=True),
               features=FLAGS.features, inception_weights=FLAGS.inception_weights,
               reference=FLAGS.reference, num_reference=FLAGS.num_reference,
               resize=FLAGS.resize, dinov2_weights=FLAGS.dinov2_weights,
               applications=FLAGS.applications)
  print(json.dumps(result, indent=2, sort_keys=True), flush=True)
  for line in result['lines']:
    print(line, flush=True)


def cli_main():
  """The `vaegan-evaluate` command: the same as `python -m vaegan_jax.evaluate`."""
  from vaegan_jax import cli  # pylint: disable=g-import-not-at-top
  from vaegan_jax import distributed  # pylint: disable=g-import-not-at-top
  define_flags()
  distributed.define_flags()
  cli.run(main)


if __name__ == '__main__':
  cli_main()
