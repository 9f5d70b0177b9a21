"""Sample-quality, diversity, reconstruction and likelihood metrics of a model.

The distribution metrics without a suffix are computed in the feature space
of the project's own classifier (`feature_net`), trained on the dataset's
train split; those ending in `_inception` (optional) in the FID Inception's
(`inception`), with the same functions. They
follow the published formulas (FID, KID, improved precision/recall,
density/coverage, Inception-Score formula, mode counts) but are *not*
"Inception FID": values are comparable only within this project, for the
same dataset, feature net and number of samples (FID is biased upwards for
small sample counts).

    evaluator = generative.Evaluator(config, family, test_images, mesh)
    metrics = evaluator(state, num_samples=10000)   # flat dict of floats

Keys:
  fid, kid, kid_std, precision, recall, density, coverage, classifier_score,
  modes_covered, class_kl        generated samples vs the reference images
  recon_mse, psnr                families with an encoder (`reconstruct`)
  elbo, nll_nats, bits_per_dim   the VAE (IWAE with k = iwae_k; k = 0 skips;
                                 not computed for the conditional VAE)
  fid_inception, kid_inception, kid_inception_std, is_inception,
  is_inception_std, precision_inception, recall_inception,
  density_inception, coverage_inception
                                 with an `inception_net` (the literature's
                                 feature space; `inception_metrics`)
  cond_accuracy, intra_fid       class-conditional models (`conditional_metrics`)

Samples are drawn with `family.sample` in jitted batches split over the
'data' axis of the mesh (every device of every process, like training
batches), featurised in the same jitted, sharded batches (the Inception
network in chunks of `inception_batch` images spread over every device,
`sharding.map_chunks`), and the (N, D) features of all batches come back to
the host in one gather (`sharding.gather`), the same in every process.
The reference images are featurised the same way (`sharding.map_batches`).
The latents are drawn from a fixed key, so evaluations at different steps use
the same draws; the results do not depend on the number of devices or
processes (up to float rounding).
"""

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from vaegan_jax import families
from vaegan_jax import input_pipeline
from vaegan_jax import progress
from vaegan_jax import sharding
from vaegan_jax.families import conditional
from vaegan_jax.metrics import backbones
from vaegan_jax.metrics import distances
from vaegan_jax.metrics import feature_net as feature_net_lib
from vaegan_jax.metrics import inception as inception_lib
from vaegan_jax.metrics import likelihood

_SAMPLE_KEY = backbones.SAMPLE_KEY  # Fixed purpose: the same latents at every evaluation.
_MIN_BATCH = backbones.MIN_BATCH    # Sample/featurise at least this many images per call.
_INCEPTION_OUTPUTS = ('pool3', 'logits', 'logits_unbiased')  # FIDInceptionV3's.

METRIC_KEYS = ('fid', 'kid', 'kid_std', 'precision', 'recall', 'density',
               'coverage', 'classifier_score', 'modes_covered')


distribution_metrics = distances.distribution_metrics  # One copy for every backbone.


def feature_metrics(real_feats, fake_feats, fake_probs, num_classes: int,
                    kid_subsets: int = 100, kid_subset_size: int = 1000) -> dict:
  """Distribution metrics of fake vs real features, as a flat dict of floats.

  Args:
    real_feats: reference features, (N, D).
    fake_feats: features of generated (or any other) images, (M, D).
    fake_probs: the classifier's probabilities for those images, (M, K).
    num_classes: K.
    kid_subsets: subset pairs for KID.
    kid_subset_size: images per KID subset (clipped to min(N, M)).

  Returns:
    `distribution_metrics` (fid, kid, kid_std, precision, recall, density,
    coverage) and classifier_score, modes_covered, class_kl.
  """
  out = distribution_metrics(real_feats, fake_feats, '', kid_subsets, kid_subset_size)
  modes = distances.mode_coverage(fake_probs, num_classes)
  out.update(classifier_score=float(distances.classifier_score(fake_probs)),
             modes_covered=float(modes['modes_covered']), class_kl=float(modes['class_kl']))
  return out


