"""The objective of the paper, eqs. 3-9, as per-replica means of plain tensors.

Convention (see docs/design.md, "Known pitfalls"): every function returns the mean over the samples
it is given (one replica's batch). The model divides the total by the number of replicas
before taking gradients, since Keras sums gradients over replicas; logged values are unscaled.
"""

import tensorflow as tf

from imuge_tf.metrics import psnr

EPSILON = 1e-7


def tamper_classification_loss(predicted_mask, true_mask):
    """L_cls, eq. 4: binary cross-entropy between the predicted probability and the true mask."""
    predicted = tf.clip_by_value(predicted_mask, EPSILON, 1.0 - EPSILON)
    bce = -(true_mask * tf.math.log(predicted) + (1.0 - true_mask) * tf.math.log(1.0 - predicted))
    return tf.reduce_mean(bce)


def image_distance(images, others):
    """Mean squared error: the l2 distance of eq. 5 and of L_C, per pixel and channel."""
    return tf.reduce_mean(tf.square(images - others))


def masked_distance(images, others, mask):
    """Mean squared error inside the mask only (0 where the batch has no masked pixel)."""
    channels = tf.cast(tf.shape(images)[-1], images.dtype)
    squared = tf.reduce_sum(tf.square(images - others) * mask)
    return tf.math.divide_no_nan(squared, tf.reduce_sum(mask) * channels)


def recovery_loss(original, recovered, true_mask, sample_weight=None):
    """L_R, eq. 5: the whole image, plus extra weight on the tampered area.

    `sample_weight` [B] (0 or 1) leaves samples out, e.g. never-immunized ones, which have
    nothing to recover from.
    """
    if sample_weight is None:
        return image_distance(original, recovered) + masked_distance(original, recovered,
                                                                     true_mask)
    weight = tf.reshape(tf.cast(sample_weight, original.dtype), [-1, 1, 1, 1])
    whole = masked_distance(original, recovered, tf.ones_like(true_mask) * weight)
    return whole + masked_distance(original, recovered, true_mask * weight)


def immunization_loss(original, immunized):
    """L_C: the immunized image must stay close to the original."""
    return image_distance(original, immunized)


def immunization_hinge_loss(original, immunized, psnr_target):
    """L_C as a fidelity hinge: the mean shortfall, in dB, of each sample's PSNR(I, I_M)
    below `psnr_target`; zero (and no gradient) for samples at or above it."""
    return tf.reduce_mean(tf.nn.relu(psnr_target - psnr(original, immunized)))


def generator_adversarial_loss(fake_scores):
    """Eq. 7 (LSGAN): the generator wants the discriminator to say 1 for its images."""
    return tf.reduce_mean(tf.square(1.0 - fake_scores))


def discriminator_loss(real_scores, fake_scores):
    """Eq. 9 (LSGAN): 1 for originals, 0 for generated images."""
    return 0.5 * tf.reduce_mean(tf.square(fake_scores)) + 0.5 * tf.reduce_mean(
        tf.square(1.0 - real_scores))


def generator_loss(recovery, immunization, classification, recovery_adversarial,
                   container_adversarial, *, classification_weight, adversarial_weight,
                   immunization_weight, container_adversarial_weight):
    """L_G, eqs. 3, 6 and 8: L_R + g L_C + a L_cls + b (L_DR + t L_DC)."""
    reconstruction = recovery + immunization_weight * immunization
    adversarial = recovery_adversarial + container_adversarial_weight * container_adversarial
    return reconstruction + classification_weight * classification + (
        adversarial_weight * adversarial)
