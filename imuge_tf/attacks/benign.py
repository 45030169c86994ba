"""Benign attacks of the attack layer: identity, AWGN, Gaussian blur, rescaling, JPEG, cropping.

Every attack has the signature ``attack(images, masks, seeds, **params) -> (images, masks)``:
images are float32 [B, H, W, 3] in [0, 1], masks float32 [B, H, W, 1] with 1 = tampered, and
seeds an int [B, 2] tensor of per-sample stateless seeds. All randomness comes from
``tf.random.stateless_*`` ops keyed by those seeds, so an attack is a pure function of its
inputs: it traces once inside ``tf.function``, and samples (or replicas) with different seeds
draw different parameters. Gradients reach ``images`` through every attack (JPEG rounding is
straight-through).

Masks are returned transformed where an attack moves or removes pixels. Only cropping does:
rescaling goes down and back to the same size, so pixels stay where they were. Cropping keeps
a random window and fills the rest with black *in place* instead of cutting it out, so the
attacked image stays pixel-aligned with the original; the cropped-away area counts as tampered
(the mask becomes ``max(mask, outside_window)``), which asks the verifier to flag it and the
decoder to recover it, like any other removed content.
"""

import numpy as np
import tensorflow as tf

from imuge_tf.attacks.jpeg import simulate_jpeg, straight_through_jpeg

__all__ = [
    "BENIGN_ATTACKS",
    "crop",
    "gaussian_blur",
    "gaussian_noise",
    "identity",
    "jpeg_compression",
    "rescale",
    "split_seeds",
    "uniform_per_sample",
]


def split_seeds(seeds, count):
    """Derives `count` independent seeds from each per-sample seed.

    Args:
        seeds: int [B, 2] per-sample seeds.
        count: Python int.

    Returns:
        int32 [count, B, 2]: element i is a fresh [B, 2] seed tensor for the i-th use.
    """
    seeds = tf.cast(tf.convert_to_tensor(seeds), tf.int32)
    split = tf.map_fn(
        lambda seed: tf.random.experimental.stateless_split(seed, count),
        seeds,
        fn_output_signature=tf.TensorSpec([count, 2], tf.int32),
    )
    return tf.transpose(split, [1, 0, 2])


def uniform_per_sample(seeds, shape=(), minval=0.0, maxval=1.0, dtype=tf.float32):
    """One stateless uniform draw of `shape` per sample: a [B, *shape] tensor in
    [minval, maxval) (integers need both bounds)."""
    seeds = tf.cast(tf.convert_to_tensor(seeds), tf.int32)
    static_shape = tf.TensorShape(shape) if not tf.is_tensor(shape) else tf.TensorShape(None)
    return tf.map_fn(
        lambda seed: tf.random.stateless_uniform(
            shape, seed, minval=minval, maxval=maxval, dtype=dtype
        ),
        seeds,
        fn_output_signature=tf.TensorSpec(static_shape, dtype),
    )


def _normal_per_sample(seeds, shape):
    seeds = tf.cast(tf.convert_to_tensor(seeds), tf.int32)
    return tf.map_fn(
        lambda seed: tf.random.stateless_normal(shape, seed),
        seeds,
        fn_output_signature=tf.TensorSpec(None, tf.float32),
    )


def _check_range(name, value_range, low, high):
    """Checks a (min, max) pair of Python numbers lies within [low, high]."""
    if len(value_range) != 2:
        raise ValueError(f"{name} must be a (min, max) pair, got {value_range!r}")
    lo, hi = value_range
    if not low <= lo <= hi <= high:
        raise ValueError(f"{name} must satisfy {low} <= min <= max <= {high}, got {value_range!r}")
    return lo, hi


def _per_sample(values):
    """Reshapes a [B] vector so it broadcasts against [B, H, W, C] tensors."""
    return tf.reshape(values, [-1, 1, 1, 1])


def identity(images, masks, seeds):
    """No attack: images and masks are returned unchanged."""
    del seeds
    return images, masks


def gaussian_noise(images, masks, seeds, noise_stddev=0.05):
    """Additive white Gaussian noise with a per-sample sigma uniform in [0, noise_stddev].

    The result is clipped to [0, 1]. The paper's setting is sigma = 0.1.
    """
    if not 0.0 <= noise_stddev <= 1.0:
        raise ValueError(f"noise_stddev must be in [0, 1], got {noise_stddev!r}")
    sigma_seeds, noise_seeds = tf.unstack(split_seeds(seeds, 2))
    sigma = uniform_per_sample(sigma_seeds, maxval=noise_stddev)
    noise = _normal_per_sample(noise_seeds, tf.shape(images)[1:])
    noisy = images + tf.reshape(sigma, [-1, 1, 1, 1]) * tf.reshape(noise, tf.shape(images))
    return tf.clip_by_value(noisy, 0.0, 1.0), masks


def _gaussian_kernel(size):
    """A normalized 2-D Gaussian with OpenCV's default sigma for this size, as a depthwise
    filter [size, size, 3, 1]."""
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    offsets = np.arange(size) - (size - 1) / 2
    profile = np.exp(-(offsets**2) / (2 * sigma**2))
    kernel = np.outer(profile, profile)
    kernel /= kernel.sum()
    return np.tile(kernel[:, :, None, None], [1, 1, 3, 1]).astype(np.float32)


