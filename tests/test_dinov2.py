"""DINOv2 ViT-L/14 (metrics/dinov2.py) against outputs of the reference code.

tests/golden/dinov2.npz was written by tests/golden/make_dinov2_golden.py with
CPU torch, facebookresearch/dinov2's ``vision_transformer.py`` (hub
``dinov2_vitl14`` settings) and dgm-eval's ``DINOv2Encoder.transform``, on
seeded random weights that tests/dinov2_random_weights.py rebuilds here
without torch: the full ViT-L/14 on images of 28 (grey), 32, 64 and 224 px
through dgm-eval's input handling, and a depth-2 model of the same width for
the ``clean`` resize and for inputs at their own size (2×2 and 4×4 patches).
"""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dinov2_random_weights
from vaegan_jax.errors import UserError
from vaegan_jax.metrics import convert_inception
from vaegan_jax.metrics import dinov2
from vaegan_jax.metrics import resize

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'golden', 'dinov2.npz')
SIZES = (28, 32, 64, 224)
SMALL = dinov2.Config(depth=2)


@pytest.fixture(scope='module')
def golden():
  with np.load(GOLDEN, allow_pickle=False) as g:
    return {k: g[k] for k in g.files}


def _params(config):
  return dinov2.convert(dinov2_random_weights.random_state(dinov2.torch_shapes(config)), config)


def _rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def _inputs(golden, convention):
  return jnp.concatenate([resize.preprocess(jnp.asarray(golden[f'images_{s}']), convention,
                                            dinov2.INPUT_SIZE, normalize='imagenet')
                          for s in SIZES])


@pytest.mark.parametrize('convention', ['dgm_eval', 'clean'])
def test_input_matches_dgm_eval_transform(golden, convention):
  idx = golden['pixel_index']
  x = np.asarray(_inputs(golden, convention))
  for i, s in enumerate(SIZES):
    want = golden[f'input_{s}_{convention}']
    got = x[2 * i:2 * i + 2, idx[:, 0], idx[:, 1]]
    # dgm_eval is integer arithmetic; only the float normalisation rounds.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max(), err_msg=str(s))


@pytest.mark.parametrize('grid', [2, 4, 16])
def test_pos_embed_matrix_is_torch_bicubic(golden, grid):
  np.testing.assert_allclose(dinov2.pos_embed_matrix(37, grid), golden[f'pos_matrix_{grid}'],
                             rtol=0, atol=2e-6)


def test_vitl14_features_match_reference(golden):
  """The full ViT-L/14 on one image each of 28 (grey), 32, 64 and 224 px,
  through dgm-eval's input handling: 1e-5 relative (one batch of 4 at 224 px;
  the golden holds 2 per size, the depth-2 test below uses both)."""
  params = _params(dinov2.VITL14)
  assert dinov2.config_of(params) == dinov2.VITL14
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
  assert n_params == 304_368_640 - 1024  # the released ViT-L/14, less mask_token
  x = _inputs(golden, 'dgm_eval')[::2]
  got = np.asarray(jax.jit(dinov2.apply_preprocessed)(params, x))
  want = golden['vitl14_features'][::2]
  assert got.shape == (4, dinov2.FEATURE_DIM)
  for i, s in enumerate(SIZES):
    assert _rel_err(got[i], want[i]) <= 1e-5, s
  # The images matter: features differ across images far beyond the tolerance.
  assert np.abs(want[0] - want[1]).max() > 1e3 * 1e-5 * np.abs(want).max()


