"""Malicious tampers of the attack layer (paper section 3.2, eq. 1).

Each tamper builds an irrelevant image I_irr and pastes it inside the mask:
``I_A = I_irr * M + I_M * (1 - M)``. With a binary mask the pixels outside it come back
bit-identical and those inside equal I_irr exactly. Masks are float32 [B, H, W, 1], 1 = tampered.
"""

import tensorflow as tf

from imuge_tf.attacks.benign import uniform_per_sample

__all__ = ["TAMPERS", "clone_stamp", "composite", "replace_with_colour", "replace_with_donor"]


def composite(images, irrelevant, masks):
    """Eq. 1: `irrelevant` inside the mask, `images` outside it."""
    return irrelevant * masks + images * (1.0 - masks)


def replace_with_donor(images, donors, masks):
    """Content replacement from other (irrelevant) images `donors`, same shape as `images`."""
    return composite(images, donors, masks)


def replace_with_colour(images, masks, seeds):
    """Content replacement by one flat colour per sample, uniform in the RGB cube."""
    colours = uniform_per_sample(seeds, shape=[3])
    return composite(images, tf.reshape(colours, [-1, 1, 1, 3]), masks)


def _roll_per_sample(images, shift, axis):
    """Wrap-around shift of each sample by its own amount along `axis` (1 or 2)."""
    size = tf.shape(images)[axis]
    source = tf.math.floormod(tf.range(size)[None, :] - shift[:, None], size)
    return tf.gather(images, source, axis=axis, batch_dims=1)


def clone_stamp(images, masks, seeds, shift_range=(0.1, 0.4)):
    """Clone stamp: I_irr is the image itself shifted (with wrap-around) by a random fraction of
    its height and width, each uniform in `shift_range` with a random sign; the shift is at
    least one pixel on both axes, so cloned content never lands on itself."""
    lo, hi = shift_range
    if not 0.0 <= lo <= hi < 1.0:
        raise ValueError(f"shift_range must satisfy 0 <= min <= max < 1, got {shift_range!r}")
    draws = uniform_per_sample(seeds, shape=[4])
    shape = tf.shape(images)
    shifts = []
    for axis, fraction, sign in ((1, draws[:, 0], draws[:, 1]), (2, draws[:, 2], draws[:, 3])):
        size = shape[axis]
        amount = tf.round((lo + (hi - lo) * fraction) * tf.cast(size, tf.float32))
        amount = tf.clip_by_value(tf.cast(amount, tf.int32), 1, tf.maximum(size - 1, 1))
        shifts.append(tf.where(sign < 0.5, -amount, amount))
    shifted = _roll_per_sample(_roll_per_sample(images, shifts[0], 1), shifts[1], 2)
    return composite(images, shifted, masks)


def _donor(images, donors, masks, seeds):
    del seeds
    return replace_with_donor(images, donors, masks)


def _colour(images, donors, masks, seeds):
    del donors
    return replace_with_colour(images, masks, seeds)


def _clone(images, donors, masks, seeds, shift_range=(0.1, 0.4)):
    del donors
    return clone_stamp(images, masks, seeds, shift_range=shift_range)


# The tampers under one signature, (images, donors, masks, seeds, **params) -> images.
TAMPERS = {"donor": _donor, "colour": _colour, "clone": _clone}
