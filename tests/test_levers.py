"""The training levers beyond the paper (config switches, off by default): each does what its
docstring says on a real batch."""


import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from real_codecs import jpeg

from imuge_tf import export as ex
from imuge_tf import losses
from imuge_tf.attacks.tamper import pyramid_fill
from imuge_tf.config import ConfigError, load_config
from imuge_tf.data import make_dataset
from imuge_tf.models.carrier import CarrierEmbedding, CarrierReader, carrier_tile
from imuge_tf.models.factory import build_imuge
from imuge_tf.models.segments import HalfShift
from imuge_tf.models.unet import UNet
from imuge_tf.samples import sample_photos


@pytest.fixture(scope="module")
def batch():
    dataset, _ = make_dataset(sample_photos()[:4], image_size=32, batch_size=4, seed=5)
    return next(iter(dataset))


def forward(overrides, batch, decoupled=True):
    model = build_imuge(load_config("smoke", overrides))
    outputs = model.forward(batch, stage=tf.constant(4), alpha=tf.constant(1.0),
                            decoupled=tf.constant(decoupled))
    return model, outputs


def test_the_paper_setting_is_the_default():
    config = load_config("paper")
    assert not config.model.decoder_prefill and not config.model.quantize_immunized
    assert config.loss.immunization_psnr_target == 0.0
    assert config.attacks.never_immunized_probability == 0.0
    assert config.attacks.residual_removal_probability == 0.0
    assert not config.model.context_shift
    assert config.loss.encoder_classification_weight == 0.0
    assert config.model.carrier_amplitude == 0.0


def test_fidelity_hinge_is_zero_above_the_target_and_grows_below():
    original = tf.random.stateless_uniform([2, 16, 16, 3], seed=[1, 2])
    close = original + 0.001  # 60 dB
    far = original + 0.05  # 26 dB
    assert float(losses.immunization_hinge_loss(original, close, 36.0)) == 0.0
    shortfall = float(losses.immunization_hinge_loss(original, far, 36.0))
    assert shortfall == pytest.approx(36.0 - 26.02, abs=0.05)
    with tf.GradientTape() as tape:
        tape.watch(close)
        loss = losses.immunization_hinge_loss(original, close, 36.0)
    assert float(tf.reduce_max(tf.abs(tape.gradient(loss, close)))) == 0.0


def test_recovery_loss_leaves_out_weighted_samples():
    original = tf.zeros([2, 8, 8, 3])
    recovered = tf.concat([tf.zeros([1, 8, 8, 3]), tf.ones([1, 8, 8, 3])], axis=0)
    mask = tf.ones([2, 8, 8, 1])
    assert float(losses.recovery_loss(original, recovered, mask)) > 0
    assert float(losses.recovery_loss(original, recovered, mask,
                                      sample_weight=tf.constant([1.0, 0.0]))) == 0.0


def test_never_immunized_samples_are_wholly_flagged(batch):
    _, outputs = forward(["attacks.never_immunized_probability=1.0"], batch)
    assert bool(tf.reduce_all(outputs["never_immunized"]))
    np.testing.assert_array_equal(outputs["true_mask"].numpy(), 1.0)
    # Their attacked input is the original photo: nothing of the encoder's residual in it.
    _, plain = forward(["attacks.never_immunized_probability=1.0",
                        "attacks.skip_probability=1.0"], batch)
    np.testing.assert_allclose(plain["attacked"].numpy(), batch["image"].numpy(), atol=1e-6)


def test_residual_removal_restores_the_original_inside_the_mask(batch):
    _, outputs = forward(["attacks.residual_removal_probability=1.0",
                          "attacks.tampers=[donor]", "attacks.benign=[identity]",
                          "attacks.skip_probability=0.0"], batch)
    mask = outputs["true_mask"].numpy() > 0.5
    inside = np.broadcast_to(mask, outputs["tampered"].shape)
    np.testing.assert_allclose(outputs["tampered"].numpy()[inside],
                               batch["image"].numpy()[inside], atol=1e-6)
    outside = ~inside
    np.testing.assert_allclose(outputs["tampered"].numpy()[outside],
                               outputs["immunized"].numpy()[outside], atol=1e-6)


def test_prefill_decoder_starts_from_the_push_pull_fill(batch):
    model, outputs = forward(["model.decoder_prefill=true", "model.progressive_recovery=false"],
                             batch)
    filled = pyramid_fill(outputs["attacked"], outputs["true_mask"])
    # The correction head is zero-initialised: before training, R returns the fill itself.
    np.testing.assert_allclose(outputs["recovered"].numpy(), filled.numpy(), atol=1e-6)
    assert model.decoder.output_activation == "tanh"


