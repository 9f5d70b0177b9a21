"""The applications benchmark: restoration and interpolation of a trained
model, measured on the test split beside classical baselines.

    from vaegan_jax.applications import benchmark
    tasks = benchmark.make_tasks(test_images, test_labels)       # the damaged set
    result = benchmark.evaluate(model, tasks, net)               # a model (api.Model)
    rows = benchmark.evaluate_baselines(tasks, net)              # the classical rows

What is measured (every number a mean over the `num_images` test images, the
same images and the same damage for every model and baseline, fixed by
`Settings.seed`):

  denoise/<noise>/{psnr,ssim}      Gaussian noise (std 0.1, 0.25, 0.5) and
      salt-and-pepper (10 %, 30 % of the pixels), restored by reconstructing
      the noisy image (families with an encoder; `applications.denoise`);
  inpaint/<mask>/{psnr_hole,ssim_hole,psnr,ssim,fid}   a centre box (a
      quarter, a half of the side) and 4 random blocks (0.15, 0.25 of the
      side), filled as `python -m vaegan_jax.sample --mode=inpaint
      --inpaint_method=auto` does: by iterating the autoencoder
      (`inpaint_posterior`) for blocks when there is an encoder, else by
      latent optimisation (`inpaint_latent`, the GAN's way in); PSNR/SSIM on
      the hole (SSIM map averaged over the missing pixels) and on the whole
      image, and the FID of the inpainted set against the whole test split
      in the project's own feature space;
  reconstruct/{psnr,ssim}          x -> decode(encode(x)) (families with an encoder);
  ppl/own, ppl/inception (+ _std)  perceptual path length (metrics/ppl.py,
      torch-fidelity's definition, eps 1e-4) in the project's feature space,
      and in the FID Inception's where its weights are given.

A measure a model cannot take part in (the GAN has no encoder: no denoising,
no reconstruction) is None, "n/a" in tables. PSNR of identical images is
capped at 100 dB (metrics/ssim.py). The baselines (applications/baselines.py)
take the same damaged images; `damaged` is the damaged input left as it is
(noise kept, holes grey).
"""

import dataclasses
import time

import numpy as np

from vaegan_jax import applications as apps
from vaegan_jax.applications import baselines
from vaegan_jax.metrics import degradations
from vaegan_jax.metrics import ppl as ppl_lib
from vaegan_jax.metrics import ssim as ssim_lib

NOISE = (('gaussian', 0.1), ('gaussian', 0.25), ('gaussian', 0.5),
         ('salt_pepper', 0.1), ('salt_pepper', 0.3))
MASKS = (('center', 0.25), ('center', 0.5), ('blocks', 0.15), ('blocks', 0.25))
DENOISE_MEASURES = ('psnr', 'ssim')
INPAINT_MEASURES = ('psnr_hole', 'ssim_hole', 'psnr', 'ssim', 'fid')
OTHER_KEYS = ('reconstruct/psnr', 'reconstruct/ssim', 'ppl/own', 'ppl/own_std',
              'ppl/inception', 'ppl/inception_std')
DAMAGED = 'damaged'  # The baseline row of the damaged input, unrestored.
_LATENT_INIT = 4     # fold_in purpose of the latent optimisation's starts.


def setting_name(kind: str, level: float) -> str:
  """'gaussian_0.25', 'center_0.5', ..."""
  return f'{kind}_{level:g}'


