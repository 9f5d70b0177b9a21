"""Sharded sampling and features of one model, for the device tests.

  python tests/sharded_eval.py OUT.npz DATA_DIR [--coordinator_address=... ...]

Builds an untrained class-conditional VAE (the path with the most pieces:
samples, class-conditional samples, reconstructions) and an
Evaluator with the shipped mnist5k feature network and the seeded random
Inception weights, then writes (process 0) OUT.npz: the reference features,
the features, probabilities and Inception outputs of sampled images, the
class-conditional features, the scalar metrics, and the features of test
images and samples in the Inception and a small DINOv2 backbone (the path of
`evaluate --features` and `python -m vaegan_jax.fid`). The device count comes
from the environment; with the three flags it runs as one process of a
multi-process job, and every process gets the same arrays.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NUM_SAMPLES = 20     # Two evaluator batches, the second one partly used.
BATCH = 16           # Images per sampling call (a multiple of 1, 2 and 4 devices).
NUM_TEST = 40        # Test images: reference set, reconstructions, likelihood.
NUM_BACKBONE = 10    # Images through the Inception and DINOv2 backbones (one padded batch).


def config_of(data_dir):
  from vaegan_jax import config_files  # pylint: disable=g-import-not-at-top
  config = config_files.load(os.path.join(ROOT, 'configs', 'vae.py'), 'conditional')
  config.data.data_dir = data_dir
  config.model.width, config.model.hidden, config.model.latent_dim = 8, 32, 8
  config.train.batch_size = BATCH
  return config


def run(data_dir, mesh=None) -> dict:
  """All arrays and metrics, as numpy / floats (the same in every process)."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import inception_random_weights  # pylint: disable=g-import-not-at-top
  from vaegan_jax import families, input_pipeline, sharding  # pylint: disable=g-import-not-at-top
  from vaegan_jax.metrics import feature_net, generative, inception  # pylint: disable=g-import-not-at-top

  config = config_of(data_dir)
  family = families.get('vae')
  mesh = mesh or sharding.make_mesh()
  state = jax.jit(functools.partial(family.init_state, config),
                  out_shardings=sharding.replicated(mesh))(jax.random.PRNGKey(0))
  images, labels = input_pipeline.load_split('mnist5k', 'test', data_dir, NUM_TEST)
  incep = inception.InceptionNetwork(inception.params_from_torch(
      inception_random_weights.random_state(inception.torch_shapes())))
  reference = np.random.default_rng(0).normal(size=(NUM_TEST, 2048)).astype(np.float32)
  ev = generative.Evaluator(config, family, images, mesh, net=feature_net.find('mnist5k'),
                            iwae_k=2, batch_size=BATCH, inception_net=incep,
                            inception_reference=reference, test_labels=labels)
  feats, probs, incep_out = ev.sample_features(state, NUM_SAMPLES)
  cfeats, cprobs, clabels = ev.class_sample_features(state, NUM_SAMPLES)
  out = {'real_feats': ev.real_feats, 'feats': feats, 'probs': probs,
         'cond_feats': cfeats, 'cond_probs': cprobs, 'cond_labels': clabels,
         **{f'inception_{k}': v for k, v in incep_out.items()}}
  metrics = generative.feature_metrics(ev.real_feats, feats, probs, ev.num_classes,
                                       kid_subset_size=10)
  metrics.update(ev.reconstruction(state))
  out.update({f'metric_{k}': np.float64(v) for k, v in metrics.items()})
  # The backbones of `evaluate --features=...` and `python -m vaegan_jax.fid`
  # (backbones.py: sharding.map_batches), on grey test images and on float
  # samples: the random Inception above and a small random DINOv2.
  from vaegan_jax.metrics import backbones, dinov2  # pylint: disable=g-import-not-at-top
  import backbone_weights  # pylint: disable=g-import-not-at-top
  import dinov2_random_weights  # pylint: disable=g-import-not-at-top
  small = dinov2.DinoV2Network(dinov2.convert(dinov2_random_weights.random_state(
      dinov2.torch_shapes(backbone_weights.SMALL_DINOV2))))
  for bb in (backbones.inception_backbone(incep), backbones.dinov2_backbone(small)):
    for what, x in (('test', images[:NUM_BACKBONE]),
                    ('samples', backbones.draw_samples(config, family, state, NUM_BACKBONE,
                                                       mesh))):
      out.update({f'{bb.name}_{what}_{k}': v for k, v in bb.features(x, mesh).items()})
  return out


def main(argv):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from train_families import child_args  # pylint: disable=g-import-not-at-top
  out_path, data_dir = child_args(argv)
  from vaegan_jax import kernels  # pylint: disable=g-import-not-at-top
  kernels.setup()  # As the commands do.
  out = run(data_dir)
  if jax.process_index() == 0:
    np.savez(out_path, **out)
  print('devices', jax.device_count(), 'processes', jax.process_count(), flush=True)


if __name__ == '__main__':
  main(sys.argv)