def test_quantized_immunized_images_sit_on_8_bit_levels(batch):
    _, outputs = forward(["model.quantize_immunized=true"], batch)
    levels = outputs["immunized"].numpy() * 255.0
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
    # ...and the encoder still gets a gradient through the rounding (straight-through).
    model = build_imuge(load_config("smoke", ["model.quantize_immunized=true"]))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model.immunize(batch["image"]))
    gradients = tape.gradient(loss, model.encoder.trainable_variables)
    assert any(float(tf.reduce_max(tf.abs(g))) > 0 for g in gradients)


def test_levers_round_trip_through_get_config():
    model = build_imuge(load_config("smoke", [
        "model.decoder_prefill=true", "model.quantize_immunized=true",
        "loss.immunization_psnr_target=35", "attacks.never_immunized_probability=0.2",
        "attacks.residual_removal_probability=0.3", "model.context_shift=true",
        "loss.encoder_classification_weight=0.1"]))
    restored = type(model).from_config(model.get_config())
    for name in ("decoder_prefill", "quantize_immunized", "immunization_psnr_target",
                 "never_immunized_probability", "residual_removal_probability",
                 "encoder_classification_weight"):
        assert getattr(restored, name) == getattr(model, name)
    assert restored.encoder.context_shift and restored.decoder.context_shift


def test_half_shift_joins_the_opposite_region_and_is_its_own_inverse():
    image = tf.random.stateless_uniform([1, 8, 6, 2], seed=[3, 4])
    joined = HalfShift()(image).numpy()
    np.testing.assert_array_equal(joined[..., :2], image.numpy())
    np.testing.assert_array_equal(joined[0, 0, 0, 2:], image.numpy()[0, 4, 3])
    twice = HalfShift()(joined[..., 2:]).numpy()[..., 2:]
    np.testing.assert_array_equal(twice, image.numpy())


def test_context_shift_lets_the_encoder_see_the_opposite_region():
    """Changing one block changes the residual half an image away, and only with the lever:
    without it, the smoke U-Net's receptive field (about 190 px, no normalization statistics
    here) does not reach 128 px in both directions."""
    image = np.asarray(sample_photos()[0][:256, :256], np.float32) / 255.0
    changed = image.copy()
    changed[200:216, 200:216] = 0.0
    for shift in (True, False):
        encoder = build_imuge(load_config(
            "smoke", [f"model.context_shift={str(shift).lower()}", "model.norm=none"])).encoder
        before, after = encoder(image[None]).numpy(), encoder(changed[None]).numpy()
        far = np.abs(after[0, 72:88, 72:88] - before[0, 72:88, 72:88]).max()
        assert (far > 1e-4) == shift, (shift, far)


@pytest.mark.parametrize("decoupled", [True, False])
def test_encoder_classification_weight_sends_l_cls_into_the_encoder(batch, decoupled):
    """Paper: no L_cls gradient reaches E while decoupled. With the lever, E gets exactly
    `encoder_classification_weight` times the L_cls gradient, decoupled or not."""
    def encoder_gradient(overrides):
        tf.keras.utils.set_random_seed(0)
        model = build_imuge(load_config("smoke", overrides))
        with tf.GradientTape() as tape:
            outputs = model.forward(batch, tf.constant(4), tf.constant(1.0),
                                    tf.constant(decoupled), training=True)
            loss = losses.tamper_classification_loss(outputs["predicted_mask"],
                                                     outputs["true_mask"])
        gradient = tape.gradient(loss, model.encoder.trainable_variables[0])
        return None if gradient is None else gradient.numpy()

    paper = encoder_gradient([])
    lever = encoder_gradient(["loss.encoder_classification_weight=0.5"])
    assert lever is not None and np.abs(lever).max() > 0
    if decoupled:
        assert paper is None or np.abs(paper).max() == 0
    else:
        # After decoupling the paper's E gradient is that of L_cls itself (weight applied in
        # L_G); the lever rescales it to weight / classification_weight.
        np.testing.assert_allclose(lever, paper * 0.5 / 0.01, rtol=1e-3, atol=1e-9)


def test_carrier_tile_is_a_zero_mean_grid_of_signed_cells():
    tile = carrier_tile(cell=2, period=16)
    assert tile.shape == (16, 16) and set(np.unique(tile)) == {-1.0, 1.0}
    assert tile.sum() == 0.0
    np.testing.assert_array_equal(tile[::2, ::2], tile[1::2, 1::2])  # 2 x 2 cells
    with pytest.raises(ValueError, match="multiple of the cell"):
        carrier_tile(cell=3, period=16)


def _bundled(index, size, dtype=np.float32):
    """Bundled photo `index` resized to size x size; floats in [0, 1] or uint8."""
    photo = np.asarray(Image.fromarray(sample_photos()[index]).resize((size, size)))
    return photo.astype(np.float32) / 255.0 if dtype == np.float32 else photo


