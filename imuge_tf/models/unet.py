"""The backbone U-Net of the paper (section 3.2), shared by the encoder, verifier and decoder.

Levels are numbered by resolution: level k works at 1/2^k of the input size. The stem maps
the image to level-0 features; encoding segment k takes level k-1 to level k (k = 1..4); the
middle segment works at level 4 (1/16); decoding segment k takes level k back to level k-1,
joining the skip features of level k-1; a 1x1 conv + activation head makes the output.

Progressive recovery (section 3.3.2) reuses the same segments: at stage s (1..4) the network
starts at level 4-s, on the input downsampled to that level, with a 1x1 "from image" conv in
place of the missing upper segments and a 1x1 "to image" conv in place of the missing head;
the segments of a new stage are faded in by `alpha`, as in PG-GAN.
"""

import keras

from imuge_tf.models.carrier import DEFAULT_AMPLITUDE, CarrierEmbedding, CarrierReader
from imuge_tf.models.hiding import DEFAULT_BLOCK, ThumbnailHiding
from imuge_tf.models.segments import (
    ConvNormAct,
    DecodingSegment,
    EncodingSegment,
    HalfShift,
    MiddleSegment,
)

LEVELS = 4
OUTPUT_ACTIVATIONS = ("tanh", "sigmoid", "linear")
CARRIER_ROLES = ("none", "embed", "read")
# Local feature sharing (eq. 2) happens "in the first two levels" only: the decoding segments
# whose outputs are at full and half resolution.
SHARING_LEVELS = (0, 1)
EXACT_DTYPE = "float32"


def pool_to_level(x, level):
    """Average-pools `x` down to `level` (a factor of 2^level)."""
    if level == 0:
        return x
    factor = 2**level
    return keras.ops.average_pool(x, factor, strides=factor, padding="valid")


def upsample(x, factor):
    """Bilinear upsampling of `x` by an integer factor."""
    if factor == 1:
        return x
    height, width = keras.ops.shape(x)[1], keras.ops.shape(x)[2]
    return keras.ops.image.resize(x, (height * factor, width * factor), interpolation="bilinear")


