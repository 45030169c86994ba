"""The hidden thumbnail (models/hiding.py): written exactly into 8-bit photos, read back from
real PNG files, refused after real JPEG and on never-immunized photos, and a better fill of a
pasted patch than the classical one."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from real_codecs import jpeg, png

from imuge_tf import export as ex
from imuge_tf import scoring
from imuge_tf.attacks.tamper import pyramid_fill
from imuge_tf.config import ConfigError, load_config
from imuge_tf.models import hiding
from imuge_tf.models.factory import build_imuge
from imuge_tf.models.unet import UNet
from imuge_tf.samples import sample_photos

STEP, BLOCK = 6.0, 2


def bundled(index, size):
    return np.asarray(Image.fromarray(sample_photos()[index]).resize((size, size)))


def as_float(photo):
    return tf.constant(photo[None], tf.float32) / 255.0


def hide(photo, residual=None):
    """`photo` (uint8) immunized by the hiding layer alone (plus `residual`), as uint8."""
    x = as_float(photo)
    residual = tf.zeros_like(x) if residual is None else residual
    out = hiding.ThumbnailHiding(STEP, BLOCK)([x, residual])
    return np.asarray(tf.round(tf.clip_by_value(x + out, 0, 1) * 255), np.uint8)[0]


def cell_means(photo):
    return photo.reshape(photo.shape[0] // BLOCK, BLOCK, photo.shape[1] // BLOCK, BLOCK,
                         3).astype(np.float64).mean(axis=(1, 3))


def pasted(photo, donor):
    mask = np.zeros(photo.shape[:2], bool)
    mask[20:60, 70:120] = True
    return np.where(mask[..., None], donor, photo), mask


def test_the_thumbnail_is_read_back_from_a_png_file_and_costs_little():
    photo = bundled(0, 128)
    immunized = hide(photo)
    thumbnail = hiding.read_thumbnail(as_float(png(immunized)), STEP, BLOCK)
    error = np.abs(np.asarray(thumbnail)[0] * 255 - cell_means(photo))
    # Whole levels over 4 pixels put the mean within 1/8 level of the lattice: <= 6 levels.
    assert error.mean() < 4.0 and error.max() < 6.5, (error.mean(), error.max())
    # A shift of at most step / 2 per cell (about step^2 / 12 in MSE), plus the whole-level
    # spreading and the occasional shift the other way to avoid clipping: measured 41.6 dB.
    bound = 10 * np.log10(255**2 / (STEP**2 / 12))
    assert bound - 3.0 < scoring.psnr(photo, immunized) < bound


def test_whole_levels_are_spread_so_flat_cells_keep_their_mean():
    """A constant shift would be rounded the same way on every pixel of a flat cell; the
    snap spreads whole levels instead, so the mean sits within 0.5 / block^2 of the lattice."""
    flat = np.full((64, 64, 3), 117, np.uint8)
    flat[:, 32:] = 3  # dark, so some cells must shift up instead of clipping
    immunized = hide(flat)
    assert np.all(np.abs(immunized.astype(int) - flat) <= STEP)
    thumbnail = np.asarray(hiding.read_thumbnail(as_float(immunized), STEP, BLOCK))[0] * 255
    assert np.abs(thumbnail - cell_means(flat)).max() < 4.0


def test_reliability_tells_a_losslessly_saved_photo_from_jpeg_and_never_immunized():
    photo, donor = bundled(0, 128), bundled(1, 128)
    tampered, mask = pasted(hide(photo), donor)
    plain, _ = pasted(photo, donor)
    mask_t = tf.constant(mask[None, ..., None], tf.float32)

    def reliability(image):
        return float(hiding.thumbnail_reliability(as_float(image), mask_t, STEP, BLOCK)[0, 0, 0, 0])

    assert reliability(png(tampered)) == 1.0
    assert reliability(jpeg(tampered, 90)) == 0.0
    assert reliability(plain) == 0.0


def test_the_hidden_fill_recovers_a_pasted_patch_far_better_than_the_classical_fill():
    photo, donor = bundled(0, 128), bundled(1, 128)
    tampered, mask = pasted(hide(photo), donor)
    received, mask_t = as_float(png(tampered)), tf.constant(mask[None, ..., None],
                                                                   tf.float32)
    classical = pyramid_fill(received, mask_t)
    hidden = hiding.hidden_prefill(received, mask_t, classical, STEP, BLOCK)

    def uint8(x):
        return np.asarray(tf.round(x * 255), np.uint8)[0]

    gain = scoring.l_psnr(photo, uint8(hidden), mask) - scoring.l_psnr(photo, uint8(classical),
                                                                       mask)
    assert gain > 5.0, gain
    # Never immunized: nothing to read, the classical fill comes back unchanged.
    plain, _ = pasted(photo, donor)
    classical_plain = pyramid_fill(as_float(plain), mask_t)
    np.testing.assert_allclose(
        hiding.hidden_prefill(as_float(plain), mask_t, classical_plain, STEP, BLOCK),
        classical_plain, atol=1e-6)


def test_cells_whose_message_was_pasted_over_fall_back_to_the_classical_fill():
    photo = bundled(0, 64)
    immunized = hide(photo)
    mask = np.zeros((64, 64), bool)
    mask[4:12, 4:12] = True      # the hole...
    mask[36:44, 36:44] = True    # ...and the cells holding its message (half an image away)
    tampered = np.where(mask[..., None], 0, immunized).astype(np.uint8)
    received, mask_t = as_float(tampered), tf.constant(mask[None, ..., None], tf.float32)
    usable = np.asarray(hiding.thumbnail_usable(mask_t, BLOCK))[0, ..., 0]
    assert usable[2:6, 2:6].max() == 0.0 and usable[10:14, 10:14].min() == 1.0
    fallback = tf.fill(received.shape, 0.5)
    fill = np.asarray(hiding.hidden_prefill(received, mask_t, fallback, STEP, BLOCK))[0]
    np.testing.assert_allclose(fill[4:12, 4:12], 0.5, atol=1e-6)


def test_the_straight_through_gradient_reaches_the_residual():
    x = as_float(bundled(0, 32))
    residual = tf.Variable(tf.zeros_like(x))
    with tf.GradientTape() as tape:
        out = hiding.ThumbnailHiding(STEP, BLOCK)([x, residual])
        loss = tf.reduce_sum(out * 2.0)
    np.testing.assert_allclose(tape.gradient(loss, residual), 2.0)


def test_the_paper_setting_has_no_thumbnail_and_the_demo_one_does():
    assert load_config("paper").model.hidden_thumbnail_step == 0.0
    assert build_imuge(load_config("smoke")).encoder.thumbnail_step == 0.0
    assert load_config("demo").model.hidden_thumbnail_step == STEP


def test_the_config_switch_builds_a_hiding_encoder_that_round_trips():
    model = build_imuge(load_config("smoke", ["model.hidden_thumbnail_step=6",
                                              "model.decoder_prefill=true"]))
    assert model.encoder.thumbnail_step == 6.0 and model.thumbnail_step == 6.0
    image = as_float(bundled(0, 32))
    restored = UNet.from_config(model.encoder.get_config())
    restored.set_weights(model.encoder.get_weights())
    np.testing.assert_allclose(restored(image), model.encoder(image), atol=1e-6)
    with pytest.raises(ConfigError, match="hidden_thumbnail_block"):
        load_config("smoke", ["model.hidden_thumbnail_block=3"])
    with pytest.raises(ConfigError, match="hidden_thumbnail_step"):
        load_config("smoke", ["model.hidden_thumbnail_step=-2"])
    with pytest.raises(ValueError, match="encoder"):
        UNet(mask_input=True, thumbnail_step=6.0)


@pytest.mark.slow
def test_the_hiding_encoder_converts_to_builtin_tflite_ops_and_matches_keras(tmp_path):
    encoder = build_imuge(load_config("smoke", ["model.hidden_thumbnail_step=6",
                                                "model.carrier_amplitude=4"])).encoder
    saved = ex.save_encoder(encoder, 64, str(tmp_path / "encoder"))
    tflite = ex.convert_saved_model(saved, "fp32")
    ops = ex.tflite_ops(tflite)
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], ops
    image = as_float(bundled(0, 64))
    keras_levels = np.round((image + encoder(image)).numpy() * 255)
    tflite_levels = np.round((image.numpy() + ex.TFLiteEncoder(tflite)(image.numpy())) * 255)
    # Rounding inside the layer may tip a level on float noise; the thumbnail must still read.
    assert np.mean(keras_levels != tflite_levels) < 0.01
    thumbnail = hiding.read_thumbnail(tf.constant(tflite_levels / 255, tf.float32), STEP, BLOCK)
    error = np.abs(np.asarray(thumbnail)[0] * 255 - cell_means(bundled(0, 64)))
    assert np.median(error) < 4.0
