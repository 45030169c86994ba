"""Image-quality measures used in training logs and evaluation, on float images in [0, 1].

`mse_to_psnr` is the package's one PSNR formula: the batched measures here (training logs, the
fidelity hinge of `losses`) and the per-photo scores of `imuge_tf.scoring` all call it.
"""

import tensorflow as tf

MAX_PSNR = 100.0  # reported for identical images instead of infinity
# Below this mean squared error PSNR is over MAX_PSNR anyway: the floor only keeps log finite.
MIN_MSE = 1e-12


def psnr(images, others):
    """PSNR in dB of each sample ([B] tensor), for images in [0, 1]."""
    mse = tf.reduce_mean(tf.square(images - others), axis=[1, 2, 3])
    return mse_to_psnr(mse)


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
    return mse_to_psnr(mse) * has_area, has_area


def mse_to_psnr(mse):
    """PSNR in dB, peak 1.0, of mean squared errors: a tensor, array or number, kept in its
    float dtype (float64 for the per-photo scores); at most MAX_PSNR, also for mse 0."""
    mse = tf.convert_to_tensor(mse)
    value = -10.0 * tf.math.log(tf.maximum(mse, MIN_MSE)) / tf.math.log(
        tf.constant(10.0, mse.dtype))
    return tf.minimum(value, MAX_PSNR)
