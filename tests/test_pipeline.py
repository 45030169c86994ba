"""The one inference pipeline, as the facade runs it. That the serving SavedModel and the
camera model run the same graph is checked on their exports: test_serving.py (verify and
recover) and test_export.py (immunize)."""

import numpy as np
import pytest
import tensorflow as tf

from imuge_tf.inference import Imuge
from imuge_tf.io import cover
from imuge_tf.pipeline import working_size, working_view
from imuge_tf.scoring import mosaic_ratio


@pytest.fixture(scope="module")
def imuge(untrained_model_dir):
    imuge = Imuge.load(untrained_model_dir)
    # An untrained encoder's residual is tens of levels; scaled to a trained one's few.
    imuge.residual_gain = 0.03
    return imuge


def _photo(photos, width, height):
    return cover(photos["astronaut"], height, width)


def test_working_size_keeps_the_aspect_ratio():
    assert working_size(3000, 4000, 128) == (96, 128)
    assert working_size(1200, 1920, 128) == (80, 128)
    assert working_size(4000, 3000, 256) == (256, 192)
    assert working_size(20, 4000, 128) == (16, 128)
    height, width = working_size(tf.constant(1200), tf.constant(1920), 128)
    assert (int(height), int(width)) == (80, 128)


def test_working_view_averages_boxes():
    levels = np.random.default_rng(0).uniform(0, 1, (1, 64, 96, 1)).astype(np.float32)
    view = np.asarray(working_view(levels, (16, 24)))
    boxes = levels.reshape(1, 16, 4, 24, 4, 1).mean(axis=(2, 4))
    # Half the size of a 2 x 2 box average, then bilinear by exactly 2: a 2 x 2 mean of it.
    assert abs(view.mean() - boxes.mean()) < 1e-3
    assert np.abs(view - boxes).mean() < 0.15


def test_immunized_non_square_photo_has_no_cell_pattern(imuge, photos):
    photo = _photo(photos, 1024, 640)
    immunized = imuge.immunize(photo)
    assert 0.5 < np.sqrt(np.mean((immunized.astype(float) - photo) ** 2)) < 5
    assert mosaic_ratio(photo, immunized, 1024 // 64) < 1.5
    # The measure sees a mosaic of cells of width / 64 px when there is one (as the earlier
    # nearest-neighbour cell corrections made).
    cells = np.random.default_rng(0).integers(-3, 4, (640 // 16, 1024 // 16, 1))
    mosaic = np.clip(immunized + np.kron(cells, np.ones((16, 16, 3))), 0, 255)
    assert mosaic_ratio(photo, mosaic.astype(np.uint8), 16) > 3


def test_untouched_and_tampered_photos_read_by_the_mark(imuge, photos):
    photo = _photo(photos, 400, 264)
    immunized = imuge.immunize(photo)
    assert imuge.verify(immunized).verdict == "intact"
    assert imuge.verify(immunized).evidence == "block_mark"
    # No block carries the mark: the (here untrained) learned verifier decides.
    assert imuge.verify(photo).evidence == "verifier"
    tampered = immunized.copy()
    truth = np.zeros(photo.shape[:2], bool)
    truth[60:180, 101:251] = True  # off the 8 x 8 grid
    tampered[truth] = _photo(photos, 400, 264)[::-1][truth]
    result = imuge.verify(tampered)
    assert result.verdict == "tampered" and result.evidence == "block_mark"
    overlap = (result.mask & truth).sum() * 2 / (result.mask.sum() + truth.sum())
    assert overlap > 0.9
