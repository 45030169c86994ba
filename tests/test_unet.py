"""The backbone U-Net and PatchGAN: sizes, progressive stages, serialization."""

import keras
import numpy as np
import pytest

from imuge_tf.models.patch_gan import PatchDiscriminator
from imuge_tf.models.unet import UNet

SMALL = {"base_filters": 4, "max_filters": 16, "middle_dilations": (2,)}


def random_images(n, height, width, channels=3, seed=0):
    return np.random.default_rng(seed).random((n, height, width, channels), dtype=np.float32)


@pytest.mark.parametrize("height, width", [(32, 32), (64, 48), (128, 96)])
def test_unet_keeps_the_size_at_any_multiple_of_16(height, width):
    network = UNet(output_channels=1, output_activation="sigmoid", **SMALL)
    output = network(random_images(2, height, width))
    assert output.shape == (2, height, width, 1)
    assert float(np.min(output)) >= 0.0 and float(np.max(output)) <= 1.0


def test_encoder_residual_is_bounded_and_depends_on_the_image():
    network = UNet(output_activation="tanh", **SMALL)
    a, b = network(random_images(1, 32, 32, seed=1)), network(random_images(1, 32, 32, seed=2))
    assert np.max(np.abs(a)) <= 1.0
    assert not np.allclose(a, b)


def test_config_is_flat_and_round_trips():
    network = UNet(output_channels=1, mask_input=True, local_feature_sharing=True,
                   progressive=True, name="decoder", **SMALL)
    config = network.get_config()
    assert all(not isinstance(v, dict) for v in config.values())
    again = UNet.from_config(config)
    assert again.get_config() == config
    assert len(again.weights) == len(network.weights)


def test_keras_file_round_trip_gives_identical_outputs(tmp_path):
    network = UNet(mask_input=True, local_feature_sharing=True, progressive=True,
                   output_activation="sigmoid", name="decoder", norm="batch", **SMALL)
    images, mask = random_images(2, 32, 32), np.zeros((2, 32, 32, 1), np.float32)
    mask[:, 8:16, 8:20] = 1.0
    expected = network([images, mask])
    stage2 = network.progressive_call(images, mask, stage=2, alpha=0.5)
    path = str(tmp_path / "decoder.keras")
    network.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, UNet)
    np.testing.assert_allclose(loaded([images, mask]), expected, atol=1e-6)
    np.testing.assert_allclose(loaded.progressive_call(images, mask, stage=2, alpha=0.5), stage2,
                               atol=1e-6)


def test_progressive_stages_work_at_lower_resolution():
    network = UNet(mask_input=True, progressive=True, output_activation="sigmoid", **SMALL)
    images, mask = random_images(1, 64, 64), np.zeros((1, 64, 64, 1), np.float32)
    # Stage 1 works at 1/8: its output is constant over each 8x8 block up to interpolation,
    # so it is much smoother than the full-resolution stage.
    stage1 = np.asarray(network.progressive_call(images, mask, stage=1))
    stage4 = np.asarray(network.progressive_call(images, mask, stage=4))
    roughness = [np.abs(np.diff(x, axis=1)).mean() for x in (stage1, stage4)]
    assert roughness[0] < roughness[1]
    np.testing.assert_allclose(stage4, network([images, mask]), atol=1e-6)
    # alpha=0 at stage 2 is the stage-1 output (the new segments faded out entirely), up to
    # the upsampling path (2x then 4x instead of 8x): compare block means at 1/8 resolution.
    def block_means(x):
        return np.asarray(x).reshape(1, 8, 8, 8, 8, 3).mean(axis=(2, 4))

    faded_out = network.progressive_call(images, mask, stage=2, alpha=0.0)
    faded_in = network.progressive_call(images, mask, stage=2, alpha=1.0)
    gap_out = np.abs(block_means(faded_out) - block_means(stage1)).mean()
    gap_in = np.abs(block_means(faded_in) - block_means(stage1)).mean()
    assert gap_out < 0.25 * gap_in
    with pytest.raises(ValueError):
        network.progressive_call(images, mask, stage=5)


def test_local_feature_sharing_uses_the_mask():
    network = UNet(mask_input=True, local_feature_sharing=True, **SMALL)
    images = random_images(1, 32, 32)
    empty, full = np.zeros((1, 32, 32, 1), np.float32), np.ones((1, 32, 32, 1), np.float32)
    assert not np.allclose(network([images, empty]), network([images, full]))
    with pytest.raises(ValueError, match="mask_input"):
        UNet(local_feature_sharing=True, **SMALL)


def test_patch_discriminator_scores_patches_and_round_trips(tmp_path):
    network = PatchDiscriminator(filters=4, name="d")
    scores = network(random_images(2, 64, 64))
    assert scores.shape == (2, 8, 8, 1)
    path = str(tmp_path / "d.keras")
    network.save(path)
    np.testing.assert_allclose(keras.saving.load_model(path)(random_images(1, 32, 32)),
                               network(random_images(1, 32, 32)), atol=1e-6)
