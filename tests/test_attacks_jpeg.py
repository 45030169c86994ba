"""simulate_jpeg against the real codec (Pillow's libjpeg), its gradients and its validation."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from imuge_tf import scoring
from imuge_tf.attacks.jpeg import (
    quantization_tables,
    real_jpeg,
    simulate_jpeg,
    straight_through_jpeg,
)

# Measured on these crops: 49.3-54.6 dB at QF 50/70/90. 47 dB catches a wrong table or colour
# transform (31-35 dB) and even plain nearest-neighbour chroma upsampling instead of libjpeg's
# triangle filter (45.6-47.5 dB).
PSNR_BAR = 47.0


def _pillow_jpeg(image, quality):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def _to_float(image):
    return tf.constant(image[None].astype(np.float32) / 255.0)


@pytest.fixture(scope="module")
def crops(photos):
    """A crop with 16-multiple sides and one with odd, non-multiple sides."""
    astronaut = photos["astronaut"]
    return {
        "96x112": np.ascontiguousarray(astronaut[100:196, 150:262]),
        "90x117": np.ascontiguousarray(photos["coffee"][40:130, 200:317]),
    }


@pytest.mark.parametrize("name", ["96x112", "90x117"])
@pytest.mark.parametrize("quality", [50, 70, 90])
def test_simulation_matches_pillow(crops, name, quality):
    image = crops[name]
    reference = _pillow_jpeg(image, quality)
    simulated = simulate_jpeg(_to_float(image), quality)[0].numpy()
    assert simulated.shape == image.shape
    # The output is on the 8-bit grid, like a decoded file.
    np.testing.assert_allclose(simulated * 255, np.round(simulated * 255), atol=1e-3)
    psnr = scoring.psnr(np.round(simulated * 255).astype(np.uint8), reference)
    assert psnr > PSNR_BAR, f"PSNR vs Pillow at QF {quality}: {psnr:.1f} dB"
    # And it is a real compression: far from the input at low quality, close at high.
    assert scoring.psnr(simulated, image) < 50


def test_quantization_tables_are_libjpegs(crops):
    """The tables equal the ones Pillow writes into its files for the same quality."""
    for quality in (5, 25, 50, 75, 97):
        buffer = io.BytesIO()
        Image.fromarray(crops["96x112"]).save(buffer, format="JPEG", quality=quality)
        written = Image.open(io.BytesIO(buffer.getvalue())).quantization
        luma, chroma = quantization_tables(tf.constant([quality]))
        np.testing.assert_array_equal(luma[0].numpy().ravel(), written[0])
        np.testing.assert_array_equal(chroma[0].numpy().ravel(), written[1])


@pytest.mark.parametrize("size", [(8, 8), (17, 23), (31, 40)])
def test_small_and_odd_sizes(size):
    rng = np.random.default_rng(1)
    image = rng.uniform(size=(2, *size, 3)).astype(np.float32)
    result = simulate_jpeg(image, 80).numpy()
    assert result.shape == image.shape
    assert result.min() >= 0.0 and result.max() <= 1.0
    # A smooth gradient survives compression well.
    ramp = np.broadcast_to(
        np.linspace(0.2, 0.8, size[1], dtype=np.float32)[None, :, None], size + (3,)
    )
    out = simulate_jpeg(ramp[None], 80).numpy()[0]
    assert np.abs(out - ramp).max() < 0.05


def test_per_sample_quality(crops):
    image = _to_float(crops["96x112"])
    batch = tf.concat([image, image, image], axis=0)
    result = simulate_jpeg(batch, tf.constant([20, 60, 95])).numpy()
    for index, quality in enumerate((20, 60, 95)):
        np.testing.assert_array_equal(result[index], simulate_jpeg(image, quality)[0].numpy())
    errors = [np.mean((result[i] - batch[i].numpy()) ** 2) for i in range(3)]
    assert errors[0] > errors[1] > errors[2]
    # Inside tf.function, with the batch size unknown when tracing.
    traced = tf.function(
        simulate_jpeg,
        input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.float32),
            tf.TensorSpec([None], tf.int32),
        ],
    )
    np.testing.assert_array_equal(traced(batch, tf.constant([20, 60, 95])).numpy(), result)


def test_gradients_are_finite_and_non_zero(crops):
    image = tf.Variable(_to_float(crops["90x117"]))
    weights = tf.random.stateless_uniform(image.shape, [1, 2])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(simulate_jpeg(image, tf.constant([50])) * weights)
    gradient = tape.gradient(loss, image).numpy()
    assert np.all(np.isfinite(gradient))
    # Straight-through rounding: close to the weights themselves, on average.
    assert np.mean(np.abs(gradient)) > 0.1
    assert np.corrcoef(gradient.ravel(), weights.numpy().ravel())[0, 1] > 0.5


def test_straight_through_forward_real_backward_simulated(crops):
    image = tf.Variable(_to_float(crops["96x112"]))
    quality = tf.constant([60])
    with tf.GradientTape(persistent=True) as tape:
        straight = straight_through_jpeg(image, quality)
        simulated = simulate_jpeg(image, quality)
        loss_straight = tf.reduce_sum(straight**2)
        loss_simulated = tf.reduce_sum(simulated * tf.stop_gradient(2 * straight))
    np.testing.assert_allclose(straight.numpy(), real_jpeg(image, quality).numpy(), atol=1e-6)
    np.testing.assert_allclose(
        tape.gradient(loss_straight, image).numpy(),
        tape.gradient(loss_simulated, image).numpy(),
        rtol=1e-5,
        atol=1e-5,
    )
    assert real_jpeg(image, 60).shape == image.shape


@pytest.mark.parametrize("name", ["96x112", "90x117"])
@pytest.mark.parametrize("quality", [30, 75, 95])
def test_real_codec_is_pillows_libjpeg_exactly(crops, name, quality):
    # Same encoder and the same accurate inverse DCT: identical pixels (with TF's default fast
    # IDCT they differed by up to several levels, 42-47 dB).
    real = np.round(real_jpeg(_to_float(crops[name]), quality).numpy()[0] * 255)
    np.testing.assert_array_equal(real, _pillow_jpeg(crops[name], quality))


def test_bad_inputs_raise():
    image = np.full((1, 16, 16, 3), 0.5, np.float32)
    for quality in (0, 101, -5):
        with pytest.raises(ValueError, match="1..100"):
            simulate_jpeg(image, quality)
    with pytest.raises(ValueError, match="1..100"):
        simulate_jpeg(image, np.int64(101))
    with pytest.raises(ValueError, match="rank 3"):
        simulate_jpeg(image[0], 50)
    with pytest.raises(tf.errors.InvalidArgumentError, match="1"):
        simulate_jpeg(image, tf.constant([0]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="above 1"):
        simulate_jpeg(image + 0.6, 50)
    with pytest.raises(tf.errors.InvalidArgumentError, match="below 0"):
        simulate_jpeg(image - 0.6, 50)
    # Within the tolerance is fine.
    simulate_jpeg(np.clip(image + 0.5005, 0, 1.0005), 50)