@dataclasses.dataclass(frozen=True)
class Settings:
  """The benchmark's protocol.

  Attributes:
    num_images: test images damaged and restored (a seeded draw).
    seed: seeds the draw, the noise, the block positions and the latent starts.
    noise: (kind, level) pairs, `applications.NOISE_KINDS`.
    masks: (kind, side fraction) pairs, `applications.MASK_KINDS`.
    num_blocks: squares per 'blocks' mask.
    inpaint_steps: Adam steps of latent optimisation.
    restarts: random starts per image of latent optimisation (an encoder's
      posterior mean replaces the first).
    posterior_iters: iterations of the autoencoder for posterior inpainting.
    ppl_samples: latent pairs of the PPL in the project's feature space.
    ppl_inception_samples: pairs of the Inception PPL (299 x 299 inputs).
    epsilon: the PPL's step.
  """
  num_images: int = 256
  seed: int = 0
  noise: tuple = NOISE
  masks: tuple = MASKS
  num_blocks: int = 4
  inpaint_steps: int = 100
  restarts: int = 2
  posterior_iters: int = 100
  ppl_samples: int = 1000
  ppl_inception_samples: int = 200
  epsilon: float = ppl_lib.EPSILON

  def to_dict(self) -> dict:
    return {k: list(map(list, v)) if k in ('noise', 'masks') else v
            for k, v in dataclasses.asdict(self).items()}


def metric_keys(settings: Settings = Settings()) -> list[str]:
  """Every key of a model's metrics, in table order."""
  keys = [f'denoise/{setting_name(k, l)}/{m}' for k, l in settings.noise for m in DENOISE_MEASURES]
  keys += [f'inpaint/{setting_name(k, f)}/{m}' for k, f in settings.masks for m in INPAINT_MEASURES]
  return keys + list(OTHER_KEYS)


def inpaint_method(has_encoder: bool, mask_kind: str) -> str:
  """sample's --inpaint_method=auto: iterating the autoencoder fills scattered
  blocks well but barely beats a grey fill on a large centre hole, where
  fitting z to the observed pixels wins."""
  return 'posterior' if has_encoder and mask_kind != 'center' else 'latent'


# ---------------------------------------------------------------------------
# The damaged set.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Tasks:
  """The clean images and their damaged versions, shared by every model and baseline.

  Attributes:
    settings: the protocol.
    clean: float32 (N, H, W, C) in [0, 1].
    labels: int32 (N,) their labels, or None.
    noisy: {noise setting name: float32 (N, H, W, C)}.
    masks: {mask setting name: float32 (N, H, W, 1), 1 = observed}.
    reference_features: own features of the whole test split (N_test, D), the
      FID reference; set by `evaluate` / `evaluate_baselines` when missing.
  """
  settings: Settings
  clean: np.ndarray
  labels: np.ndarray | None
  noisy: dict
  masks: dict
  test_images: np.ndarray
  reference_features: np.ndarray | None = None

  def masked(self, name: str) -> np.ndarray:
    """The clean images with the `name` holes grey (applications.HOLE_VALUE)."""
    m = self.masks[name]
    return (m * self.clean + (1.0 - m) * apps.HOLE_VALUE).astype(np.float32)


def make_tasks(test_images, test_labels=None, settings: Settings = Settings()) -> Tasks:
  """Draws `settings.num_images` test images and damages them (deterministic)."""
  n = min(settings.num_images, len(test_images))
  idx = np.sort(degradations.draw(len(test_images), n, settings.seed))
  clean = degradations.as_float(np.asarray(test_images)[idx])
  _, h, w, _ = clean.shape
  noisy = {}
  for i, (kind, level) in enumerate(settings.noise):
    seed = settings.seed * 1000 + 1 + i
    if kind == 'gaussian':
      noisy[setting_name(kind, level)] = degradations.gaussian_noise(clean, level, seed)
    elif kind == 'salt_pepper':
      noisy[setting_name(kind, level)] = degradations.salt_and_pepper(clean, level, seed)
    else:
      raise ValueError(f'Unknown noise {kind!r}; known: {", ".join(apps.NOISE_KINDS)}.')
  masks = {}
  for i, (kind, fraction) in enumerate(settings.masks):
    if kind == 'center':
      masks[setting_name(kind, fraction)] = degradations.center_hole(n, h, w, fraction)
    elif kind == 'blocks':
      masks[setting_name(kind, fraction)] = degradations.block_holes(
          n, h, w, fraction, settings.seed * 1000 + 101 + i, settings.num_blocks)
    else:
      raise ValueError(f'Unknown mask {kind!r}; known: {", ".join(apps.MASK_KINDS)}.')
  labels = None if test_labels is None else np.asarray(test_labels)[idx].astype(np.int32)
  return Tasks(settings, clean, labels, noisy, masks, np.asarray(test_images))


