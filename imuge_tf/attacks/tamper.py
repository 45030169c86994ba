"""Malicious tampers of the attack layer (paper section 3.2, eq. 1).

Each tamper builds an irrelevant image I_irr and pastes it inside the mask:
``I_A = I_irr * M + I_M * (1 - M)``. With a binary mask the pixels outside it come back
bit-identical and those inside equal I_irr exactly. Masks are float32 [B, H, W, 1], 1 = tampered.

The paper's tampers are "donor", "colour" and "clone"; "copy_move", "splice" and "removal" are
opt-in extras (see `TAMPERS`).
"""

import math

import tensorflow as tf

from imuge_tf.attacks.seeds import uniform_per_sample

__all__ = [
    "TAMPERS",
    "clone_stamp",
    "composite",
    "copy_move",
    "harmonized_splice",
    "pyramid_fill",
    "remove_content",
    "replace_with_colour",
    "replace_with_donor",
]


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


def copy_move(images, masks, seeds, shift_range=(0.3, 0.7), flip_probability=0.5):
    """Copy-move: I_irr is the image itself, mirrored left-right with probability
    `flip_probability`, then shifted (with wrap-around) by a fraction of its height and of its
    width, each uniform in `shift_range`.

    Unlike `clone_stamp` (content from close by), the pasted content comes from far away in
    the same image: with the default range every shift is 30 % to 50 % of the size once
    wrap-around is taken into account, and half the copies are mirrored.
    """
    lo, hi = shift_range
    if not 0.0 < lo <= hi < 1.0:
        raise ValueError(f"shift_range must satisfy 0 < min <= max < 1, got {shift_range!r}")
    if not 0.0 <= flip_probability <= 1.0:
        raise ValueError(f"flip_probability must be in [0, 1], got {flip_probability!r}")
    draws = uniform_per_sample(seeds, shape=[3])
    flip = tf.reshape(draws[:, 2] < flip_probability, [-1, 1, 1, 1])
    source = tf.where(flip, tf.reverse(images, axis=[2]), images)
    shape = tf.shape(images)
    for axis, fraction in ((1, draws[:, 0]), (2, draws[:, 1])):
        size = shape[axis]
        amount = tf.round((lo + (hi - lo) * fraction) * tf.cast(size, tf.float32))
        amount = tf.clip_by_value(tf.cast(amount, tf.int32), 1, tf.maximum(size - 1, 1))
        source = _roll_per_sample(source, amount, axis)
    return composite(images, source, masks)


def _masked_moments(images, masks):
    """Per-sample, per-channel mean and standard deviation of `images` inside `masks`
    ([B, 1, 1, C] each); an empty mask gives mean 0, std 0."""
    area = tf.maximum(tf.reduce_sum(masks, axis=[1, 2], keepdims=True), 1.0)
    mean = tf.reduce_sum(images * masks, axis=[1, 2], keepdims=True) / area
    variance = tf.reduce_sum(tf.square(images - mean) * masks, axis=[1, 2], keepdims=True) / area
    return mean, tf.sqrt(variance + 1e-6)


def harmonized_splice(images, donors, masks):
    """Splicing as a careful forger does it: the donor's content under the mask, with its
    per-channel mean and standard deviation there matched to the host's under the same mask
    (clipped to [0, 1]), then pasted by eq. 1 with the hard mask (no feathering).

    Unlike plain donor replacement, the pasted region carries no global colour or contrast
    mismatch, so a verifier cannot flag it by colour alone.
    """
    host_mean, host_std = _masked_moments(images, masks)
    donor_mean, donor_std = _masked_moments(donors, masks)
    matched = (donors - donor_mean) * (host_std / donor_std) + host_mean
    return composite(images, tf.clip_by_value(matched, 0.0, 1.0), masks)


