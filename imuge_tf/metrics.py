"""Image-quality measures used in training logs and evaluation, on float images in [0, 1]."""

import tensorflow as tf

MAX_PSNR = 100.0  # reported for identical images instead of infinity


def psnr(images, others):
    """PSNR in dB of each sample ([B] tensor), for images in [0, 1]."""
    mse = tf.reduce_mean(tf.square(images - others), axis=[1, 2, 3])
    return _mse_to_psnr(mse)


def masked_psnr(images, others, mask):
    """L-PSNR: PSNR inside the mask of each sample, and whether the sample has a mask at all.

    Returns (psnr [B], has_area [B] float); samples without masked pixels get 0 dB and
    has_area 0, so that a mean weighted by has_area skips them.
    """
    channels = tf.cast(tf.shape(images)[-1], images.dtype)
    area = tf.reduce_sum(mask, axis=[1, 2, 3])
    squared = tf.reduce_sum(tf.square(images - others) * mask, axis=[1, 2, 3])
    mse = tf.math.divide_no_nan(squared, area * channels)
    has_area = tf.cast(area > 0, images.dtype)
    return _mse_to_psnr(mse) * has_area, has_area


def _mse_to_psnr(mse):
    value = -10.0 * tf.math.log(tf.maximum(mse, 1e-12)) / tf.math.log(10.0)
    return tf.minimum(value, MAX_PSNR)