def test_features_end_to_end_and_both_resizes(golden):
  """``features`` (uint8 in, both resizes) on the depth-2 model, and inputs at
  their own size (position embedding interpolated to 2×2 and 4×4)."""
  params = _params(SMALL)
  want = golden['depth2_features']
  x = jnp.concatenate([resize.preprocess(jnp.asarray(golden[f'images_{s}']), convention,
                                         dinov2.INPUT_SIZE, normalize='imagenet')
                       for s in SIZES for convention in ('dgm_eval', 'clean')])
  got = np.asarray(jax.jit(dinov2.apply_preprocessed)(params, x))
  for k in range(0, len(want), 2):
    assert _rel_err(got[k:k + 2], want[k:k + 2]) <= 1e-5, k
  # features() is preprocess + network.
  np.testing.assert_allclose(dinov2.features(params, jnp.asarray(golden['images_32']),
                                             resize='clean'), got[6:8], rtol=0, atol=1e-5)
  for s in (28, 56):
    got = dinov2.features(params, jnp.asarray(golden[f'native_images_{s}']), size=s)
    assert _rel_err(got, golden[f'native_depth2_{s}']) <= 1e-5, s


def test_network_class_batches_and_quantises(golden):
  params = _params(dinov2.Config(depth=1))
  net = dinov2.DinoV2Network(params)
  imgs = golden['images_32']
  direct = np.asarray(net(imgs))
  batched = net.compute(np.concatenate([imgs] * 3), batch_size=4)
  assert batched.shape == (6, 1024)
  np.testing.assert_allclose(batched, np.tile(direct, (3, 1)), rtol=0, atol=1e-5)
  # Float input in [0, 1] is quantised as a PNG would be: same features.
  np.testing.assert_allclose(net.compute(imgs / 255.0, batch_size=2), direct, rtol=0, atol=1e-6)


def test_convert_checks_keys_and_shapes(tmp_path):
  state = dinov2_random_weights.random_state(dinov2.torch_shapes(SMALL))
  with pytest.raises(ValueError, match='missing'):
    dinov2.convert({k: v for k, v in state.items() if k != 'norm.bias'}, SMALL)
  with pytest.raises(ValueError, match='register'):
    dinov2.convert({**state, 'register_tokens': np.zeros((1, 4, 1024), np.float32)}, SMALL)
  bad = dict(state, **{'blocks.1.ls2.gamma': np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match='shape'):
    dinov2.convert(bad, SMALL)


def test_official_layout_pth_through_restricted_reader(golden, tmp_path):
  """A state dict saved by torch from the reference class (1 block, 64 wide,
  patch 2, every key incl. mask_token) -> restricted reader -> convert ->
  the reference's output on 10×10 inputs (position embedding 3×3 -> 5×5)."""
  [path] = glob.glob(os.path.join(os.path.dirname(GOLDEN), 'tiny_dinov2-*.pth'))
  state = convert_inception.read_state_dict(path)
  assert 'mask_token' in state and len(state) == 7 + 14
  config = dinov2.Config(patch_size=2, embed_dim=64, depth=1, num_heads=1, mlp_ratio=1,
                         pos_grid=3)
  assert dinov2.config_from_state(state) == config
  params = dinov2.convert(state)
  got = dinov2.apply_preprocessed(params, jnp.asarray(golden['tiny_input']), config)
  assert _rel_err(got, golden['tiny_features']) <= 1e-5
  # load(): the .pth, or an .npz of the same arrays; the same features.
  net = dinov2.load(path, resize='clean')
  assert net.config == config and net.resize == 'clean' and len(net.sha256) == 64
  npz = str(tmp_path / 'tiny.npz')
  np.savez(npz, __format_version__=np.array(1), **state)
  img = golden['images_32'][:1]
  np.testing.assert_allclose(dinov2.load(npz, resize='clean')(img), net(img), rtol=0, atol=1e-6)
  with pytest.raises(UserError, match='does not hold DINOv2'):
    dinov2.load(os.path.join(os.path.dirname(GOLDEN), 'inception.npz'))
  with pytest.raises(UserError, match='does not exist'):
    dinov2.load(str(tmp_path / 'missing.pth'))


def test_rejects_unknown_resize():
  with pytest.raises(ValueError, match='unknown resize convention'):
    dinov2.DinoV2Network(_params(dinov2.Config(depth=1)), resize='bilinear')
