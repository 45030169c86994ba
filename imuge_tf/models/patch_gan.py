"""PatchGAN discriminator (Isola et al.) for the least-squares adversarial losses (eqs. 7, 9)."""

import keras

from imuge_tf.models.segments import normalization


@keras.saving.register_keras_serializable(package="imuge_tf")
class PatchDiscriminator(keras.Model):
    """Scores overlapping patches of an image as real (1) or generated (0); no sigmoid (LSGAN).

    Args:
        filters: channels of the first conv, doubled by each further downsampling conv.
        downsamplings: stride-2 convs (3 gives 70x70 receptive fields at the paper's size).
        norm: normalization after every conv but the first and the last.
        dtype: the dtype policy of every layer (None: Keras' global policy).
    """

    def __init__(self, filters=64, downsamplings=3, norm="instance", dtype=None,
                 name="discriminator", **kwargs):
        images = keras.Input((None, None, 3), name=f"{name}_image")
        x = images * 2.0 - 1.0
        for index in range(downsamplings + 1):
            last = index == downsamplings
            x = keras.layers.Conv2D(filters * 2 ** min(index, 3), 4, strides=1 if last else 2,
                                    padding="same", name=f"{name}_conv{index}", dtype=dtype)(x)
            if index > 0:
                x = normalization(norm, x.shape[-1], f"{name}_norm{index}", dtype=dtype)(x)
            x = keras.layers.LeakyReLU(0.2, name=f"{name}_act{index}", dtype=dtype)(x)
        scores = keras.layers.Conv2D(1, 4, padding="same", name=f"{name}_scores",
                                     dtype=dtype)(x)
        super().__init__(inputs=images, outputs=scores, name=name, **kwargs)
        if dtype is not None:
            # A functional model does not take `dtype` itself: set it as its layers have it.
            self.dtype_policy = keras.dtype_policies.get(dtype)
        self.filters = filters
        self.downsamplings = downsamplings
        self.norm = norm

    def get_config(self):
        # The base config (name, trainable, dtype), not the functional graph.
        config = super().get_config()
        config.update(filters=self.filters, downsamplings=self.downsamplings, norm=self.norm)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