def pyramid_fill(images, masks):
    """Fills the holes (mask = 1) of `images` with push-pull (Gortler et al.'s pull-push, as
    in the Lumigraph): a classical, differentiable inpainting from a few TF ops.

    Push (fine to coarse): each coarser pixel gets the mean colour of the known part of its
    2x2 children and a weight = the sum of their weights, clamped to 1, so a coarse pixel with
    any known child counts as known and colours come from the nearest known pixels rather
    than from wide averages. Pull (coarse to fine): each level keeps its known part and fills
    the rest with the bilinearly upsampled coarser level,
    ``filled_l = weight_l * colour_l + (1 - weight_l) * upsample(filled_{l+1})``.
    Holes get smooth colours interpolated from their surroundings: exact for a constant image,
    close for smooth gradients.

    Args:
        images: float [B, H, W, C].
        masks: float [B, H, W, 1], 1 = hole; soft values act as partial knowledge.

    Returns:
        float32 [B, H, W, C]: `images` where the mask is 0 (bit-identical), the fill where it
        is 1. A sample whose mask covers everything becomes black.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    masks = tf.convert_to_tensor(masks, tf.float32)
    weight = 1.0 - masks
    known = images * weight  # premultiplied: weight * colour
    height, width = images.shape[1], images.shape[2]
    # One level per halving down to 1x1; pooling a 1x1 level again changes nothing, so an
    # unknown static size can use a generous count.
    largest = max(height, width) if height is not None and width is not None else 2**16
    levels = math.ceil(math.log2(max(largest, 1)))

    def sum_2x2(value):
        # Zero padding to even sizes adds unknown pixels (weight 0), which change no sum.
        shape = tf.shape(value)
        padded = tf.pad(value, [[0, 0], [0, shape[1] % 2], [0, shape[2] % 2], [0, 0]])
        return 4.0 * tf.nn.avg_pool2d(padded, 2, 2, "VALID")

    pyramid = [(known, weight)]
    for _ in range(levels):
        known, weight = pyramid[-1]
        known_sum, weight_sum = sum_2x2(known), sum_2x2(weight)
        clamped = tf.minimum(weight_sum, 1.0)
        pyramid.append((known_sum / tf.maximum(weight_sum, 1e-6) * clamped, clamped))

    known, weight = pyramid[-1]
    filled = known / tf.maximum(weight, 1e-6)
    for known, weight in reversed(pyramid[:-1]):
        # Upsample to the padded size so the grids align, then drop the padding.
        size = tf.shape(known)[1:3]
        upsampled = tf.image.resize(filled, 2 * tf.shape(filled)[1:3], method="bilinear")
        upsampled = upsampled[:, : size[0], : size[1], :]
        filled = known + (1.0 - weight) * upsampled
    return filled


def remove_content(images, masks):
    """Object removal: the masked region is filled from its surroundings by `pyramid_fill`
    (eq. 1 with I_irr = the fill), so the tampered area looks like the background."""
    return composite(images, pyramid_fill(images, masks), masks)


def _donor(images, donors, masks, seeds):
    del seeds
    return replace_with_donor(images, donors, masks)


def _colour(images, donors, masks, seeds):
    del donors
    return replace_with_colour(images, masks, seeds)


def _clone(images, donors, masks, seeds, shift_range=(0.1, 0.4)):
    del donors
    return clone_stamp(images, masks, seeds, shift_range=shift_range)


def _copy_move(images, donors, masks, seeds, shift_range=(0.3, 0.7), flip_probability=0.5):
    del donors
    return copy_move(images, masks, seeds, shift_range, flip_probability)


def _splice(images, donors, masks, seeds):
    del seeds
    return harmonized_splice(images, donors, masks)


def _removal(images, donors, masks, seeds):
    del donors, seeds
    return remove_content(images, masks)


# The tampers under one signature, (images, donors, masks, seeds, **params) -> images.
# The first three are the paper's; the others are opt-in.
TAMPERS = {
    "donor": _donor,
    "colour": _colour,
    "clone": _clone,
    "copy_move": _copy_move,
    "splice": _splice,
    "removal": _removal,
}
