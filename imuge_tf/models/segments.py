"""The segments of the backbone U-Net (paper section 3.2), as named Keras layers.

Each segment is a layer so that the full U-Net graph and the progressive decoder's
lower-resolution graphs (section 3.3.2) call the very same weights.
"""

import keras

ACTIVATION = "elu"


@keras.saving.register_keras_serializable(package="imuge_tf")
class HalfShift(keras.layers.Layer):
    """Joins to its input a copy circularly shifted by half the height and half the width.

    With it, a convolution at one pixel also sees the pixel half an image away, so the encoder
    can hide the content of one region in a distant one and the decoder and verifier can read
    it back with local filters, instead of learning to route it through the bottleneck. The
    shift by half is its own inverse, so both directions are the same layer.
    """

    def call(self, inputs):
        height, width = keras.ops.shape(inputs)[1], keras.ops.shape(inputs)[2]
        shifted = keras.ops.roll(inputs, height // 2, axis=1)
        shifted = keras.ops.roll(shifted, width // 2, axis=2)
        return keras.ops.concatenate([inputs, shifted], axis=-1)

    def compute_output_shape(self, input_shape):
        channels = None if input_shape[-1] is None else 2 * input_shape[-1]
        return (*input_shape[:-1], channels)


def normalization(norm: str, channels: int, name: str, dtype=None) -> keras.layers.Layer:
    """The normalization layer for `norm` in {"group", "batch", "instance", "none"}."""
    if norm == "group":
        # Largest group count <= 8 that divides the channels (GroupNorm needs a divisor).
        groups = max(g for g in range(1, 9) if channels % g == 0)
        return keras.layers.GroupNormalization(groups=groups, name=name, dtype=dtype)
    if norm == "instance":
        return keras.layers.GroupNormalization(groups=-1, name=name, dtype=dtype)
    if norm == "batch":
        return keras.layers.BatchNormalization(name=name, dtype=dtype)
    if norm == "none":
        return keras.layers.Identity(name=name, dtype=dtype)
    raise ValueError(f"unknown norm '{norm}': expected group, batch, instance or none")


@keras.saving.register_keras_serializable(package="imuge_tf")
class ConvNormAct(keras.layers.Layer):
    """Convolution (plain, strided, dilated or transposed) + normalization + ELU."""

    def __init__(self, filters, kernel_size=3, strides=1, dilation_rate=1, transposed=False,
                 norm="group", **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.dilation_rate = dilation_rate
        self.transposed = transposed
        self.norm = norm
        conv_class = keras.layers.Conv2DTranspose if transposed else keras.layers.Conv2D
        conv_kwargs = {} if transposed else {"dilation_rate": dilation_rate}
        # The inner layers compute in this layer's dtype policy.
        dtype = self.dtype_policy
        self.conv = conv_class(filters, kernel_size, strides=strides, padding="same",
                               name=f"{self.name}_conv", dtype=dtype, **conv_kwargs)
        self.normalize = normalization(norm, filters, f"{self.name}_norm", dtype=dtype)
        self.activate = keras.layers.Activation(ACTIVATION, name=f"{self.name}_act",
                                                dtype=dtype)

    def build(self, input_shape):
        self.conv.build(input_shape)
        output_shape = self.conv.compute_output_shape(input_shape)
        self.normalize.build(output_shape)
        self.built = True

    def call(self, inputs, training=None):
        return self.activate(self.normalize(self.conv(inputs), training=training))

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
                      dilation_rate=self.dilation_rate, transposed=self.transposed,
                      norm=self.norm)
        return config


@keras.saving.register_keras_serializable(package="imuge_tf")
class EncodingSegment(keras.layers.Layer):
    """Conv at the input resolution, then a stride-2 conv: half the size, `filters` channels."""

    def __init__(self, filters, norm="group", **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.norm = norm
        self.conv = ConvNormAct(filters, norm=norm, name=f"{self.name}_conv",
                                dtype=self.dtype_policy)
        self.down = ConvNormAct(filters, strides=2, norm=norm, name=f"{self.name}_down",
                                dtype=self.dtype_policy)

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.down.build(self.conv.compute_output_shape(input_shape))
        self.built = True

    def call(self, inputs, training=None):
        return self.down(self.conv(inputs, training=training), training=training)

    def compute_output_shape(self, input_shape):
        return self.down.compute_output_shape(self.conv.compute_output_shape(input_shape))

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, norm=self.norm)
        return config


@keras.saving.register_keras_serializable(package="imuge_tf")
class MiddleSegment(keras.layers.Layer):
    """Dilated convs at 1/16 resolution with a residual connection: a wide receptive field."""

    def __init__(self, filters, dilations=(2, 4), norm="group", **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.dilations = tuple(dilations)
        self.norm = norm
        self.convs = [
            ConvNormAct(filters, dilation_rate=rate, norm=norm, name=f"{self.name}_dilated{i}",
                        dtype=self.dtype_policy)
            for i, rate in enumerate(self.dilations)
        ]

    def build(self, input_shape):
        for conv in self.convs:
            conv.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        x = inputs
        for conv in self.convs:
            x = conv(x, training=training)
        return x + inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, dilations=list(self.dilations), norm=self.norm)
        return config


@keras.saving.register_keras_serializable(package="imuge_tf")
class DecodingSegment(keras.layers.Layer):
    """Stride-2 transposed conv, then the skip features joined in, then a conv.

    With a `tamper_mask`, the skip features inside the tampered area are replaced by the
    decoder's own upsampled features before joining: local feature sharing, eq. 2 of the paper.
    """

    def __init__(self, filters, norm="group", **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.norm = norm
        self.up = ConvNormAct(filters, strides=2, transposed=True, norm=norm,
                              name=f"{self.name}_up", dtype=self.dtype_policy)
        self.fuse = ConvNormAct(filters, norm=norm, name=f"{self.name}_fuse",
                                dtype=self.dtype_policy)

    def build(self, inputs_shape, skip_shape):
        self.up.build(inputs_shape)
        up_shape = self.up.compute_output_shape(inputs_shape)
        self.fuse.build((*up_shape[:-1], 2 * self.filters))
        self.built = True

    def call(self, inputs, skip, tamper_mask=None, training=None):
        upsampled = self.up(inputs, training=training)
        if tamper_mask is not None:
            # The mask comes as a keyword argument, which Keras does not cast to this layer's
            # compute dtype.
            tamper_mask = keras.ops.cast(tamper_mask, upsampled.dtype)
            skip = upsampled * tamper_mask + skip * (1.0 - tamper_mask)
        joined = keras.ops.concatenate([skip, upsampled], axis=-1)
        return self.fuse(joined, training=training)

    def compute_output_shape(self, inputs_shape, skip_shape):
        return self.up.compute_output_shape(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, norm=self.norm)
        return config