def _reference(tasks: Tasks, net) -> np.ndarray:
  if tasks.reference_features is None:
    tasks.reference_features = net.compute(tasks.test_images)[0]
  return tasks.reference_features


# ---------------------------------------------------------------------------
# Measures.
# ---------------------------------------------------------------------------


def _fid(net, reference, images) -> float:
  from vaegan_jax.metrics import distances  # pylint: disable=g-import-not-at-top
  feats = net.compute(np.asarray(images, np.float32))[0]
  return float(distances.frechet_distance(*distances.feature_stats(reference),
                                          *distances.feature_stats(feats)))


def denoise_measures(clean, restored) -> dict:
  """{'psnr', 'ssim'}: means over the images."""
  return {'psnr': float(np.mean(ssim_lib.psnr(clean, restored))),
          'ssim': float(np.mean(ssim_lib.ssim(clean, restored)))}


def inpaint_measures(clean, restored, mask, net=None, reference=None) -> dict:
  """{'psnr_hole', 'ssim_hole', 'psnr', 'ssim', 'fid'}: means over the
  images; 'fid' of the restored set against `reference` features (None
  without a `net`)."""
  hole = 1.0 - np.asarray(mask, np.float32)
  out = {'psnr_hole': float(np.mean(ssim_lib.psnr(clean, restored, weights=hole))),
         'ssim_hole': float(np.nanmean(ssim_lib.ssim(clean, restored, weights=hole))),
         **denoise_measures(clean, restored)}
  out['fid'] = None if net is None else _fid(net, reference, restored)
  return out


# ---------------------------------------------------------------------------
# A model.
# ---------------------------------------------------------------------------