def gaussian_blur(images, masks, seeds, blur_kernel_sizes=(3, 5)):
    """Gaussian blur with a kernel size per sample drawn from `blur_kernel_sizes`.

    Sigma follows the kernel size (OpenCV's rule: 0.8 for 3, 1.1 for 5); borders are
    reflected so they do not darken.
    """
    sizes = tuple(int(size) for size in blur_kernel_sizes)
    if not sizes or any(size < 1 or size % 2 == 0 for size in sizes):
        raise ValueError(f"blur_kernel_sizes must be odd positive ints, got {blur_kernel_sizes!r}")
    choice = uniform_per_sample(seeds, minval=0, maxval=len(sizes), dtype=tf.int32)
    result = images
    for index, size in enumerate(sizes):
        if size == 1:
            continue
        pad = size // 2
        padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        blurred = tf.nn.depthwise_conv2d(
            padded, tf.constant(_gaussian_kernel(size)), [1, 1, 1, 1], "VALID"
        )
        result = tf.where(_per_sample(choice) == index, blurred, result)
    return tf.clip_by_value(result, 0.0, 1.0), masks


def rescale(images, masks, seeds, rescale_range=(0.5, 2.0)):
    """Resizes each sample by a factor uniform in `rescale_range` and back to its size.

    Bilinear both ways, antialiased when shrinking (as photo software does); differentiable.
    """
    lo, hi = _check_range("rescale_range", rescale_range, 1e-3, 1e3)
    factors = uniform_per_sample(seeds, minval=lo, maxval=hi)
    size = tf.shape(images)[1:3]

    def resize_and_back(args):
        image, factor = args
        scaled = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * factor), tf.int32), 1)
        small = tf.image.resize(image, scaled, method="bilinear", antialias=True)
        return tf.image.resize(small, size, method="bilinear", antialias=True)

    result = tf.map_fn(
        resize_and_back, (images, factors), fn_output_signature=tf.TensorSpec(None, tf.float32)
    )
    result = tf.reshape(result, tf.shape(images))
    result.set_shape(images.shape)
    return tf.clip_by_value(result, 0.0, 1.0), masks


def jpeg_compression(images, masks, seeds, jpeg_quality_range=(50, 95), real_jpeg_probability=0.0):
    """JPEG compression with a per-sample quality factor uniform in `jpeg_quality_range`
    (inclusive), through the differentiable `simulate_jpeg`.

    With probability `real_jpeg_probability` a sample goes through the real codec instead,
    straight-through (forward real, backward the simulation's gradient).
    """
    lo, hi = _check_range("jpeg_quality_range", jpeg_quality_range, 1, 100)
    if not 0.0 <= real_jpeg_probability <= 1.0:
        raise ValueError(f"real_jpeg_probability must be in [0, 1], got {real_jpeg_probability!r}")
    quality_seeds, real_seeds = tf.unstack(split_seeds(seeds, 2))
    quality = uniform_per_sample(quality_seeds, minval=int(lo), maxval=int(hi) + 1, dtype=tf.int32)
    simulated = simulate_jpeg(images, quality)
    if real_jpeg_probability == 0.0:
        return simulated, masks
    use_real = uniform_per_sample(real_seeds) < real_jpeg_probability
    # The real codec runs per sample on the CPU: skip it when no sample needs it.
    real = tf.cond(
        tf.reduce_any(use_real),
        lambda: straight_through_jpeg(images, quality),
        lambda: simulated,
    )
    return tf.where(_per_sample(use_real), real, simulated), masks


def crop(images, masks, seeds, crop_keep_range=(0.5, 0.9)):
    """Keeps a random window covering a fraction of the area uniform in `crop_keep_range`;
    the rest becomes black and is marked tampered in the mask (see the module docstring).

    The window's aspect ratio is random too: its height fraction is keep**u and its width
    fraction keep**(1-u) with u uniform in [0, 1], so their product is the kept fraction.
    """
    lo, hi = _check_range("crop_keep_range", crop_keep_range, 1e-6, 1.0)
    keep = uniform_per_sample(seeds, shape=[4])
    area = lo + (hi - lo) * keep[:, 0]
    height_fraction = tf.pow(area, keep[:, 1])
    width_fraction = area / height_fraction

    shape = tf.shape(images)
    height = tf.cast(shape[1], tf.float32)
    width = tf.cast(shape[2], tf.float32)
    window_height = tf.clip_by_value(tf.round(height_fraction * height), 1.0, height)
    window_width = tf.clip_by_value(tf.round(width_fraction * width), 1.0, width)
    # Uniform integer offset in [0, size - window]; the min guards keep[...] -> 1.0 rounding.
    top = tf.minimum(tf.floor(keep[:, 2] * (height - window_height + 1)), height - window_height)
    left = tf.minimum(tf.floor(keep[:, 3] * (width - window_width + 1)), width - window_width)

    rows = tf.range(height)[None, :]
    cols = tf.range(width)[None, :]
    inside_rows = (rows >= top[:, None]) & (rows < (top + window_height)[:, None])
    inside_cols = (cols >= left[:, None]) & (cols < (left + window_width)[:, None])
    window = tf.cast(inside_rows[:, :, None] & inside_cols[:, None, :], images.dtype)[..., None]
    return images * window, tf.maximum(masks, 1.0 - window)


BENIGN_ATTACKS = {
    "identity": identity,
    "noise": gaussian_noise,
    "blur": gaussian_blur,
    "rescale": rescale,
    "jpeg": jpeg_compression,
    "crop": crop,
}