@keras.saving.register_keras_serializable(package="imuge_tf")
class UNet(keras.Model):
    """A functional U-Net: image (and optionally a tamper mask) in, a same-size map out.

    Args:
        input_channels: channels of the image input.
        output_channels: channels of the output (3 for images, 1 for masks).
        base_filters: channels at level 0; doubled by each encoding segment...
        max_filters: ...up to this cap.
        norm: "group", "batch", "instance" or "none".
        middle_dilations: dilation rates of the middle segment's convs.
        output_activation: "tanh" (a residual in [-1, 1]), "sigmoid" (an image or a
            probability in [0, 1]) or "linear".
        mask_input: if True the model takes `[image, mask]`; the mask (1 = removed) is fed
            to the stem as a fourth channel and drives local feature sharing.
        local_feature_sharing: eq. 2 in the two highest-resolution decoding segments
            (needs `mask_input`).
        progressive: create the extra 1x1 layers used by `progressive_call` at stages 1-3.
        head_initializer: kernel initializer of the output heads ("zeros" makes a residual
            head start at exactly zero).
        context_shift: the stem also sees its input shifted by half the image (`HalfShift`),
            so that information can be hidden in, and read from, the opposite region.
        carrier: "embed" adds the fixed carrier pattern (`carrier.py`) to the output, "read"
            feeds the stem the carrier's local strength as extra channels, "none" neither.
        carrier_amplitude: the carrier's amplitude, in [0, 1] image units.
        carrier_protect: with carrier="embed", the learned output cannot cancel the carrier
            (`CarrierEmbedding`). False by default so that models saved before it load as
            they were trained; the config turns it on.
        thumbnail_step: > 0 (8-bit levels; only for an encoder, whose output is a residual):
            the immunized image `image + output` carries a hidden thumbnail of the image
            (`hiding.ThumbnailHiding`, after the carrier); 0 = none.
        thumbnail_block: the thumbnail's cell size in pixels.
        dtype: the dtype policy of the network's layers (None: Keras' global policy); the
            carrier and thumbnail layers always compute in float32.
    """

    def __init__(self, input_channels=3, output_channels=3, base_filters=16, max_filters=256,
                 norm="group", middle_dilations=(2, 4), output_activation="tanh",
                 mask_input=False, local_feature_sharing=False, progressive=False,
                 head_initializer="glorot_uniform", context_shift=False, carrier="none",
                 carrier_amplitude=DEFAULT_AMPLITUDE, carrier_protect=False, thumbnail_step=0.0,
                 thumbnail_block=DEFAULT_BLOCK, dtype=None, name="unet", **kwargs):
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(f"output_activation must be one of {OUTPUT_ACTIVATIONS}, "
                             f"got '{output_activation}'")
        if local_feature_sharing and not mask_input:
            raise ValueError("local_feature_sharing needs mask_input=True (eq. 2 uses the mask)")
        if carrier not in CARRIER_ROLES:
            raise ValueError(f"carrier must be one of {CARRIER_ROLES}, got '{carrier}'")
        if thumbnail_step > 0 and (mask_input or progressive or output_channels != input_channels):
            raise ValueError("a hidden thumbnail is written by an encoder: an image-in, "
                             "residual-out U-Net without mask input or progressive stages")
        if carrier != "none" and progressive:
            raise ValueError("the carrier works at full resolution only: it cannot be combined "
                             "with progressive=True")
        channels = [min(base_filters * 2**level, max_filters) for level in range(LEVELS + 1)]
        # The carrier and the hidden thumbnail work on faint patterns and exact 8-bit levels,
        # which half precision cannot hold: they compute in float32 whatever `dtype` is.
        reader = (CarrierReader(carrier_amplitude, name=f"{name}_carrier_reader",
                                dtype=EXACT_DTYPE) if carrier == "read" else None)
        stem_channels = (input_channels + (1 if mask_input else 0)
                         + (len(reader.windows) if reader else 0)) * (2 if context_shift else 1)

        # Layers first, so that the functional graph below and `progressive_call` share them.
        from_image = {0: ConvNormAct(channels[0], norm=norm, name=f"{name}_stem", dtype=dtype)}
        to_image = {0: self._head(output_channels, output_activation, head_initializer,
                                 f"{name}_head", dtype)}
        encoders = {
            level: EncodingSegment(channels[level], norm=norm, name=f"{name}_encode{level}",
                                   dtype=dtype)
            for level in range(1, LEVELS + 1)
        }
        middle = MiddleSegment(channels[LEVELS], dilations=middle_dilations, norm=norm,
                               name=f"{name}_middle", dtype=dtype)
        decoders = {
            level: DecodingSegment(channels[level - 1], norm=norm, name=f"{name}_decode{level}",
                                   dtype=dtype)
            for level in range(1, LEVELS + 1)
        }
        if progressive:
            for level in range(1, LEVELS):
                from_image[level] = ConvNormAct(channels[level], kernel_size=1, norm=norm,
                                                name=f"{name}_from_image{level}", dtype=dtype)
                to_image[level] = self._head(output_channels, output_activation,
                                             head_initializer, f"{name}_to_image{level}", dtype)

        image = keras.Input((None, None, input_channels), name=f"{name}_image")
        mask = keras.Input((None, None, 1), name=f"{name}_mask") if mask_input else None
        shift = HalfShift(name=f"{name}_half_shift", dtype=dtype) if context_shift else None
        layers = (from_image, to_image, encoders, middle, decoders, shift, reader)
        output = _forward(layers, image, mask, top=0, alpha=None,
                          share_features=local_feature_sharing)
        if carrier == "embed":
            output = CarrierEmbedding(carrier_amplitude, protect=carrier_protect,
                                      name=f"{name}_carrier", dtype=EXACT_DTYPE)(output)
        if thumbnail_step > 0:
            output = ThumbnailHiding(thumbnail_step, thumbnail_block,
                                     name=f"{name}_thumbnail",
                                     dtype=EXACT_DTYPE)([image, output])
        super().__init__(inputs=[image, mask] if mask_input else image, outputs=output,
                         name=name, **kwargs)
        if dtype is not None:
            # A functional model does not take `dtype` itself: set it as its layers have it,
            # so that get_config() gives it back.
            self.dtype_policy = keras.dtype_policies.get(dtype)

        self.input_channels = input_channels
        self.output_channels = output_channels
        self.base_filters = base_filters
        self.max_filters = max_filters
        self.norm = norm
        self.middle_dilations = tuple(middle_dilations)
        self.output_activation = output_activation
        self.mask_input = mask_input
        self.local_feature_sharing = local_feature_sharing
        self.progressive = progressive
        self.head_initializer = head_initializer
        self.context_shift = context_shift
        self.carrier = carrier
        self.carrier_amplitude = float(carrier_amplitude)
        self.carrier_protect = bool(carrier_protect)
        self.thumbnail_step = float(thumbnail_step)
        self.thumbnail_block = int(thumbnail_block)
        self._unet_layers = layers
        # The stage-only layers are not in the functional graph: build them here so their
        # weights exist before an optimizer is built and before a `.keras` file is loaded.
        for level in range(1, LEVELS) if progressive else ():
            from_image[level].build((None, None, None, stem_channels))
            to_image[level].build((None, None, None, channels[level]))
        self.stage_layers = [from_image[level] for level in range(1, LEVELS) if progressive] + [
            to_image[level] for level in range(1, LEVELS) if progressive]

    @staticmethod
    def _head(output_channels, activation, initializer, name, dtype):
        return keras.layers.Conv2D(output_channels, 1, activation=activation,
                                   kernel_initializer=initializer, name=name, dtype=dtype)

    def progressive_call(self, image, mask=None, stage=LEVELS, alpha=1.0, training=None):
        """The output of progressive-recovery stage `stage` (1..4), upsampled to full size.

        Stage s works at 1/2^(4-s) of the input size. `alpha` in [0, 1] fades in the segments
        new at this stage (1 = fully in). Stage 4 with alpha 1 is exactly `self([image, mask])`.
        """
        if not self.progressive and stage != LEVELS:
            raise ValueError("this U-Net was built with progressive=False: only stage 4 exists")
        if stage not in range(1, LEVELS + 1):
            raise ValueError(f"stage must be 1..{LEVELS}, got {stage}")
        top = LEVELS - stage
        output = _forward(self._unet_layers, image, mask, top=top,
                          alpha=alpha if stage > 1 else None,
                          share_features=self.local_feature_sharing, training=training)
        return upsample(output, 2**top)

    def get_config(self):
        # The base config (name, trainable, dtype), not the functional graph: the network is
        # rebuilt from its constructor arguments.
        config = super().get_config()
        config.update({
            "input_channels": self.input_channels,
            "output_channels": self.output_channels,
            "base_filters": self.base_filters,
            "max_filters": self.max_filters,
            "norm": self.norm,
            "middle_dilations": list(self.middle_dilations),
            "output_activation": self.output_activation,
            "mask_input": self.mask_input,
            "local_feature_sharing": self.local_feature_sharing,
            "progressive": self.progressive,
            "head_initializer": self.head_initializer,
            "context_shift": self.context_shift,
            "carrier": self.carrier,
            "carrier_amplitude": self.carrier_amplitude,
            "carrier_protect": self.carrier_protect,
            "thumbnail_step": self.thumbnail_step,
            "thumbnail_block": self.thumbnail_block,
        })
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _forward(layers, image, mask, top, alpha, share_features, training=None):
    """The U-Net from level `top` down and back; fades in level `top`'s segments by `alpha`.

    `alpha=None` means no fading (the full network at its top level).
    """
    from_image, to_image, encoders, middle, decoders, shift, reader = layers

    def stem_input(level):
        x = pool_to_level(image, level) * 2.0 - 1.0  # the networks see images in [-1, 1]
        if mask is not None:
            x = keras.ops.concatenate([x, pool_to_level(mask, level)], axis=-1)
        if reader is not None:  # never progressive: level is 0
            x = keras.ops.concatenate([x, reader(image)], axis=-1)
        return x if shift is None else shift(x)

    fading = alpha is not None
    features = {top: from_image[top](stem_input(top), training=training)}
    below = encoders[top + 1](features[top], training=training)
    if fading:
        # The input path of the previous stage fades out as the new segment fades in.
        old = from_image[top + 1](stem_input(top + 1), training=training)
        below = alpha * below + (1.0 - alpha) * old
    features[top + 1] = below
    for level in range(top + 2, LEVELS + 1):
        features[level] = encoders[level](features[level - 1], training=training)

    x = middle(features[LEVELS], training=training)
    decoded = {}
    for level in range(LEVELS, top, -1):
        shared_mask = None
        if share_features and (level - 1) in SHARING_LEVELS:
            shared_mask = pool_to_level(mask, level - 1)
        x = decoders[level](x, features[level - 1], tamper_mask=shared_mask, training=training)
        decoded[level - 1] = x

    output = to_image[top](x)
    if fading:
        previous = upsample(to_image[top + 1](decoded[top + 1]), 2)
        output = alpha * output + (1.0 - alpha) * previous
    return output