def inception_metrics(real_pool3, fake_pool3, fake_logits_unbiased) -> dict:
  """The literature's Inception metrics of samples vs reference images.

  Args:
    real_pool3: Inception pool3 features of the reference images, (N, 2048).
    fake_pool3: pool3 features of the samples, (M, 2048).
    fake_logits_unbiased: the samples' bias-free logits, (M, 1008).

  Returns:
    fid_inception, kid_inception, kid_inception_std, precision_inception,
    recall_inception, density_inception, coverage_inception (as
    `distribution_metrics`) and is_inception, is_inception_std (mean and std
    over 10 splits, `inception.inception_score`).
  """
  out = distribution_metrics(real_pool3, fake_pool3, suffix='_inception')
  out['is_inception'], out['is_inception_std'] = inception_lib.inception_score(
      fake_logits_unbiased, splits=min(10, len(fake_logits_unbiased)))
  return out


def conditional_metrics(real_feats, real_labels, fake_feats, fake_probs, fake_labels,
                        num_classes: int) -> dict:
  """How well samples follow their requested class.

  cond_accuracy: the fraction of generated images that the feature network
    classifies as the class they were generated for (chance: 1 / K).
  cond_accuracy/<k>: the same per requested class k.
  intra_fid: FID between the generated and the reference images of each class,
    averaged over the classes (Miyato & Koyama 2018, §5); with few samples
    per class it is biased upwards, like any FID.

  Args:
    real_feats, real_labels: reference features (N, D) and their labels (N,).
    fake_feats, fake_probs, fake_labels: features (M, D), probabilities
      (M, K) and requested labels (M,) of the generated images.
    num_classes: K.
  """
  pred = np.argmax(fake_probs, axis=-1)
  out = {'cond_accuracy': float(np.mean(pred == fake_labels))}
  fids = []
  for k in range(num_classes):
    fake_k, real_k = fake_labels == k, real_labels == k
    if not fake_k.any():
      continue
    out[f'cond_accuracy/{k}'] = float(np.mean(pred[fake_k] == k))
    if fake_k.sum() >= 2 and real_k.sum() >= 2:
      fids.append(float(distances.frechet_distance(
          *distances.feature_stats(real_feats[real_k]),
          *distances.feature_stats(fake_feats[fake_k]))))
  out['intra_fid'] = float(np.mean(fids)) if fids else float('nan')
  return out


has_encoder = families.has_encoder  # The family facts, defined once.
has_likelihood = families.has_likelihood