class _Restorer:
  """A model's restorations, jitted once per shape."""

  def __init__(self, model, settings: Settings):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    config, family = model.config, model.family
    self.model, self.settings = model, settings
    tile = lambda y, m: None if y is None else jnp.tile(y, m // y.shape[0])
    if model.has_encoder:
      self._posterior = jax.jit(lambda s, x, m, y: apps.inpaint_posterior(
          lambda u: family.reconstruct(config, s, u, y), x, m, settings.posterior_iters))
    self._latent = jax.jit(lambda s, x, m, z, y: apps.inpaint_latent(
        lambda u: family.decode(config, s, u, tile(y, u.shape[0])), x, m, z,
        settings.inpaint_steps))
    self._key = jax.random.fold_in(jax.random.PRNGKey(settings.seed), _LATENT_INIT)

  def reconstruct(self, x, labels):
    return np.asarray(self.model.reconstruct(x, labels))

  def inpaint(self, x, mask, labels, method: str, index: int):
    import jax  # pylint: disable=g-import-not-at-top
    model = self.model
    y = None if labels is None else jax.numpy.asarray(labels)
    if method == 'posterior':
      return np.asarray(self._posterior(model.state, x, mask, y))
    z0 = jax.random.normal(jax.random.fold_in(self._key, index),
                           (self.settings.restarts, len(x), model.latent_dim))
    if model.has_encoder:  # One start from the posterior mean, as sample does.
      z0 = z0.at[0].set(model.encode(apps.apply_mask(x, mask), labels)[0])
    return np.asarray(self._latent(model.state, x, mask, z0, y))


def evaluate(model, tasks: Tasks, net, inception_net=None, keep_examples: int = 0,
             echo=print) -> dict:
  """The benchmark of one model.

  Args:
    model: an `api.Model` (a loaded checkpoint, or any object with its
      attributes: config, family, state, has_encoder, latent_dim,
      num_classes, encode, decode, reconstruct).
    tasks: `make_tasks(...)`.
    net: the project's feature network (`feature_net.get(dataset)`).
    inception_net: an `inception.InceptionNetwork` for ppl/inception, or None.
    keep_examples: also return the first K restored images of every setting
      under 'examples' ({setting name: float32 (K, H, W, C) or None}).

  Returns:
    {'metrics': {key: float or None, every key of `metric_keys`},
     'inpaint_methods': {mask setting: 'posterior' | 'latent'},
     'settings': the protocol, 'seconds': wall time}.
  """
  t0 = time.time()
  settings = tasks.settings
  reference = _reference(tasks, net)
  restorer = _Restorer(model, settings)
  labels = tasks.labels if model.num_classes else None
  metrics = dict.fromkeys(metric_keys(settings))
  examples = {}
  for name, noisy in tasks.noisy.items():
    restored = restorer.reconstruct(noisy, labels) if model.has_encoder else None
    if restored is not None:
      for k, v in denoise_measures(tasks.clean, restored).items():
        metrics[f'denoise/{name}/{k}'] = v
    examples[name] = None if restored is None else restored[:keep_examples]
  methods = {}
  for i, (kind, fraction) in enumerate(settings.masks):
    name = setting_name(kind, fraction)
    methods[name] = inpaint_method(model.has_encoder, kind)
    echo(f'applications: inpainting {name} ({methods[name]}).')
    restored = restorer.inpaint(tasks.masked(name), tasks.masks[name], labels, methods[name], i)
    for k, v in inpaint_measures(tasks.clean, restored, tasks.masks[name], net, reference).items():
      metrics[f'inpaint/{name}/{k}'] = v
    examples[name] = restored[:keep_examples]
  if model.has_encoder:
    restored = restorer.reconstruct(tasks.clean, labels)
    metrics.update({f'reconstruct/{k}': v
                    for k, v in denoise_measures(tasks.clean, restored).items()})
    examples['reconstruct'] = restored[:keep_examples]
  spaces = [('own', lambda im: net(im)[0], settings.ppl_samples, 256)]
  if inception_net is not None:
    spaces.append(('inception', lambda im: inception_net(im)[0],
                   settings.ppl_inception_samples, 25))
  for space, features_fn, num, batch in spaces:
    echo(f'applications: perceptual path length in the {space} feature space ({num} pairs).')
    out = ppl_lib.perceptual_path_length(
        model.decode, features_fn, model.latent_dim, num, model.num_classes,
        settings.seed, settings.epsilon, batch)
    metrics[f'ppl/{space}'], metrics[f'ppl/{space}_std'] = out['mean'], out['std']
  result = {'metrics': metrics, 'inpaint_methods': methods, 'settings': settings.to_dict(),
            'seconds': round(time.time() - t0, 1)}
  if keep_examples:
    result['examples'] = examples
  return result


def evaluate_baselines(tasks: Tasks, net, keep_examples: int = 0) -> dict:
  """The baselines' metrics (same keys as a model's, None where a baseline
  does not apply) on the same damaged images, and the damaged input itself.

  Returns:
    {name: {'metrics': {...}}} for DAMAGED and every baselines.DENOISERS /
    INPAINTERS name; with keep_examples also 'examples' per name.
  """
  reference = _reference(tasks, net)
  keys = metric_keys(tasks.settings)
  rows = {name: {'metrics': dict.fromkeys(keys), 'examples': {}}
          for name in (DAMAGED, *baselines.DENOISERS, *baselines.INPAINTERS)}
  for setting, noisy in tasks.noisy.items():
    for name in (DAMAGED, *baselines.DENOISERS):
      restored = noisy if name == DAMAGED else baselines.denoise(name, noisy)
      for k, v in denoise_measures(tasks.clean, restored).items():
        rows[name]['metrics'][f'denoise/{setting}/{k}'] = v
      rows[name]['examples'][setting] = restored[:keep_examples]
  for setting, mask in tasks.masks.items():
    masked = tasks.masked(setting)
    for name in (DAMAGED, *baselines.INPAINTERS):
      restored = masked if name == DAMAGED else baselines.inpaint(name, masked, mask)
      for k, v in inpaint_measures(tasks.clean, restored, mask, net, reference).items():
        rows[name]['metrics'][f'inpaint/{setting}/{k}'] = v
      rows[name]['examples'][setting] = restored[:keep_examples]
  if not keep_examples:
    for row in rows.values():
      del row['examples']
  return rows
