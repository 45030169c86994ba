"""The self-embedded reference: written by immunize, read back by recover, through real codecs."""

import numpy as np
import pytest
import tensorflow as tf
from real_codecs import jpeg, png

from imuge_tf.evaluation import _fixed_share_mask, telea_inpaint
from imuge_tf.inference import Imuge
from imuge_tf.io import cover
from imuge_tf.models.reference import CELL, RECORD_BITS, SelfReference
from imuge_tf.scoring import l_psnr


@pytest.fixture(scope="module")
def imuge(untrained_model_dir):
    imuge = Imuge.load(untrained_model_dir)
    imuge.residual_gain = 0.03  # an untrained encoder's residual, scaled to a trained one's
    return imuge


def _levels(image):
    return tf.constant(np.asarray(image, np.float32)[None])


def _read(imuge, received, mask):
    """(decoded cells share, decoded records, copies per cell) of a received photo."""
    _, decoded, copies, records = imuge.pipeline.read_reference(
        _levels(received), tf.constant(mask.astype(np.float32)[None, :, :, None]))
    return (float(np.mean(np.asarray(copies) > 0)), np.asarray(records)[0],
            np.asarray(copies)[0, :, :, 0])


def test_records_are_the_photo_means(photos):
    photo = cover(photos["coffee"], 96, 128)
    reference = SelfReference()
    luminance, chroma = (np.asarray(part)[0] for part in reference.means(_levels(photo)))
    y = photo.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    quarter = y[:16, 16:32].mean()
    assert abs(luminance[0, 1, 0] - quarter) < 0.5  # integer weights: JPEG's within 1/256
    record = np.asarray(reference.record(_levels(photo)))[0]
    assert record.shape == (96 // CELL, 128 // CELL, RECORD_BITS)
    assert set(np.unique(record)) <= {0.0, 1.0}
    values = np.asarray(reference.values(tf.constant(record)))
    assert np.all(np.abs(values[..., :4] - np.asarray(
        tf.nn.space_to_depth(luminance[None], 2))[0]) <= 4.0)  # half a quantization step


def test_reference_decodes_exactly_from_a_lossless_file(imuge, photos):
    photo = cover(photos["astronaut"], 360, 488)  # not a multiple of the cell size
    immunized = png(imuge.immunize(photo))
    share, records, copies = _read(imuge, immunized, np.zeros(photo.shape[:2], bool))
    expected = np.asarray(imuge.pipeline.reference.record(_levels(photo)))[0]
    assert share == 1.0 and np.all(copies == 2)
    np.testing.assert_array_equal(records, expected)
    # The never-immunized photo carries no reference.
    assert _read(imuge, photo, np.zeros(photo.shape[:2], bool))[0] == 0.0


@pytest.mark.slow
def test_reference_survives_jpeg_75_after_a_quarter_is_pasted_over(imuge, photos):
    photo = cover(photos["astronaut"], 384, 512)
    donor = cover(photos["coffee"], 384, 512)
    truth = _fixed_share_mask((7, 25), photo.shape[:2], 0.25, 0.125)
    tampered = np.where(truth[..., None], donor, imuge.immunize(photo))
    received = jpeg(tampered, 75)
    result = imuge.verify(received)
    assert result.verdict == "tampered"
    share, records, copies = _read(imuge, received, result.mask)
    assert share > 0.85
    expected = np.asarray(imuge.pipeline.reference.record(_levels(photo)))[0]
    decoded = copies > 0
    assert np.mean(records[decoded] == expected[decoded]) > 0.999
    recovered = imuge.recover(received, result)
    telea = telea_inpaint(received, truth)
    assert l_psnr(photo, recovered, truth) > l_psnr(photo, telea, truth) + 4.0
    assert l_psnr(photo, recovered, truth) > l_psnr(photo, received, truth) + 8.0


def test_another_key_decodes_nothing(imuge, untrained_model_dir, photos):
    photo = cover(photos["chelsea"], 256, 320)
    immunized = imuge.immunize(photo)
    other = Imuge.load(untrained_model_dir, key="someone else")
    share, _, _ = _read(other, immunized, np.zeros(photo.shape[:2], bool))
    assert share == 0.0
    assert _read(imuge, immunized, np.zeros(photo.shape[:2], bool))[0] == 1.0


def test_tampered_hosts_do_not_count_and_far_copies_stand_in(imuge, photos):
    photo = cover(photos["astronaut"], 256, 256)
    immunized = imuge.immunize(photo)
    mask = np.zeros(photo.shape[:2], bool)
    mask[:128, :128] = True  # a quarter: its records live in the other quarters
    share, records, copies = _read(imuge, immunized, mask)
    expected = np.asarray(imuge.pipeline.reference.record(_levels(photo)))[0]
    assert share > 0.85
    assert np.mean(copies[:4, :4] >= 1) >= 0.8  # the tampered quarter's own cells decode
    assert copies[4:, 4:].min() < 2  # from the copies that lie outside it
    decoded = copies > 0
    np.testing.assert_array_equal(records[decoded], expected[decoded])
