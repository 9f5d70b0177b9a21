"""Sample-quality, diversity, reconstruction and likelihood metrics of a model.

All distribution metrics are computed in the feature space of the project's
own classifier (`feature_net`), trained on the dataset's train split. They
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
  elbo, nll_nats, bits_per_dim   the VAE (IWAE with k = iwae_k; k = 0 skips)

Samples are drawn with `family.sample` in jitted batches split over the
'data' axis of the mesh (like training batches), featurised in the same
jitted, sharded batches, and only the (N, D) features come back to the host.
The latents are drawn from a fixed key, so evaluations at different steps use
the same draws.
"""

import math
import time

import jax
import numpy as np

from vaegan_jax import input_pipeline
from vaegan_jax import sharding
from vaegan_jax.metrics import distances
from vaegan_jax.metrics import feature_net as feature_net_lib
from vaegan_jax.metrics import likelihood

_SAMPLE_KEY = 0x5EED5  # Fixed purpose: the same latents at every evaluation.
_MIN_BATCH = 256       # Sample/featurise at least this many images per call.

METRIC_KEYS = ('fid', 'kid', 'kid_std', 'precision', 'recall', 'density',
               'coverage', 'classifier_score', 'modes_covered')


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
    fid, kid, kid_std (std over subsets), precision, recall (k = 3),
    density, coverage (k = 5), classifier_score, modes_covered, class_kl.
  """
  fid = distances.frechet_distance(*distances.feature_stats(real_feats),
                                   *distances.feature_stats(fake_feats))
  kid, kid_std = distances.kid(real_feats, fake_feats, num_subsets=kid_subsets,
                               subset_size=kid_subset_size)
  precision, recall = distances.precision_recall(real_feats, fake_feats, k=3)
  density, coverage = distances.density_coverage(real_feats, fake_feats, k=5)
  modes = distances.mode_coverage(fake_probs, num_classes)
  out = {'fid': fid, 'kid': kid, 'kid_std': kid_std, 'precision': precision,
         'recall': recall, 'density': density, 'coverage': coverage,
         'classifier_score': distances.classifier_score(fake_probs),
         'modes_covered': modes['modes_covered'], 'class_kl': modes['class_kl']}
  return {k: float(v) for k, v in jax.device_get(out).items()}


def has_encoder(family) -> bool:
  return hasattr(family, 'reconstruct')


def has_likelihood(family) -> bool:
  """Whether the family defines p(x) through the VAE's ELBO terms (the VAE;
  the VAE-GAN's decoder is trained adversarially and has no likelihood)."""
  return hasattr(family, 'elbo_terms') and hasattr(family, 'log_likelihood')


