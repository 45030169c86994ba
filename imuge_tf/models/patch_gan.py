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
    """

    def __init__(self, filters=64, downsamplings=3, norm="instance", name="discriminator",
                 **kwargs):
        images = keras.Input((None, None, 3), name=f"{name}_image")
        x = images * 2.0 - 1.0
        for index in range(downsamplings + 1):
            last = index == downsamplings
            x = keras.layers.Conv2D(filters * 2 ** min(index, 3), 4, strides=1 if last else 2,
                                    padding="same", name=f"{name}_conv{index}")(x)
            if index > 0:
                x = normalization(norm, x.shape[-1], f"{name}_norm{index}")(x)
            x = keras.layers.LeakyReLU(0.2, name=f"{name}_act{index}")(x)
        scores = keras.layers.Conv2D(1, 4, padding="same", name=f"{name}_scores")(x)
        super().__init__(inputs=images, outputs=scores, name=name, **kwargs)
        self.filters = filters
        self.downsamplings = downsamplings
        self.norm = norm

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "filters": self.filters,
                "downsamplings": self.downsamplings, "norm": self.norm}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
