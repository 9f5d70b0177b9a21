"""Keys shared by every family. Family configs start from `get_base_config()`.

They live in the package (configs/*.py: `from vaegan_jax import config_base`),
so a config file loaded by path from any directory imports them from the
installed package (vaegan_jax/config_files.py).
"""

import ml_collections

from vaegan_jax import rules


def get_base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # Root of every PRNG key and of the data order.

  config.model = ml_collections.ConfigDict()
  config.model.family = 'vae'      # 'vae' | 'gan' | 'vaegan'.
  config.model.conv_impl = 'auto'  # 'auto' (onednn, else gemm, on CPU) | 'xla' | 'fast' | 'gemm' | 'onednn'.

  config.data = ml_collections.ConfigDict()
  config.data.name = 'mnist5k'     # mnist5k (embedded) | mnist | fashion_mnist | cifar10 | svhn_cropped | celeb_a | folder:PATH (PNG/JPEG/WebP, recursive).
  config.data.image_size = 0       # folder:PATH only: side of the centre-cropped square images; 0 = the images' own size (else the nearest of 28 | 32 | 64); the VAE takes any size >= 8, the GANs 28 | 32 | 64. TFDS sets keep their own size.
  config.data.channels = 0         # folder:PATH only: 1 (grey) or 3 (RGB) forces the channel count; 0 = the majority of the files'.
  config.data.data_dir = ''        # '' = ~/.cache/vaegan_jax/tensorflow_datasets for mnist5k, TFDS's default otherwise.
  config.data.cache_mb = 512       # Train splits of at most this many MB of images are decoded once into memory; larger ones (and 0) stream.
  config.data.worker_count = -1    # Processes decoding a streamed train split: -1 = one per CPU core (at most 16); 0 = threads in the training process. Same batches either way.

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 128    # Global batch, split over all devices.
  config.train.num_steps = 1000
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 500
  config.train.sample_every_steps = 500
  config.train.eval_every_steps = 500
  config.train.keep_checkpoints = 3
  config.train.compute_dtype = 'float32'  # 'float32' | 'bfloat16' (params stay float32).
  config.train.keep_host_memory = True  # Keep freed host memory in the process (glibc): no page faults per step (vaegan_jax/host_memory.py); False = glibc's defaults.

  # Evaluation (vaegan_jax/metrics): FID, KID, precision/recall, … in the feature
  # space of the project's own classifier (not Inception), every eval_every_steps.
  config.eval = ml_collections.ConfigDict()
  config.eval.generative_metrics = True  # False = only the family's own eval metrics.
  config.eval.features = 'own'     # Feature space of the sample metrics: 'own' (the project's net; labelled TFDS sets) | 'inception' | 'dinov2' (added where the weights are at hand: python -m vaegan_jax.metrics.weights NAME).
  config.eval.num_samples = 1000   # Samples per training-time evaluation.
  config.eval.iwae_k = 100         # Importance samples of the VAE's IWAE NLL (evaluate CLI); 0 = skip.
  config.eval.train_iwae_k = 10    # The same during training, kept small for speed; 0 = skip.
  config.eval.best_metric = 'fid'  # Keep the best checkpoint by it in checkpoints_best/; '' = off.
  config.eval.best_mode = 'min'    # 'min' (lower is better) | 'max'.
  return config


# The rules of the shared keys (vaegan_jax/rules.py; validation gathers them).
def _eval_features():
  from vaegan_jax.metrics import backbones  # pylint: disable=g-import-not-at-top
  return backbones.EVAL_FEATURES


RULES = {
    'seed': rules.Int(min=0, max=2**32 - 1),
    'data.data_dir': rules.Str(),
    'data.cache_mb': rules.COUNT,                # 0 = always stream the train split.
    'data.worker_count': rules.Int(min=-1, max=256),  # -1 = one per core; 0 = threads (data/pipeline.py).
    'train.batch_size': rules.POSITIVE,
    'train.num_steps': rules.POSITIVE,
    'train.log_every_steps': rules.POSITIVE,
    'train.checkpoint_every_steps': rules.POSITIVE,
    'train.sample_every_steps': rules.POSITIVE,
    'train.eval_every_steps': rules.POSITIVE,
    'train.keep_checkpoints': rules.POSITIVE,
    'train.keep_host_memory': rules.Bool(),     # Read by vaegan_jax.main before training.
    'eval.generative_metrics': rules.Bool(),
    'eval.features': rules.OneOf(_eval_features),  # metrics/backbones.py's EVAL_FEATURES.
    'eval.num_samples': rules.Int(min=6),       # metrics.generative.Evaluator's minimum.
    'eval.iwae_k': rules.COUNT,
    'eval.train_iwae_k': rules.COUNT,
    'eval.best_metric': rules.Str(),            # Checked against the eval metrics at the first eval.
}


def best_mode_with_metric(config, flat):
  """A best metric needs eval.best_mode (checkpoint.BEST_MODES)."""
  del config
  if flat.get('eval.best_metric') and 'eval.best_mode' not in flat:
    raise rules.ConfigError('eval.best_mode', None, 'is missing', "'min' or 'max'")


def check_variant(arg, variants, path: str):
  """ValueError naming the valid variants when `arg` is none of them."""
  if arg and arg not in variants:
    raise ValueError(f'Unknown variant {arg!r} of {path}; valid variants: '
                     f'{", ".join(variants)}.')


def smoke(config, num_steps: int = 20) -> ml_collections.ConfigDict:
  """Shrinks a config to a run of a few seconds."""
  config.train.batch_size = 32
  config.train.num_steps = num_steps
  config.train.log_every_steps = 5
  config.train.checkpoint_every_steps = 10
  config.train.sample_every_steps = 10
  config.train.eval_every_steps = 10
  config.eval.num_samples = 100
  return config

