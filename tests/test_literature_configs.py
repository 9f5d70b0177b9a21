"""The literature configs (configs/*.py:cifar10_dcgan, :cifar10_sngan, :celeb_a64).

Parameter counts equal those of the source implementations, derived by hand
from the source files (PyTorch counts BatchNorm weight + bias as parameters,
running statistics and spectral-norm vectors as buffers; flax the same:
'params' against 'batch_stats'). Each config builds, initialises and trains
2 steps on mock TFDS data (tests/mock_data.py) of its dataset's exact shapes, at its real
widths and a tiny batch.
"""

import math
import os

import jax
import numpy as np
import pytest
from conftest import load_config
from mock_data import mock_tfds
from vaegan_jax import families
from vaegan_jax import train

# StudioGAN src/models/deep_conv.py, unconditional, z_dim 128, 32x32x3:
#   G: linear0 128*8192+8192 = 1,056,768; deconv 512->256 k4 (+bias) 2,097,408,
#      BN 512; 256->128 524,416, BN 256; 128->64 131,136, BN 128;
#      conv4 64->3 k3 1,731.                                  total 3,812,355
#   D: block 3->64: conv k3 1,792 + BN 128, conv k4 65,600 + BN 128 = 67,648;
#      64->128: 73,856 + 256 + 262,272 + 256 = 336,640;
#      128->256: 295,168 + 512 + 1,048,832 + 512 = 1,345,024;
#      conv1 256->512 k3 1,180,160 + BN 1,024; linear1 513.   total 2,931,009
STUDIOGAN_DCGAN = (3_812_355, 2_931_009)
# StudioGAN src/models/resnet.py at 32 px, g_conv_dim = d_conv_dim = 64, z 128:
#   G: linear0 128*4096+4096 = 528,384; 3 GenBlocks 256->256 of
#      BN 512 + BN 512 + conv1x1 65,792 + 2 x conv3x3 590,080 = 1,246,976;
#      bn4 512; conv2d5 256->3 k3 6,915.                      total 4,276,739
#   D (spectral norm: weight_orig is the parameter): DiscOptBlock 3->128
#      512 + 3,584 + 147,584 = 151,680; DiscBlock 128->128 down
#      16,512 + 2 x 147,584 = 311,680; 2 DiscBlocks without shortcut conv
#      2 x 295,168; linear1 129.                              total 1,053,825
SNGAN_RESNET = (4_276_739, 1_053_825)
# Newmu/dcgan_code faces/train_uncond_dcgan.py (nz 100, ngf = ndf = 128):
#   G: gw 100*16384 + gg, gb 2*16384; gw2 1024*512*25 + 2*512;
#      gw3 512*256*25 + 2*256; gw4 256*128*25 + 2*128; gwx 128*3*25.  18,885,760
#   D: dw 128*3*25; dw2 256*128*25 + 2*256; dw3 512*256*25 + 2*512;
#      dw4 1024*512*25 + 2*1024; dwy 1024*4*4.                      17,232,768
RADFORD_DCGAN = (18_885_760, 17_232_768)


def _counts(config):
  family = families.get(config.model.family)
  state = jax.eval_shape(lambda k: family.init_state(config, k), jax.random.PRNGKey(0))
  return tuple(sum(math.prod(x.shape) for x in jax.tree.leaves(state.params[n]))
               for n in ('generator', 'discriminator'))


@pytest.mark.parametrize('arg, expected', [
    ('cifar10_dcgan', STUDIOGAN_DCGAN), ('cifar10_sngan', SNGAN_RESNET),
    ('celeb_a64', RADFORD_DCGAN)])
def test_parameter_counts_equal_the_sources(arg, expected):
  assert _counts(load_config('gan', arg)) == expected


def test_settings_point_by_point():
  dc = load_config('gan', 'cifar10_dcgan')
  assert (dc.model.arch, dc.model.latent_dim, dc.gan.loss, dc.gan.d_steps,
          dc.train.batch_size, dc.train.num_steps, dc.gan.ema_decay) == (
              'studiogan_dcgan', 128, 'non_saturating', 2, 64, 200000, 0.0)
  assert (dc.optim.d.learning_rate, dc.optim.d.b1, dc.optim.d.b2) == (2e-4, 0.5, 0.999)
  sn = load_config('gan', 'cifar10_sngan')
  assert (sn.model.arch, sn.model.spectral_norm, sn.gan.loss, sn.gan.d_steps,
          sn.train.batch_size, sn.train.num_steps) == ('resnet', True, 'hinge', 5, 64, 50000)
  for opt in (sn.optim.g, sn.optim.d):
    assert (opt.learning_rate, opt.b1, opt.b2) == (2e-4, 0.0, 0.9)
  ra = load_config('gan', 'celeb_a64')
  assert (ra.model.arch, ra.data.name, ra.model.latent_dim, ra.model.leaky_slope,
          ra.train.batch_size, ra.optim.g.l2, ra.optim.d.b1) == (
              'radford_dcgan', 'celeb_a', 100, 0.2, 128, 1e-5, 0.5)
  # The default variants keep today's architecture (existing checkpoints load).
  assert load_config('gan', 'cifar10').model.arch == 'tutorial'
  assert _counts(load_config('gan', 'cifar10')) == (4_926_592, 1_033_345)


def test_unknown_arch_is_one_sentence():
  config = load_config('gan', 'cifar10')
  config.model.arch = 'stylegan'
  with pytest.raises(Exception, match=r"config.model.arch='stylegan' is not allowed; allowed: one of 'tutorial'"):
    _counts(config)


def test_l2_is_coupled_weight_decay():
  from vaegan_jax import state as state_lib  # pylint: disable=g-import-not-at-top
  cfg = load_config('gan', 'celeb_a64').optim.g
  tx = state_lib.adam(cfg)
  params = {'w': np.array([2.0, -1.0], np.float32)}
  # Zero loss gradient: the first Adam step moves by -lr * sign(l2 * w).
  new, _ = state_lib.update(tx, {'w': np.zeros(2, np.float32)}, tx.init(params), params)
  np.testing.assert_allclose(new['w'], params['w'] - 2e-4 * np.sign(params['w']), rtol=1e-5)


@pytest.mark.parametrize('name, arg, batch', [
    ('gan', 'cifar10_dcgan', 4), ('gan', 'cifar10_sngan', 4), ('gan', 'celeb_a64', 2),
    ('vae', 'celeb_a64', 2), ('vaegan', 'celeb_a64', 2)])
def test_two_steps_on_mock_data(tmp_path, name, arg, batch):
  config = load_config(name, arg)
  config.train.batch_size = batch
  config.train.num_steps = 2
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = 2
  config.train.sample_every_steps = 1000
  config.train.eval_every_steps = 2
  config.eval.generative_metrics = False
  config.eval.best_metric = ''
  if 'train_iwae_k' in config.eval:
    config.eval.train_iwae_k = 0
  workdir = str(tmp_path / arg)
  with mock_tfds(num_examples=batch * 2):
    state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 2
  family = families.get(config.model.family)
  size = 32 if arg.startswith('cifar10') else 64
  images = family.sample(config, state, jax.random.PRNGKey(0), 2)
  assert images.shape == (2, size, size, 3)
  assert np.all(np.isfinite(np.asarray(images)))
  assert os.path.exists(os.path.join(workdir, 'metrics.jsonl'))