class Evaluator:
  """Computes the metric dict of a model state; built once, called per eval.

  Building loads (or, once per dataset, trains) the feature network and
  featurises the reference images, so later calls only sample and compare.
  """

  def __init__(self, config, family, test_images: np.ndarray, mesh=None,
               net: feature_net_lib.FeatureNetwork | None = None,
               reference_images: np.ndarray | None = None,
               iwae_k: int | None = None, batch_size: int | None = None):
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
    """
    self.config, self.family = config, family
    self.mesh = mesh or sharding.make_mesh()
    self.data_sharding = sharding.data_sharding(self.mesh)
    eval_cfg = config.get('eval', {}) or {}
    self.iwae_k = int(eval_cfg.get('iwae_k', 100) if iwae_k is None else iwae_k)
    train_bs = int(config.train.batch_size)
    self.batch_size = batch_size or train_bs * math.ceil(_MIN_BATCH / train_bs)
    if self.batch_size % self.mesh.devices.size:
      raise ValueError(f'batch_size {self.batch_size} does not split over '
                       f'{self.mesh.devices.size} devices.')
    self.net = net or feature_net_lib.get(config.data.name, config.data.get('data_dir') or None)
    self.num_classes = self.net.num_classes
    self.test_images = test_images
    ref = test_images if reference_images is None else reference_images
    self.real_feats, _ = self.net.compute(ref, self.batch_size, self.data_sharding)
    self.num_reference = len(ref)

    b = self.batch_size
    self._sample = jax.jit(lambda state, key: family.sample(config, state, key, b),
                           out_shardings=self.data_sharding)
    if has_encoder(family):
      self._reconstruct = jax.jit(lambda state, x: family.reconstruct(config, state, x),
                                  out_shardings=self.data_sharding)
    if has_likelihood(family) and self.iwae_k > 0:
      self._likelihood_fn = likelihood.make_batch_fn(config, self.iwae_k, self.mesh)

  def sample_features(self, state, num_samples: int, key=None):
    """Features and probabilities of `num_samples` model samples.

    Returns:
      (features (num_samples, D), probs (num_samples, K)), numpy float32.
    """
    if key is None:
      key = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), _SAMPLE_KEY)
    feats, probs = [], []
    for i in range(math.ceil(num_samples / self.batch_size)):
      images = self._sample(state, jax.random.fold_in(key, i))
      f, p = self.net(images)
      feats.append(f)
      probs.append(p)
    feats, probs = jax.device_get((feats, probs))
    return (np.concatenate(feats)[:num_samples], np.concatenate(probs)[:num_samples])

  def reconstruction(self, state) -> dict:
    """recon_mse (per pixel) and psnr (dB, mean over images) on the test split."""
    mse_sum = psnr_sum = 0.0
    count = 0
    labels = np.zeros((len(self.test_images),), np.int32)
    for batch, valid in input_pipeline.eval_batches(
        self.test_images, labels, self.batch_size, self.data_sharding):
      x = batch['image']
      recon = self._reconstruct(state, x)
      # Full batches share one compilation; only the padded last one differs.
      x, recon = (x, recon) if valid == len(x) else (x[:valid], recon[:valid])
      mse_sum += float(distances.mse(x, recon)) * valid
      psnr_sum += float(distances.psnr(x, recon)) * valid
      count += valid
    return {'recon_mse': mse_sum / count, 'psnr': psnr_sum / count}

  def __call__(self, state, num_samples: int, key=None) -> dict:
    """The flat metric dict (Python floats) of `state`; see the module doc."""
    if num_samples < 6:
      raise ValueError(f'num_samples must be at least 6; got {num_samples}.')
    fake_feats, fake_probs = self.sample_features(state, num_samples, key)
    out = feature_metrics(self.real_feats, fake_feats, fake_probs, self.num_classes)
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


def training_evaluator(config, family, test_images, mesh):
  """The Evaluator for training-time evals, or None when they are off.

  Off when `config.eval.generative_metrics` is False, when the dataset has no
  class labels to train the feature network on, or when its feature network
  is neither shipped nor cached yet: training never trains one, so a run
  cannot stall on it (a note gives the command). The
  VAE's IWAE bound uses `config.eval.train_iwae_k` importance samples (default
  10): k = 100 costs about 20-40 s of CPU per evaluation of the mnist5k test
  split, the rest of the metrics about 2 s with 1000 samples.
  """
  eval_cfg = config.get('eval', {}) or {}
  if not eval_cfg or not eval_cfg.get('generative_metrics', True):
    return None
  if input_pipeline.is_folder(config.data.name):
    print(f'note: no generative metrics for {config.data.name}: feature networks '
          'exist only for the TFDS datasets so far.', flush=True)
    return None
  if not input_pipeline.get_spec(config.data.name).num_classes:
    print(f'note: no generative metrics for {config.data.name}: it has no class labels '
          "to train the project's feature network on.", flush=True)
    return None
  net = feature_net_lib.find(config.data.name)
  if net is None:  # Training it here could stall the run for a long time.
    print(f'note: no generative metrics during training: no feature network for '
          f'{config.data.name} yet. Train it once with `python -m '
          f'vaegan_jax.metrics.feature_net --dataset={config.data.name}` (it is '
          f'cached), or let `python -m vaegan_jax.evaluate` do so.', flush=True)
    return None
  return Evaluator(config, family, test_images, mesh, net=net,
                   iwae_k=int(eval_cfg.get('train_iwae_k', 10)))
