"""Turns a `Config` into networks: the one place where config objects meet model classes.

Every network receives plain keyword arguments, so its `get_config()` is flat and `.keras`
files load without the config module.
"""

import dataclasses

import keras

from imuge_tf.config import Config
from imuge_tf.models.imuge import ImugeModel
from imuge_tf.models.patch_gan import PatchDiscriminator
from imuge_tf.models.unet import UNet

SAMPLE_COMPOSITION_KEYS = ("never_immunized_probability", "residual_removal_probability")


def _unet_arguments(config: Config) -> dict:
    model = config.model
    return {
        "base_filters": model.base_filters,
        "max_filters": model.max_filters,
        "norm": model.norm,
        "middle_dilations": model.middle_dilations,
        "context_shift": model.context_shift,
    }


def _carrier_arguments(config: Config, role: str) -> dict:
    """E embeds the carrier and V reads it when `model.carrier_amplitude` > 0."""
    levels = config.model.carrier_amplitude
    if levels <= 0:
        return {}
    arguments = {"carrier": role, "carrier_amplitude": levels / 255.0}
    if role == "embed":
        arguments["carrier_protect"] = config.model.carrier_protect
    return arguments


def _thumbnail_arguments(config: Config) -> dict:
    """E writes the hidden thumbnail when `model.hidden_thumbnail_step` > 0."""
    model = config.model
    if model.hidden_thumbnail_step <= 0:
        return {}
    return {"thumbnail_step": model.hidden_thumbnail_step,
            "thumbnail_block": model.hidden_thumbnail_block}


def build_encoder(config: Config) -> UNet:
    """E: image -> residual R in [-1, 1] (residual learning, section 3.2), plus the carrier."""
    return UNet(output_channels=3, output_activation="tanh", name="encoder",
                **_unet_arguments(config), **_carrier_arguments(config, "embed"),
                **_thumbnail_arguments(config))


def build_verifier(config: Config) -> UNet:
    """V: image -> per-pixel tamper probability."""
    return UNet(output_channels=1, output_activation="sigmoid", name="verifier",
                **_unet_arguments(config), **_carrier_arguments(config, "read"))


def build_decoder(config: Config) -> UNet:
    """R: [rectified image, mask] -> recovered image in [0, 1] (tanh rescaled = sigmoid(2x)).

    With `decoder_prefill`, R sees the push-pull fill of the hole and outputs a correction in
    [-1, 1] (tanh), zero at the start so that training begins from the classical fill.
    """
    model = config.model
    prefill = model.decoder_prefill
    return UNet(output_channels=3, output_activation="tanh" if prefill else "sigmoid",
                head_initializer="zeros" if prefill else "glorot_uniform", mask_input=True,
                local_feature_sharing=model.local_feature_sharing,
                progressive=model.progressive_recovery, name="decoder",
                **_unet_arguments(config))


def build_discriminator(config: Config, name: str) -> PatchDiscriminator:
    norm = "instance" if config.model.norm != "none" else "none"
    return PatchDiscriminator(filters=config.model.discriminator_filters, norm=norm, name=name)


def attack_arguments(config: Config) -> dict:
    """The attack layer's flat keyword arguments."""
    attacks = config.attacks
    arguments = dataclasses.asdict(attacks)
    arguments["benign_attacks"] = tuple(arguments.pop("benign"))
    arguments["tamper_kinds"] = tuple(arguments.pop("tampers"))
    for key in SAMPLE_COMPOSITION_KEYS:  # the model's, not the attack layer's
        arguments.pop(key)
    return {key: tuple(value) if isinstance(value, list) else value
            for key, value in arguments.items()}


def build_imuge(config: Config) -> ImugeModel:
    """The full trainable model (call inside `strategy.scope()` for distributed training)."""
    model, loss, train = config.model, config.loss, config.train
    with_discriminators = model.discriminators
    return ImugeModel(
        encoder=build_encoder(config),
        verifier=build_verifier(config),
        decoder=build_decoder(config),
        container_discriminator=build_discriminator(config, "container_discriminator")
        if with_discriminators else None,
        recovery_discriminator=build_discriminator(config, "recovery_discriminator")
        if with_discriminators else None,
        attacks=attack_arguments(config),
        use_verifier=model.verifier,
        classification_weight=loss.classification_weight,
        adversarial_weight=loss.adversarial_weight,
        immunization_weight=loss.immunization_weight,
        container_adversarial_weight=loss.container_adversarial_weight,
        steps_per_epoch=train.steps_per_epoch,
        stage_epochs=train.stage_epochs,
        fade_fraction=train.fade_fraction,
        decoupling_epochs=train.decoupling_epochs,
        progressive_recovery=model.progressive_recovery,
        task_decoupling=model.task_decoupling,
        decoder_prefill=model.decoder_prefill,
        quantize_immunized=model.quantize_immunized,
        immunization_psnr_target=loss.immunization_psnr_target,
        encoder_classification_weight=loss.encoder_classification_weight,
        thumbnail_step=model.hidden_thumbnail_step,
        thumbnail_block=model.hidden_thumbnail_block,
        never_immunized_probability=config.attacks.never_immunized_probability,
        residual_removal_probability=config.attacks.residual_removal_probability,
        name="imuge",
    )


def build_optimizers(config: Config):
    """(generator optimizer, discriminator optimizer): Adam as in section 4.1."""
    train = config.train
    return (keras.optimizers.Adam(train.learning_rate, beta_1=train.beta_1),
            keras.optimizers.Adam(train.discriminator_learning_rate, beta_1=train.beta_1))


def compile_imuge(model: ImugeModel, config: Config) -> ImugeModel:
    generator_optimizer, discriminator_optimizer = build_optimizers(config)
    # No XLA: the attack layer uses ops XLA cannot compile (the real JPEG codec), and on the
    # CPU XLA was slower here (docs/design.md).
    model.compile(generator_optimizer=generator_optimizer,
                  discriminator_optimizer=discriminator_optimizer, jit_compile=False)
    return model