def test_carrier_survives_real_jpeg_and_is_absent_where_content_was_pasted():
    """Through a real libjpeg round trip at quality 90, the reader sees the carrier over the
    immunized photo and not over a patch of another, never-immunized photo."""
    photo, donor = _bundled(0, 128), _bundled(1, 128, np.uint8)
    embed = CarrierEmbedding(amplitude=4 / 255)
    immunized = np.clip(photo + embed(np.zeros_like(photo)[None]).numpy()[0], 0, 1)
    tampered = np.round(immunized * 255).astype(np.uint8)
    tampered[32:96, 64:128] = donor[32:96, 64:128]
    received = jpeg(tampered, 90).astype(np.float32)[None] / 255.0
    strength = CarrierReader(amplitude=4 / 255)(received).numpy()[0, ..., 1]
    intact, pasted = strength[40:88, 8:48], strength[44:84, 76:116]
    assert np.median(intact) > 0.5, np.median(intact)
    assert np.median(np.abs(pasted)) < 0.2, np.median(np.abs(pasted))


def test_carrier_layers_round_trip_and_refuse_progressive():
    model = build_imuge(load_config("smoke", ["model.carrier_amplitude=4"]))
    assert (model.encoder.carrier, model.verifier.carrier, model.decoder.carrier) == (
        "embed", "read", "none")
    image = tf.random.stateless_uniform([1, 32, 32, 3], seed=[1, 2])
    for network in (model.encoder, model.verifier):
        restored = type(network).from_config(network.get_config())
        restored.set_weights(network.get_weights())
        np.testing.assert_allclose(restored(image).numpy(), network(image).numpy(), atol=1e-6)
    # A zero encoder head leaves exactly the carrier: +-4 grey levels.
    head = model.encoder.get_layer("encoder_head")
    head.set_weights([np.zeros_like(w) for w in head.get_weights()])
    residual = model.encoder(image).numpy()
    np.testing.assert_allclose(np.abs(residual), 4 / 255, rtol=1e-5)
    with pytest.raises(ValueError, match="progressive"):
        UNet(carrier="read", progressive=True)
    with pytest.raises(ConfigError, match="model.carrier_amplitude"):
        load_config("smoke", ["model.carrier_amplitude=-1"])


@pytest.mark.slow  # an export: a TFLite conversion
def test_carrier_encoder_converts_to_builtin_tflite_ops(tmp_path):
    """The fixed-size export folds the pattern into a constant; with the learned head zeroed,
    the TFLite residual is exactly the +-4-level carrier."""
    encoder = build_imuge(load_config("smoke", ["model.carrier_amplitude=4"])).encoder
    head = encoder.get_layer("encoder_head")
    head.set_weights([np.zeros_like(w) for w in head.get_weights()])
    saved = ex.save_encoder(encoder, 64, str(tmp_path / "encoder"))
    tflite = ex.convert_saved_model(saved, "fp32")
    ops = ex.tflite_ops(tflite)
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], ops
    image = _bundled(0, 64)[None]
    residual = ex.TFLiteEncoder(tflite)(image)
    np.testing.assert_allclose(np.abs(residual), 4 / 255, rtol=1e-5)
    assert residual.mean() == pytest.approx(0.0, abs=0.05 / 255)


@pytest.mark.parametrize("protect", [True, False])
def test_a_protected_carrier_cannot_be_cancelled_by_the_learned_residual(protect):
    """The residual an encoder learns when it cancels the carrier (minus the pattern, plus
    noise) removes it unless the embedding is protected."""
    photo = _bundled(2, 128)[None]
    embed = CarrierEmbedding(amplitude=4 / 255, protect=protect)
    pattern = embed(np.zeros_like(photo)).numpy()  # the carrier alone
    noise = np.random.default_rng(0).normal(0, 2 / 255, photo.shape).astype(np.float32)
    immunized = np.clip(photo + embed(noise - pattern).numpy(), 0, 1)
    immunized = (np.round(immunized * 255) / 255).astype(np.float32)
    strength = float(np.median(CarrierReader(amplitude=4 / 255)(immunized).numpy()[..., 1]))
    if protect:
        assert strength > 0.7, strength
    else:
        assert abs(strength) < 0.15, strength


def test_the_config_protects_the_carrier_by_default():
    encoder = build_imuge(load_config("smoke", ["model.carrier_amplitude=4"])).encoder
    assert encoder.carrier_protect and encoder.get_layer("encoder_carrier").protect
    restored = type(encoder).from_config(encoder.get_config())
    assert restored.get_layer("encoder_carrier").protect