class Evaluator:
  """Computes the metric dict of a model state; built once, called per eval.

  Building loads (or, once per dataset, trains) the feature network and
  featurises the reference images, so later calls only sample and compare.
  """

  def __init__(self, config, family, test_images: np.ndarray, mesh=None,
               net: feature_net_lib.FeatureNetwork | None = None,
               reference_images: np.ndarray | None = None,
               iwae_k: int | None = None, batch_size: int | None = None,
               inception_net=None, inception_reference: np.ndarray | None = None,
               test_labels: np.ndarray | None = None, sample_metrics: bool = True):
    """Args:
      config: the run's config.
      family: the family module (`families.get(config.model.family)`).
      test_images: uint8 (N, H, W, C) test split: reconstruction and
        likelihood inputs, and the reference set unless `reference_images`.
      mesh: device mesh; default `sharding.make_mesh()`.
      net: feature network; default `feature_net.get(config.data.name)`.
      reference_images: uint8 images the samples are compared with; default
        `test_images`.
      iwae_k: importance samples for the VAE likelihood; default
        `config.eval.iwae_k` (100); 0 skips likelihood metrics.
      batch_size: images per jitted call; default the train batch size times
        the smallest factor that reaches 256.
      inception_net: an `inception.InceptionNetwork`; with it every call also
        returns `inception_metrics` of the same samples (quantised to uint8)
        against `inception_reference`.
      inception_reference: pool3 features of the reference images, (N, 2048).
      test_labels: int32 (N,) labels of `test_images`: the class-conditional
        reconstructions use them, and the intra-class FID compares each
        class with the reference images of that class (the reference set must
        then be `test_images`).
      sample_metrics: False = no feature network: only the metrics that need
        none (reconstruction and likelihood; `available_metrics`).
    """
    self.config, self.family = config, family
    self.mesh = mesh or sharding.make_mesh()
    self.data_sharding = sharding.data_sharding(self.mesh)
    eval_cfg = config.get('eval', {}) or {}
    self.iwae_k = int(eval_cfg.get('iwae_k', 100) if iwae_k is None else iwae_k)
    self.num_conditional_classes = conditional.num_classes(config)
    if self.num_conditional_classes:
      self.iwae_k = 0  # The IWAE code bounds log p(x), not the CVAE's log p(x|y).
      if test_labels is None or reference_images is not None:
        raise ValueError('A class-conditional model is evaluated with the labels of '
                         'its test images (test_labels) as the reference set.')
    self.test_labels = None if test_labels is None else np.asarray(test_labels, np.int32)
    train_bs = int(config.train.batch_size)
    self.batch_size = batch_size or train_bs * math.ceil(_MIN_BATCH / train_bs)
    if self.batch_size % self.mesh.devices.size:
      raise ValueError(f'batch_size {self.batch_size} does not split over '
                       f'{self.mesh.devices.size} devices.')
    self.sample_metrics = bool(sample_metrics)
    self.test_images = test_images
    ref = test_images if reference_images is None else reference_images
    self.num_reference = len(ref)
    self.net = self.real_feats = None
    self.num_classes = 0
    if self.sample_metrics:
      self.net = net or feature_net_lib.get(config.data.name,
                                            config.data.get('data_dir') or None)
      self.num_classes = self.net.num_classes
      self.real_feats, _ = self.net.compute(ref, self.batch_size, self.data_sharding)
    if (inception_net is None) != (inception_reference is None):
      raise ValueError('inception_net and inception_reference go together.')
    self.inception_net, self.inception_reference = inception_net, inception_reference
    n_dev = self.mesh.devices.size
    self.inception_batch = next(c for c in range(min(32, self.batch_size), 0, -1)
                                if self.batch_size % c == 0 and c % n_dev == 0)

    b = self.batch_size
    self._sample = jax.jit(lambda state, key: family.sample(config, state, key, b),
                           out_shardings=self.data_sharding)
    if self.num_conditional_classes:
      self._sample_class = jax.jit(
          lambda state, key, y: family.sample(config, state, key, b, y),
          out_shardings=self.data_sharding)
    if has_likelihood(family) and self.iwae_k > 0:
      self._likelihood_fn = likelihood.make_batch_fn(config, self.iwae_k, self.mesh)
    if has_encoder(family):
      repl = sharding.replicated(self.mesh)

      def recon_sums(state, x, y, mask):
        recon = (family.reconstruct(config, state, x) if y is None
                 else family.reconstruct(config, state, x, y))
        err = jnp.square(x.astype(jnp.float32) - recon.astype(jnp.float32))
        per_image = jnp.mean(err.reshape(err.shape[0], -1), axis=1)
        psnr = 10.0 * jnp.log10(1.0 / jnp.maximum(per_image, 1e-10))  # distances.psnr
        return jnp.sum(mask * per_image), jnp.sum(mask * psnr)

      self._recon_sums = jax.jit(recon_sums, out_shardings=(repl, repl))
    if self.inception_net is not None:
      module, chunk, mesh = self.inception_net.module, self.inception_batch, self.mesh

      def incep(params, images):
        def one(x):  # Quantised to uint8 first, as saving samples to PNG would.
          x = jnp.clip(jnp.round(x.astype(jnp.float32) * 255.0), 0, 255).astype(jnp.uint8)
          out = module.apply({'params': params}, inception_lib.preprocess(x))
          return dict(zip(_INCEPTION_OUTPUTS, out))
        return sharding.map_chunks(one, images, chunk, mesh)

      self._inception = jax.jit(incep)

  def features(self, images) -> dict:
    """Device features of one sharded batch of images (B, H, W, C) in [0, 1]:
    {'feats': (B, D), 'probs': (B, K)} and, with an `inception_net`,
    'inception': {'pool3', 'logits', 'logits_unbiased'}; all split over 'data'."""
    f, p = self.net(images)
    out = {'feats': f, 'probs': p}
    if self.inception_net is not None:
      out['inception'] = self._inception(self.inception_net.params, images)
    return out

  def sample_features(self, state, num_samples: int, key=None):
    """Features and probabilities of `num_samples` model samples.

    Returns:
      (features (num_samples, D), probs (num_samples, K)), numpy float32;
      with an `inception_net` also its outputs on the same samples, a dict
      (see `InceptionNetwork.compute`), as a third element.
    """
    if key is None:
      key = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), _SAMPLE_KEY)
    outs = []
    steps = math.ceil(num_samples / self.batch_size)
    what = 'samples -> features' + (' (+ Inception)' if self.inception_net is not None else '')
    with progress.bar(num_samples, what, 'img') as bar:
      for i in range(steps):
        out = self.features(self._sample(state, jax.random.fold_in(key, i)))
        outs.append(sharding.await_if_needed(out))
        if bar.on:
          jax.block_until_ready(out)  # So that the bar follows the work.
        bar.update(min(self.batch_size, num_samples - i * self.batch_size))
    got = sharding.gather(outs, num_samples, self.mesh)
    if self.inception_net is None:
      return got['feats'], got['probs']
    return got['feats'], got['probs'], got['inception']

  def reconstruction(self, state) -> dict:
    """recon_mse (per pixel) and psnr (dB, mean over images) on the test split."""
    mse_sum = psnr_sum = 0.0
    count = 0
    labels = (self.test_labels if self.test_labels is not None
              else np.zeros((len(self.test_images),), np.int32))
    for batch, valid in progress.iterate(
        input_pipeline.eval_batches(self.test_images, labels, self.batch_size,
                                    self.data_sharding),
        'test images -> reconstructions',
        total=math.ceil(len(self.test_images) / self.batch_size), unit='batch'):
      sums = self._recon_sums(state, batch['image'], batch['label'] if
                              self.num_conditional_classes else None, batch['mask'])
      mse, psnr = sharding.to_host(sums)
      mse_sum += float(mse)
      psnr_sum += float(psnr)
      count += valid
    return {'recon_mse': mse_sum / count, 'psnr': psnr_sum / count}

  def class_sample_features(self, state, num_samples: int, key=None):
    """Features, probabilities and requested labels of `num_samples` samples of
    a conditional model, classes 0, 1, …, K-1 in equal shares (cycled).

    Returns:
      (features (M, D), probs (M, K), labels (M,)), numpy.
    """
    if key is None:
      key = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), _SAMPLE_KEY)
    k = self.num_conditional_classes
    labels = np.arange(num_samples) % k
    padded = np.resize(labels, math.ceil(num_samples / self.batch_size) * self.batch_size)
    outs = []
    for i in progress.iterate(range(len(padded) // self.batch_size),
                              'class-conditional samples -> features', unit='batch'):
      y = sharding.put(padded[i * self.batch_size:(i + 1) * self.batch_size].astype(np.int32),
                       self.data_sharding)
      images = self._sample_class(state, jax.random.fold_in(key, i), y)
      outs.append(sharding.await_if_needed(self.net(images)))
    feats, probs = sharding.gather(outs, num_samples, self.mesh)
    return feats, probs, labels

  def __call__(self, state, num_samples: int, key=None) -> dict:
    """The flat metric dict (Python floats) of `state`; see the module doc."""
    if num_samples < 6:
      raise ValueError(f'num_samples must be at least 6; got {num_samples}.')
    out = {}
    if self.sample_metrics:
      fake_feats, fake_probs, *incep = self.sample_features(state, num_samples, key)
      out.update(feature_metrics(self.real_feats, fake_feats, fake_probs, self.num_classes))
      if incep:
        out.update(inception_metrics(self.inception_reference, incep[0]['pool3'],
                                     incep[0]['logits_unbiased']))
    if self.sample_metrics and self.num_conditional_classes:
      feats, probs, labels = self.class_sample_features(state, num_samples, key)
      out.update(conditional_metrics(self.real_feats, self.test_labels, feats, probs,
                                     labels, self.num_conditional_classes))
    if has_encoder(self.family):
      out.update(self.reconstruction(state))
    if has_likelihood(self.family) and self.iwae_k > 0:
      out.update(likelihood.evaluate(
          self.config, state, self.test_images, k=self.iwae_k, mesh=self.mesh,
          batch_fn=self._likelihood_fn))
    return out


def evaluate(config, family, state, test_images, num_samples: int, mesh=None,
             **kwargs) -> dict:
  """One-shot `Evaluator(config, family, test_images, mesh, **kwargs)(state, num_samples)`,
  with the time taken under 'eval_seconds'."""
  t0 = time.time()
  out = Evaluator(config, family, test_images, mesh, **kwargs)(state, num_samples)
  out['eval_seconds'] = time.time() - t0
  return out


def available_metrics(family, evaluator) -> tuple:
  """The metric names a training-time evaluation of `family` reports besides
  the family's own eval metrics (elbo, recon, kl; d_real, d_fake; ...), given
  `training_evaluator`'s result (None = none)."""
  if evaluator is None:
    return ()
  out = list(METRIC_KEYS) if evaluator.sample_metrics else []
  if has_encoder(family):
    out += ['recon_mse', 'psnr']
  if has_likelihood(family) and evaluator.iwae_k > 0:
    out += ['nll_nats', 'bits_per_dim']
  bb = _backbone_of(evaluator)
  if bb is not None:  # config.eval.features: 'fid_inception', 'fd_dinov2', ...
    out += [bb.key(k) for k in METRIC_KEYS if k in _BACKBONE_KEYS]
  return tuple(out)


# The sample metrics a backbone (config.eval.features) reports too, under its
# own names (`backbones.Backbone.key`).
_BACKBONE_KEYS = ('fid', 'kid', 'kid_std', 'precision', 'recall', 'density', 'coverage')


def _backbone_of(evaluator):
  """The backbone of `evaluator`'s config.eval.features metrics, or None."""
  extra = getattr(evaluator, 'extra', None)
  return None if extra is None else extra.bb


# Where the asked-for best metric does not exist in a run: the first of these
# that does, per family (name, mode). The GAN has no metric without a feature
# network (D's scores rank nothing), so it keeps no best checkpoint then.
_BEST_FALLBACKS = (('nll_nats', 'min'), ('elbo', 'max'), ('psnr', 'max'))
_OPTIONAL_KEYS = ('recon_mse', 'psnr', 'nll_nats', 'bits_per_dim')  # Need no feature network.


def best_metric(config, family, evaluator) -> tuple:
  """(metric, mode) to keep the best checkpoint by: `config.eval.best_metric`
  where the run reports it, else the same metric in the backbone
  config.eval.features picked ('fid' -> 'fid_inception' / 'fd_dinov2'), else
  the first of `_BEST_FALLBACKS` that it does (each said once), else
  ('', mode) (said once). With
  `config.eval.generative_metrics` False, none by the metrics it turns off.

  The family's own eval metrics (`family.eval_step`'s names) always exist;
  the rest are `available_metrics(family, evaluator)`."""
  eval_cfg = config.get('eval', {}) or {}
  wanted, mode = eval_cfg.get('best_metric', ''), eval_cfg.get('best_mode', 'min')
  if not wanted:
    return '', mode
  if not eval_cfg.get('generative_metrics', True) and wanted in METRIC_KEYS + _OPTIONAL_KEYS:
    return '', mode  # Turned off on purpose: no best checkpoint by them.
  own = ('elbo', 'recon', 'kl') if has_likelihood(family) else ()
  exists = set(available_metrics(family, evaluator)) | set(own)
  if wanted in exists or wanted not in METRIC_KEYS + _OPTIONAL_KEYS:
    return wanted, mode  # Present, or a family metric checked at the first eval.
  why = ('no feature network for it' if wanted in METRIC_KEYS else 'this run does not compute it')
  bb = _backbone_of(evaluator)
  if bb is not None and wanted in _BACKBONE_KEYS and bb.key(wanted) in exists:
    # The same metric in the backbone config.eval.features picked.
    print(f'note: best checkpoint by {bb.key(wanted)} ({mode}) instead of '
          f'config.eval.best_metric={wanted!r} ({why} on {config.data.name}; '
          f'config.eval.features={bb.name!r}).', flush=True)
    return bb.key(wanted), mode
  for name, fallback_mode in _BEST_FALLBACKS:
    if name in exists:
      print(f'note: best checkpoint by {name} ({fallback_mode}) instead of '
            f'config.eval.best_metric={wanted!r} ({why} on {config.data.name}).', flush=True)
      return name, fallback_mode
  print(f'note: no best checkpoint: config.eval.best_metric={wanted!r} is not computed '
        f'({why} on {config.data.name}) and {config.model.family} has no other quality '
        f'metric without one.', flush=True)
  return '', mode


def training_evaluator(config, family, test_images, mesh, test_labels=None):
  """The evaluator for training-time evals, or None when they are off.

  Off when `config.eval.generative_metrics` is False. Without a feature
  network (a folder, a dataset without class labels to train one on, or one
  neither shipped nor cached yet: training never trains one, so a run cannot
  stall on it; a note gives the command) the evaluator reports only what needs
  none: reconstruction (recon_mse, psnr) and the likelihood (nll_nats,
  bits_per_dim); None for a family with neither (the GAN). The
  VAE's IWAE bound uses `config.eval.train_iwae_k` importance samples (default
  10): k = 100 costs about 20-40 s of CPU per evaluation of the mnist5k test
  split, the rest of the metrics about 2 s with 1000 samples.
  `config.eval.features` 'inception' or 'dinov2' adds that backbone's metrics
  (`backbones.training_metrics`) where its weights are at hand, against the
  test split; each set of sample metrics carries its protocol fields.
  """
  eval_cfg = config.get('eval', {}) or {}
  if not eval_cfg or not eval_cfg.get('generative_metrics', True):
    return None
  iwae_k = int(eval_cfg.get('train_iwae_k', 10))
  features = eval_cfg.get('features', 'own') or 'own'
  extra = backbones.training_metrics(config, family, test_images, mesh)
  net, why = None, ''
  hint = ('' if features != 'own' else ". Set config.eval.features='inception' (or 'dinov2') "
          'for FID there, after fetching the weights once with `python -m '
          'vaegan_jax.metrics.weights inception`')
  if input_pipeline.is_folder(config.data.name):
    why = (f'no sample metrics (FID, KID, ...) for {config.data.name}: feature networks '
           'exist only for the TFDS datasets so far' + hint)
  elif not input_pipeline.get_spec(config.data.name).num_classes:
    why = (f'no sample metrics (FID, KID, ...) for {config.data.name}: it has no class '
           "labels to train the project's feature network on" + hint)
  else:
    net = feature_net_lib.find(config.data.name)
    if net is None:  # Training it here could stall the run for a long time.
      why = (f'no sample metrics during training: no feature network for '
             f'{config.data.name} yet. Train it once with `python -m '
             f'vaegan_jax.metrics.feature_net --dataset={config.data.name}` (it is '
             f'cached), or let `python -m vaegan_jax.evaluate` do so')
  if net is not None:
    own = Evaluator(config, family, test_images, mesh, net=net, iwae_k=iwae_k,
                    test_labels=test_labels)
  else:
    without = has_encoder(family) or (has_likelihood(family) and iwae_k > 0)
    if extra is None:
      print(f'note: {why}; ' + ('reconstruction and likelihood metrics are reported.'
                                if without else 'the family\'s own eval metrics are reported.'),
            flush=True)
    own = (Evaluator(config, family, test_images, mesh, iwae_k=iwae_k,
                     test_labels=test_labels, sample_metrics=False) if without else None)
  if extra is None and (own is None or not own.sample_metrics):
    return own
  return backbones.TrainingEvaluator(own, extra)
