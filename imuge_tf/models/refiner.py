"""The reference refiner: a learned decoder that sharpens the self-embedded reference.

The decoded reference (`models/reference.py`) holds the lost content's means over 16 x 16 and
32 x 32 cells. The refiner, a U-Net, sees at a quarter of the photo's resolution the received
photo outside the tamper mask, the mask and the reference, and outputs a correction of the
reference inside the mask: edges continued from the surroundings, cell boundaries smoothed.
The correction is upsampled to full resolution and added to the full-resolution reference, so
the network's cost is a sixteenth of a full-resolution one.

`RefinerModel` owns the network and its training step (L1 inside the mask); `refine` is the one
implementation that training and the inference pipeline both call.
"""

import keras
import tensorflow as tf

from imuge_tf.models.unet import LEVELS, UNet

FACTOR = 4  # the refiner works at 1 / FACTOR of the photo's resolution
MULTIPLE = 2**LEVELS
CORRECTION_RANGE = 64.0  # levels: tanh output times this
CONTEXT_MARGIN = 32  # pixels at the refiner's scale around the mask that the network sees


def build_refiner(base_filters=16, max_filters=64, name="refiner") -> UNet:
    """The refiner network: [context and reference (6 channels, [0, 1]), mask] -> a
    correction in [-1, 1] (zero at initialisation)."""
    return UNet(input_channels=6, output_channels=3, base_filters=base_filters,
                max_filters=max_filters, mask_input=True, output_activation="tanh",
                head_initializer="zeros", name=name)


def _pad_to_multiple(images):
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    padding = [[0, 0], [0, (-height) % MULTIPLE], [0, (-width) % MULTIPLE], [0, 0]]
    return tf.pad(images, padding)


def refine_small(network, context, mask, reference, training=False):
    """At the refiner's scale: context and reference [B, h, w, 3] levels, mask [B, h, w, 1]
    0/1 -> the refined reference [B, h, w, 3] levels (h, w any size)."""
    height, width = tf.shape(context)[1], tf.shape(context)[2]
    inputs = tf.concat([context * (1.0 - mask), reference], axis=-1) / 255.0
    correction = network([_pad_to_multiple(inputs), _pad_to_multiple(mask)], training=training)
    return reference + correction[:, :height, :width] * CORRECTION_RANGE


def _span(flags, margin):
    """First and one-past-last index of the True entries of a 1-D `flags`, widened by
    `margin` and clipped to its length."""
    where = tf.cast(tf.where(flags)[:, 0], tf.int32)
    length = tf.shape(flags)[0]
    return (tf.maximum(tf.reduce_min(where) - margin, 0),
            tf.minimum(tf.reduce_max(where) + 1 + margin, length))


def refine(network, levels, mask, reference):
    """Full resolution: the received photo [1, H, W, 3] levels, the mask [1, H, W, 1] and the
    decoded reference [1, H, W, 3] -> the refined reference, [1, H, W, 3] levels.

    The network runs on the mask's bounding box with CONTEXT_MARGIN of surroundings, so its
    cost follows the tamper, not the photo."""
    height, width = tf.shape(levels)[1], tf.shape(levels)[2]
    small_context = tf.nn.avg_pool2d(levels * (1.0 - mask), FACTOR, FACTOR, "SAME")
    coverage = tf.nn.avg_pool2d(1.0 - mask, FACTOR, FACTOR, "SAME")
    small_context = small_context / tf.maximum(coverage, 1e-6)
    small_mask = tf.cast(coverage < 1.0, tf.float32)
    small_reference = tf.nn.avg_pool2d(reference, FACTOR, FACTOR, "SAME")
    small_height, small_width = tf.shape(small_mask)[1], tf.shape(small_mask)[2]

    def corrected():
        flagged = small_mask[0, :, :, 0] > 0.5
        top, bottom = _span(tf.reduce_any(flagged, axis=1), CONTEXT_MARGIN)
        left, right = _span(tf.reduce_any(flagged, axis=0), CONTEXT_MARGIN)
        box = lambda images: images[:, top:bottom, left:right]  # noqa: E731
        refined = refine_small(network, box(small_context), box(small_mask),
                               box(small_reference))
        correction = refined - box(small_reference)
        return tf.pad(correction, [[0, 0], [top, small_height - bottom],
                                   [left, small_width - right], [0, 0]])

    correction = tf.cond(tf.reduce_any(small_mask > 0.5), corrected,
                         lambda: tf.zeros_like(small_reference))
    correction = tf.image.resize(correction, tf.shape(small_reference)[1:3] * FACTOR,
                                 method="bilinear")
    return tf.clip_by_value(reference + correction[:, :height, :width], 0.0, 255.0)


@keras.saving.register_keras_serializable(package="imuge_tf")
class RefinerModel(keras.Model):
    """Trains the refiner: batches of (context, mask, reference, original) at its scale."""

    def __init__(self, refiner=None, outside_weight=0.1, **kwargs):
        super().__init__(**kwargs)
        self.refiner = refiner if refiner is not None else build_refiner()
        self.outside_weight = float(outside_weight)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.gain_tracker = keras.metrics.Mean(name="l1_gain")

    @property
    def metrics(self):
        return [self.loss_tracker, self.gain_tracker]

    def call(self, inputs, training=False):
        context, mask, reference = inputs
        return refine_small(self.refiner, context, mask, reference, training=training)

    def _scores(self, data, training):
        context, mask, reference, original = data
        refined = self((context, mask, reference), training=training)
        inside = tf.maximum(tf.reduce_sum(mask), 1.0)
        error = tf.reduce_mean(tf.abs(refined - original), axis=-1, keepdims=True)
        loss = tf.reduce_sum(error * mask) / inside
        loss = loss + self.outside_weight * tf.reduce_mean(error * (1.0 - mask))
        baseline = tf.reduce_sum(
            tf.reduce_mean(tf.abs(reference - original), axis=-1, keepdims=True) * mask) / inside
        return loss / 255.0, (baseline - tf.reduce_sum(error * mask) / inside)

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss, gain = self._scores(data, training=True)
        variables = self.refiner.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        self.loss_tracker.update_state(loss)
        self.gain_tracker.update_state(gain)
        return {metric.name: metric.result() for metric in self.metrics}

    def test_step(self, data):
        loss, gain = self._scores(data, training=False)
        self.loss_tracker.update_state(loss)
        self.gain_tracker.update_state(gain)
        return {metric.name: metric.result() for metric in self.metrics}

    def get_config(self):
        return {**super().get_config(), "outside_weight": self.outside_weight,
                "refiner": keras.saving.serialize_keras_object(self.refiner)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        refiner = keras.saving.deserialize_keras_object(config.pop("refiner"))
        return cls(refiner=refiner, **config)
