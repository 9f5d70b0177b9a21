"""The controlled degradations of vaegan_jax/metrics/degradations.py."""

import numpy as np
import pytest

from vaegan_jax.metrics import degradations as D


def _digits(n=8, seed=0):
  """Synthetic 'digits': float (n, 28, 28, 1), a bright ring and a bar each."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:28, :28]
  out = np.zeros((n, 28, 28, 1), np.float32)
  for i in range(n):
    cy, cx, r = 14 + rng.integers(-2, 3), 14 + rng.integers(-2, 3), 5 + rng.integers(0, 3)
    ring = np.abs(np.hypot(yy - cy, xx - cx) - r) < 1.2
    bar = (np.abs(xx - cx - r - 2) < 1.2) & (yy > 6) & (yy < 22)
    out[i, ..., 0] = np.where(ring | bar, 1.0, 0.0)
  return out


def test_draw_is_a_permutation_then_cycles():
  idx = D.draw(10, 7, seed=3)
  assert len(set(idx.tolist())) == 7 and idx.max() < 10
  idx = D.draw(4, 10, seed=3)
  assert np.bincount(idx, minlength=4).tolist() in ([3, 3, 2, 2], [2, 3, 3, 2], [3, 2, 2, 3],
                                                    [2, 2, 3, 3], [3, 2, 3, 2], [2, 3, 2, 3])
  np.testing.assert_array_equal(D.draw(50, 20, 1), D.draw(50, 20, 1))


def test_zero_severity_is_the_identity():
  x = _digits()
  for out in (D.gaussian_blur(x, 0.0), D.gaussian_noise(x, 0.0, 1),
              D.salt_and_pepper(x, 0.0, 1), D.elastic_warp(x, 0.0, 1),
              D.erase_strokes(x, 0.0, 1), D.dilate(x, 0), D.mix_noise(x, 0.0, 1)):
    np.testing.assert_array_equal(out, x)
  u8 = (x * 255).astype(np.uint8)
  np.testing.assert_allclose(D.gaussian_blur(u8, 0.0), u8 / 255.0, atol=1e-7)


def test_every_damage_is_deterministic_in_range_and_keeps_the_shape():
  x = _digits()
  calls = [lambda s: D.gaussian_noise(x, 0.2, s), lambda s: D.salt_and_pepper(x, 0.1, s),
           lambda s: D.elastic_warp(x, 16.0, s), lambda s: D.erase_strokes(x, 0.3, s),
           lambda s: D.mix_noise(x, 0.5, s)]
  for fn in calls:
    a, b, c = fn(0), fn(0), fn(1)
    assert a.shape == x.shape and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
  np.testing.assert_array_equal(x, _digits())  # Inputs are never modified.


def test_blur_spreads_mass_and_lowers_the_peak():
  x = _digits()
  for sigma in (0.5, 1.0, 2.0):
    y = D.gaussian_blur(x, sigma)
    np.testing.assert_allclose(y.sum(axis=(1, 2, 3)), x.sum(axis=(1, 2, 3)), rtol=0.03)
  assert D.gaussian_blur(x, 2.0).max() < D.gaussian_blur(x, 1.0).max() < 1.0
  with pytest.raises(ValueError):
    D.gaussian_blur(x, -1.0)


def test_noise_and_salt_and_pepper_have_the_documented_size():
  grey = np.full((64, 28, 28, 1), 0.5, np.float32)
  assert np.std(D.gaussian_noise(grey, 0.1, 0) - grey) == pytest.approx(0.1, rel=0.02)
  sp = D.salt_and_pepper(grey, 0.2, 0)
  hit = sp != 0.5
  assert hit.mean() == pytest.approx(0.2, abs=0.01)
  assert set(np.unique(sp[hit]).tolist()) == {0.0, 1.0}
  assert (sp[hit] == 1.0).mean() == pytest.approx(0.5, abs=0.03)


def test_erase_removes_the_stated_share_of_stroke_pixels_and_adds_nothing():
  x = _digits()
  strokes = D.stroke_mask(x)
  for fraction in (0.1, 0.25, 0.6):
    y = D.erase_strokes(x, fraction, seed=2)
    assert np.all(y <= x)
    erased = (strokes & ~D.stroke_mask(y)).sum(axis=(1, 2)) / strokes.sum(axis=(1, 2))
    np.testing.assert_allclose(erased, fraction, atol=0.05)
  assert D.erase_strokes(x, 1.0, 0).max() == 0.0


def test_dilate_is_a_disk_maximum():
  x = np.zeros((1, 28, 28, 1), np.float32)
  x[0, 14, 14, 0] = 1.0
  for r in (1, 2, 3):
    y = D.dilate(x, r)
    assert y.sum() == D.disk(r).sum()
    assert y[0, 14, 14 + r, 0] == 1.0 and y[0, 14, 14 + r + 1, 0] == 0.0
  digits = _digits()
  assert np.all(D.dilate(digits, 2) >= digits)
  assert D.disk(1).sum() == 9 and D.disk(2).sum() == 21  # 3x3; 5x5 less the corners.


def test_mix_noise_replaces_the_stated_number_of_images():
  x = _digits(20)
  y = D.mix_noise(x, 0.25, seed=4)
  changed = np.any(y != x, axis=(1, 2, 3))
  assert changed.sum() == 5
  np.testing.assert_array_equal(y[~changed], x[~changed])
  assert abs(float(y[changed].mean()) - 0.5) < 0.02  # Uniform noise.


def test_drop_classes_leaves_ten_minus_k_labels():
  x = _digits(100)
  labels = np.arange(100) % 10
  for k in (0, 2, 4, 9):
    images, kept = D.drop_classes(x, labels, k, seed=5)
    assert len(np.unique(kept)) == 10 - k
    assert len(images) == len(kept) == 10 * (10 - k)
  a = D.drop_classes(x, labels, 3, seed=5)[1]
  b = D.drop_classes(x, labels, 3, seed=6)[1]
  assert set(np.unique(a)) != set(np.unique(b))
  with pytest.raises(ValueError):
    D.drop_classes(x, labels, 10, seed=0)


def test_memorise_copies_exactly_num_distinct_images():
  x = _digits(50, seed=1)
  y = D.memorise(x, 5, 40, seed=2)
  assert y.shape == (40, 28, 28, 1)
  flat_x = {im.tobytes() for im in x}
  distinct = {im.tobytes() for im in y}
  assert len(distinct) == 5 and distinct <= flat_x  # Exact copies, five of them.
  counts = np.unique([im.tobytes() for im in y], return_counts=True)[1]
  assert counts.tolist() == [8] * 5


def test_ladders_share_the_clean_set_and_grow_in_severity():
  x = _digits(60, seed=3)
  labels = np.arange(60) % 10
  clean = D.ladder_images('blur', 0.0, x, labels, 30, seed=7)
  for name, ladder in D.LADDERS.items():
    assert 3 <= len(ladder.severities) <= 5
    assert ladder.kind in (D.FIDELITY, D.DIVERSITY)
    first = D.ladder_images(name, ladder.severities[0], x, labels, 30, seed=7)
    np.testing.assert_array_equal(first, clean)
    last = D.ladder_images(name, ladder.severities[-1], x, labels, 30, seed=7)
    assert last.shape == clean.shape and not np.array_equal(last, clean)
    np.testing.assert_array_equal(
        last, D.ladder_images(name, ladder.severities[-1], x, labels, 30, seed=7))
  blurs = [D.ladder_images('blur', s, x, labels, 30, 7).max() for s in D.LADDERS['blur'].severities]
  assert blurs == sorted(blurs, reverse=True)
  with pytest.raises(ValueError, match='Unknown ladder'):
    D.ladder_images('fog', 1, x, labels, 3, 0)


def test_hole_masks_have_the_stated_size_and_are_seeded():
  m = D.center_hole(3, 28, 28, 0.5)
  assert m.shape == (3, 28, 28, 1) and m.dtype == np.float32
  assert (m == 0).sum(axis=(1, 2, 3)).tolist() == [196] * 3
  assert m[0, 7:21, 7:21].max() == 0 and m[0, 6, 6] == 1
  assert (D.center_hole(1, 28, 28, 0.25) == 0).sum() == 49
  b = D.block_holes(50, 28, 28, 0.25, seed=3, num_blocks=4)
  hidden = (b == 0).sum(axis=(1, 2, 3))
  assert hidden.min() >= 49 and hidden.max() <= 4 * 49 and len(set(hidden.tolist())) > 1
  np.testing.assert_array_equal(b, D.block_holes(50, 28, 28, 0.25, seed=3, num_blocks=4))
  assert not np.array_equal(b, D.block_holes(50, 28, 28, 0.25, seed=4, num_blocks=4))
  with pytest.raises(ValueError, match='fraction'):
    D.center_hole(1, 28, 28, 0.0)
