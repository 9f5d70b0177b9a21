"""Pictures: enlarged, titled, labelled grids whose tiles keep their pixels; curves."""

import numpy as np
import pytest

from vaegan_jax import viz


def _images(n, h=28, w=28, c=1, seed=0):
  return np.random.default_rng(seed).random((n, h, w, c)).astype(np.float32)


def _enlarged(image, s):
  return np.repeat(np.repeat(image, s, axis=0), s, axis=1)


def test_make_grid_tiles_and_pads():
  x = _images(5)
  grid = viz.make_grid(x, ncol=3)
  assert grid.shape == (2 * 30 + 2, 3 * 30 + 2, 1) and grid.dtype == np.uint8
  np.testing.assert_array_equal(grid[32:60, 2:30], viz.to_uint8(x[3]))
  assert (grid[:2] == 255).all() and (grid[32:60, 62:90] == 255).all()  # Pad, empty slot.


@pytest.mark.parametrize('n,channels', [(1, 1), (9, 1), (64, 3)])
def test_every_tile_is_its_image_enlarged(n, channels):
  x = _images(n, c=channels, seed=n)
  captions = [str(i % 10) for i in range(n)]
  panels = [viz.Panel(x, 'samples', captions=captions, marked=[0]),
            viz.Panel(x[::-1], 'reversed', row_labels=['a'] * viz.Panel(x).shape()[0])]
  out = viz.render(panels)
  s = out.scale
  assert out.image.shape[1] >= viz.MIN_WIDTH and out.image.shape[2] == channels
  assert s == min(viz.MAX_AUTO_SCALE, -(-viz.MIN_WIDTH // (2 * viz.make_grid(x).shape[1])))
  for panel, boxes in zip(panels, out.tiles):
    assert len(boxes) == n
    for image, (top, left, h, w) in zip(viz.to_uint8(panel.images), boxes):
      assert (h, w) == (28 * s, 28 * s)
      np.testing.assert_array_equal(out.image[top:top + h, left:left + w],
                                    _enlarged(image, s))
  # The marked tile has a frame in the mark colour; the others a white pad.
  top, left, h, w = out.tiles[0][0]
  np.testing.assert_array_equal(out.image[top - 1, left], viz.MARK[channels])
  if n > 1:
    top, left, h, w = out.tiles[0][1]
    assert (out.image[top - 1, left] == viz.WHITE).all()


def test_titles_and_labels_are_drawn_outside_the_tiles():
  x = _images(6)
  plain = viz.render([viz.Panel(x, ncol=3)], scale=2)
  titled = viz.render([viz.Panel(x, 'a title', ncol=3, captions=list('012345'),
                                 col_labels=['start', '', 'end'])], scale=2)
  band = titled.tiles[0][0][0] - viz.PAD * 2  # Title + column labels above the grid.
  assert band == 2 * viz.line_height()
  assert titled.image[:band].min() < 100 and plain.image[:plain.tiles[0][0][0]].min() == 255
  # Captions add a strip under each row of tiles, with text in it.
  top, left, h, w = titled.tiles[0][0]
  strip = titled.image[top + h:top + h + viz.line_height(), left:left + w]
  assert strip.min() < 100
  assert titled.tiles[0][3][0] - titled.tiles[0][0][0] == plain.tiles[0][3][0] - \
      plain.tiles[0][0][0] + viz.line_height()


def test_scale_and_determinism(tmp_path):
  x = _images(4)
  a, b = str(tmp_path / 'a.png'), str(tmp_path / 'b.png')
  viz.save(a, [viz.Panel(x, 'x')], scale=1)
  viz.save(b, [viz.Panel(x, 'x')], scale=1)
  assert open(a, 'rb').read() == open(b, 'rb').read()
  one = viz.render([viz.Panel(x)], scale=1).image
  three = viz.render([viz.Panel(x)], scale=3).image
  np.testing.assert_array_equal(_enlarged(one, 3), three)  # Pads enlarge too.
  with pytest.raises(ValueError, match='scale'):
    viz.render([viz.Panel(x)], scale=-1)


def test_metric_groups_pair_train_eval_bands_and_classes():
  rows = [{'step': 5, 'loss': 3.0, 'elbo': -5.0, 'steps_per_s': 1.0},
          {'step': 10, 'eval/elbo': -4.0, 'eval/kid': 0.2, 'eval/kid_std': 0.01,
           'eval/cond_accuracy': 0.5, 'eval/cond_accuracy/0': 0.4,
           'eval/cond_accuracy/1': 0.6}]
  groups = viz.metric_groups(rows)
  assert list(groups) == ['loss', 'elbo', 'steps_per_s', 'kid', 'cond_accuracy']
  assert groups['elbo'] == ['elbo', 'eval/elbo']
  assert groups['kid'] == ['eval/kid', 'eval/kid_std']
  assert groups['cond_accuracy'] == ['eval/cond_accuracy', 'eval/cond_accuracy/0',
                                     'eval/cond_accuracy/1']
  fig = viz.curves_figure(rows)
  assert [ax.get_title() for ax in fig.axes] == list(groups)
  elbo, kid, cond = fig.axes[1], fig.axes[3], fig.axes[4]
  assert [l.get_label() for l in elbo.lines] == ['train', 'test']
  assert len(kid.lines) == 1 and len(kid.collections) == 1  # The std band.
  assert [l.get_label() for l in cond.lines] == ['test', 'class 0', 'class 1']
