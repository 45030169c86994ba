"""The backbone U-Net and PatchGAN: sizes, progressive stages, local feature sharing.

Their configs and `.keras` files are checked with every registered class in
test_serialization.py.
"""

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


def test_local_feature_sharing_replaces_skip_features_inside_the_mask_only():
    # The mask is also a stem input, so any mask-input U-Net depends on it: the sharing path
    # is isolated by the same weights without sharing, fed the same image and mask. Without
    # normalization (whose statistics span the whole image) every layer is local, so the two
    # may differ only inside the mask and within the reach of the convolutions after it.
    sharing = UNet(mask_input=True, local_feature_sharing=True, norm="none", **SMALL)
    plain = UNet(mask_input=True, local_feature_sharing=False, norm="none", **SMALL)
    plain.set_weights(sharing.get_weights())
    images = random_images(1, 64, 64)
    empty = np.zeros((1, 64, 64, 1), np.float32)
    # No tampered pixel: sharing replaces nothing.
    np.testing.assert_array_equal(sharing([images, empty]), plain([images, empty]))

    top, bottom = 24, 40
    mask = empty.copy()
    mask[:, top:bottom, top:bottom] = 1.0
    difference = np.abs(np.asarray(sharing([images, mask])) - np.asarray(plain([images, mask])))
    difference = difference[0].max(axis=-1)
    assert difference[top:bottom, top:bottom].mean() > 1e-3
    # Sharing happens at full and half resolution: after it come a 3x3 conv at half
    # resolution, a stride-2 3x3 transposed conv and a 3x3 conv, a few pixels of reach.
    reach = 6
    far = np.ones_like(difference, bool)
    far[top - reach:bottom + reach, top - reach:bottom + reach] = False
    assert difference[far].max() == 0.0
    with pytest.raises(ValueError, match="mask_input"):
        UNet(local_feature_sharing=True, **SMALL)


def test_patch_discriminator_scores_patches():
    network = PatchDiscriminator(filters=4, name="d")
    scores = network(random_images(2, 64, 64))
    assert scores.shape == (2, 8, 8, 1)
