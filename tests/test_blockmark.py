"""The block mark: keyed 8 x 8 grid lattice, read at native resolution through real codecs."""

import numpy as np
import pytest
import tensorflow as tf
from real_codecs import jpeg as jpeg_round_trip

from imuge_tf.models.blockmark import BLOCK, BlockMark, dct_basis
from imuge_tf.scoring import psnr


def _agreement(mark, image):
    return np.asarray(mark.agreement(tf.constant(image[None], tf.float32)))[0, :, :, 0]


def _embed(mark, image):
    return np.asarray(mark.embed(tf.constant(image[None], tf.float32)))[0].astype(np.uint8)


def test_basis_is_orthonormal():
    basis = dct_basis(((0, 1), (1, 0), (2, 0), (1, 1), (3, 2)))
    np.testing.assert_allclose(basis.T @ basis, np.eye(5), atol=1e-6)
    assert np.abs(basis.sum(axis=0)).max() < 1e-5  # AC only: no change of a block's mean


def test_mark_is_invisible_and_read_back_through_jpeg(photos):
    photo = photos["astronaut"][:488, :360]  # not square, not a multiple of 8 on one side
    mark = BlockMark()
    marked = _embed(mark, photo)
    assert psnr(marked, photo) > 42
    assert _agreement(mark, marked).mean() > 0.85
    assert _agreement(mark, jpeg_round_trip(marked, 90)).mean() > 0.6
    assert abs(_agreement(mark, photo).mean()) < 0.1  # never marked: chance level
    assert abs(_agreement(mark, jpeg_round_trip(photo, 90)).mean()) < 0.1


def test_another_key_reads_nothing(photos):
    photo = photos["coffee"]
    marked = _embed(BlockMark(key="owner"), photo)
    assert _agreement(BlockMark(key="owner"), marked).mean() > 0.85
    assert abs(_agreement(BlockMark(key="someone else"), marked).mean()) < 0.1
    assert abs(_agreement(BlockMark(), marked).mean()) < 0.1


def test_pasted_and_cloned_blocks_lose_the_mark(photos):
    mark = BlockMark()
    marked = _embed(mark, photos["coffee"])
    tampered = marked.copy()
    tampered[80:200, 96:256] = photos["chelsea"][80:200, 96:256]   # pasted
    tampered[240:320, 200:360] = marked[37:117, 13:173]             # cloned, off the grid
    agreement = _agreement(mark, tampered)
    pasted = agreement[80 // BLOCK:200 // BLOCK, 96 // BLOCK:256 // BLOCK]
    cloned = agreement[240 // BLOCK:320 // BLOCK, 200 // BLOCK:360 // BLOCK]
    kept = agreement[:80 // BLOCK]
    assert abs(pasted.mean()) < 0.15 and abs(cloned.mean()) < 0.15
    assert kept.mean() > 0.85


def test_saturated_highlights_carry_the_mark():
    white = np.full((64, 96, 3), 255, np.uint8)
    mark = BlockMark()
    assert _agreement(mark, _embed(mark, white)).min() > 0.7


def test_flat_content_is_told_apart(photos):
    mark = BlockMark()
    marked = _embed(mark, photos["coffee"])
    painted = marked.copy()
    painted[64:192, 128:320] = (200, 40, 30)  # a region painted over with one colour
    _, flat = mark.read(tf.constant(painted[None], tf.float32))
    flat = np.asarray(flat)[0, :, :, 0]
    assert flat[8:24, 16:40].all()
    assert flat[:8].mean() < 0.01  # marked blocks, even the smooth ones


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="AC positions"):
        BlockMark(coefficients=((0, 0),))
    with pytest.raises(ValueError, match="step"):
        BlockMark(step=0)
    with pytest.raises(ValueError, match="key"):
        BlockMark(key=b"")
