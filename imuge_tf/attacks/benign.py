"""Benign attacks of the attack layer: identity, AWGN, Gaussian blur, rescaling, JPEG, cropping
(the paper's set, section 3.2), and opt-in extras: median blur, colour changes, resizing with
several interpolations, and the combinations resize + JPEG and blur + JPEG.

Every attack has the signature ``attack(images, masks, seeds, **params) -> (images, masks)``:
images are float32 [B, H, W, 3] in [0, 1], masks float32 [B, H, W, 1] with 1 = tampered, and
seeds an int [B, 2] tensor of per-sample stateless seeds. All randomness comes from
``tf.random.stateless_*`` ops keyed by those seeds (`imuge_tf.attacks.seeds`), so an attack is
a pure function of its inputs: it traces once inside ``tf.function``, and samples (or
replicas) with different seeds draw different parameters. Gradients reach ``images`` through
every attack (JPEG rounding is straight-through).

Masks are returned transformed where an attack moves or removes pixels. Only cropping does:
rescaling goes down and back to the same size, so pixels stay where they were. Cropping keeps
a random window and fills the rest with black *in place* instead of cutting it out, so the
attacked image stays pixel-aligned with the original; the cropped-away area counts as tampered
(the mask becomes ``max(mask, outside_window)``), which asks the verifier to flag it and the
decoder to recover it, like any other removed content.
"""

import functools

import numpy as np
import tensorflow as tf

from imuge_tf.attacks.jpeg import simulate_jpeg, straight_through_jpeg
from imuge_tf.attacks.names import check_names
from imuge_tf.attacks.seeds import normal_per_sample, split_seeds, uniform_per_sample

__all__ = [
    "BENIGN_ATTACKS",
    "RESIZE_METHODS",
    "blur_jpeg",
    "colour_factors",
    "colour_jitter",
    "crop",
    "gaussian_blur",
    "gaussian_noise",
    "identity",
    "jpeg_compression",
    "median_blur",
    "rescale",
    "resize_jpeg",
    "resize_parameters",
    "resize_with_methods",
]


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
    noise = normal_per_sample(noise_seeds, tf.shape(images)[1:])
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


# ---- opt-in extras (not in the paper's list; the pipeline uses them only when named) ----------


@tf.custom_gradient
def _pass_gradient_to_first(surrogate, forward):
    def gradient(upstream):
        return upstream, tf.zeros_like(forward)

    return tf.identity(forward), gradient


def _straight_through(surrogate, forward):
    """Exactly `forward` in the forward pass (no float32 round-off, unlike
    surrogate + stop_gradient(forward - surrogate)); in the backward pass the gradient goes to
    `surrogate` and on through whatever computed it, and none into `forward`'s ops (which may
    have no gradient, as ResizeArea)."""
    return _pass_gradient_to_first(surrogate, tf.stop_gradient(forward))


def _odd_even_merge(lo, hi, r):
    step = r * 2
    if step < hi - lo:
        yield from _odd_even_merge(lo, hi, step)
        yield from _odd_even_merge(lo + r, hi, step)
        yield from ((i, i + r) for i in range(lo + r, hi - r, step))
    else:
        yield (lo, lo + r)


def _odd_even_merge_sort(lo, hi):
    """Batcher's odd-even merge sort network on wires lo..hi (a power-of-two count), as
    comparators (i, j), i < j: min to wire i, max to wire j."""
    if hi - lo >= 1:
        mid = lo + (hi - lo) // 2
        yield from _odd_even_merge_sort(lo, mid)
        yield from _odd_even_merge_sort(mid + 1, hi)
        yield from _odd_even_merge(lo, hi, 1)


@functools.cache
def _median_network(count):
    """A comparator network whose wire count // 2 ends up holding the median of `count` values:
    Batcher's sorting network on the next power of two, without the comparators that touch
    padding (padding +inf there would make them no-ops) and pruned back from the median wire.

    Returns (i, j, keep_min, keep_max) tuples; keep_* says whether the min (max) output is
    used later. 24 comparators for 3x3, 113 for 5x5 (checked on all 0/1 inputs, which by the
    0-1 principle covers all inputs).
    """
    wires = 1
    while wires < count:
        wires *= 2
    comparators = [(i, j) for i, j in _odd_even_merge_sort(0, wires - 1) if j < count]
    needed, kept = {count // 2}, []
    for i, j in reversed(comparators):
        if i in needed or j in needed:
            kept.append((i, j, i in needed, j in needed))
            needed |= {i, j}
    return tuple(reversed(kept))


def _median(images, size):
    """Median of each size x size neighbourhood (reflected borders), per channel.

    Forward: the size * size shifted copies go through a median-selection network of
    elementwise minima and maxima (much faster on a CPU than sorting with top_k). Backward:
    each output's gradient goes to the window pixel holding the median value (the first one on
    ties), as for a sort; written by hand because differentiating the network's min/max ops
    one by one costs many times the forward pass.
    """
    pad = size // 2
    offsets = [(dy, dx) for dy in range(size) for dx in range(size)]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")

    def windows(padded):
        height, width = tf.shape(padded)[1] - 2 * pad, tf.shape(padded)[2] - 2 * pad
        return [padded[:, dy : dy + height, dx : dx + width, :] for dy, dx in offsets]

    @tf.custom_gradient
    def median_of(padded):
        wires = windows(padded)
        for i, j, keep_min, keep_max in _median_network(size * size):
            low = tf.minimum(wires[i], wires[j]) if keep_min else None
            high = tf.maximum(wires[i], wires[j]) if keep_max else None
            wires[i], wires[j] = low, high
        median = wires[size * size // 2]

        def gradient(upstream):
            stack = tf.stack(windows(padded), axis=-1)
            hits = tf.cast(tf.equal(stack, median[..., None]), tf.float32)
            index = tf.argmax(hits, axis=-1, output_type=tf.int32)
            # Scatter-add each output's gradient onto the padded pixel it took its value from.
            shape = tf.shape(padded)
            batch, height, width, channels = tf.unstack(tf.shape(median))
            b, y, x, c = tf.meshgrid(
                tf.range(batch), tf.range(height), tf.range(width), tf.range(channels),
                indexing="ij",
            )
            row, col = y + index // size, x + index % size
            target = ((b * shape[1] + row) * shape[2] + col) * shape[3] + c
            total = tf.math.unsorted_segment_sum(
                tf.reshape(upstream, [-1]), tf.reshape(target, [-1]), tf.reduce_prod(shape)
            )
            return tf.reshape(total, shape)

        return median, gradient

    return median_of(padded)


def median_blur(images, masks, seeds, median_kernel_sizes=(3, 5)):
    """Median filter with a window size per sample drawn from `median_kernel_sizes` (odd).

    Removes impulse (salt-and-pepper) noise and fine texture while keeping edges, unlike the
    Gaussian blur. Borders are reflected.
    """
    sizes = tuple(int(size) for size in median_kernel_sizes)
    if not sizes or any(size < 1 or size % 2 == 0 for size in sizes):
        raise ValueError(
            f"median_kernel_sizes must be odd positive ints, got {median_kernel_sizes!r}"
        )
    choice = uniform_per_sample(seeds, minval=0, maxval=len(sizes), dtype=tf.int32)
    result = images
    for index, size in enumerate(sizes):
        if size == 1:
            continue
        result = tf.where(_per_sample(choice) == index, _median(images, size), result)
    return result, masks


# ITU-R BT.601 luma weights, as in tf.image.rgb_to_grayscale and PIL's "L" mode.
_LUMA = (0.299, 0.587, 0.114)


def _luma(images):
    return tf.reduce_sum(images * tf.constant(_LUMA, images.dtype), axis=-1, keepdims=True)


def colour_factors(
    seeds, brightness_range=(-0.1, 0.1), contrast_range=(0.7, 1.3), saturation_range=(0.7, 1.3)
):
    """The per-sample draws of `colour_jitter`: a dict of [B] float32 tensors "brightness"
    (additive delta), "contrast" and "saturation" (factors), each uniform in its range."""
    ranges = {
        "brightness": _check_range("brightness_range", brightness_range, -1.0, 1.0),
        "contrast": _check_range("contrast_range", contrast_range, 0.0, 10.0),
        "saturation": _check_range("saturation_range", saturation_range, 0.0, 10.0),
    }
    draws = uniform_per_sample(seeds, shape=[3])
    return {
        name: lo + (hi - lo) * draws[:, i] for i, (name, (lo, hi)) in enumerate(ranges.items())
    }


def colour_jitter(
    images,
    masks,
    seeds,
    brightness_range=(-0.1, 0.1),
    contrast_range=(0.7, 1.3),
    saturation_range=(0.7, 1.3),
):
    """Brightness, contrast and saturation changes with per-sample random amounts (see
    `colour_factors`), in that order, clipped to [0, 1] once at the end:

    - brightness: x + delta;
    - contrast: mean + c * (x - mean), `mean` the image's mean luma (as torchvision does);
    - saturation: luma + s * (x - luma), per pixel (s = 0 gives grey, s > 1 more colourful).
    """
    factors = colour_factors(seeds, brightness_range, contrast_range, saturation_range)
    result = images + _per_sample(factors["brightness"])
    mean = tf.reduce_mean(_luma(result), axis=[1, 2, 3], keepdims=True)
    result = mean + _per_sample(factors["contrast"]) * (result - mean)
    grey = _luma(result)
    result = grey + _per_sample(factors["saturation"]) * (result - grey)
    return tf.clip_by_value(result, 0.0, 1.0), masks


RESIZE_METHODS = ("bilinear", "bicubic", "nearest", "area")


def resize_parameters(seeds, resize_range=(0.5, 2.0), resize_methods=RESIZE_METHODS):
    """The per-sample draws of `resize_with_methods`: (factors [B] float32 uniform in
    `resize_range`, there [B] int32 and back [B] int32, independent indices into
    `resize_methods` for the resize and for the way back)."""
    lo, hi = _check_range("resize_range", resize_range, 1e-3, 1e3)
    methods = check_names("resize_methods", resize_methods, RESIZE_METHODS)
    draws = uniform_per_sample(seeds, shape=[3])
    factors = lo + (hi - lo) * draws[:, 0]
    indices = tf.minimum(tf.cast(tf.floor(draws[:, 1:] * len(methods)), tf.int32), len(methods) - 1)
    return factors, indices[:, 0], indices[:, 1]


def _resize(image, size, method):
    """One image [H, W, C] resized to `size` with `method`.

    Bilinear and bicubic are antialiased when shrinking (as photo software does). Nearest and
    area are exact in the forward pass and straight-through in the backward pass, with the
    antialiased bilinear resize's gradient (area has no gradient in TF; nearest's would reach
    only the sampled pixels).
    """
    if method in ("bilinear", "bicubic"):
        return tf.image.resize(image, size, method=method, antialias=True)
    surrogate = tf.image.resize(image, size, method="bilinear", antialias=True)
    return _straight_through(surrogate, tf.image.resize(image, size, method=method))


def resize_with_methods(
    images, masks, seeds, resize_range=(0.5, 2.0), resize_methods=RESIZE_METHODS
):
    """Resizes each sample by a factor uniform in `resize_range` and back to its size, with
    an interpolation drawn per sample and per leg from `resize_methods` (bilinear, bicubic,
    nearest, area; see `_resize` for the gradients): the resize and the way back are often
    done by different software. Only the drawn methods run for each sample.

    Nearest up and nearest back down returns the image unchanged (exactly), as it does outside
    training too: with the defaults, one in 16 of the samples scaled up.
    """
    methods = tuple(resize_methods)
    factors, there, back = resize_parameters(seeds, resize_range, methods)
    size = tf.shape(images)[1:3]

    def one_sample(args):
        image, factor, there_index, back_index = args
        scaled = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * factor), tf.int32), 1)
        resized = tf.switch_case(
            there_index, [lambda m=method: _resize(image, scaled, m) for method in methods]
        )
        return tf.switch_case(
            back_index, [lambda m=method: _resize(resized, size, m) for method in methods]
        )

    result = tf.map_fn(
        one_sample,
        (images, factors, there, back),
        fn_output_signature=tf.TensorSpec(None, tf.float32),
    )
    result = tf.reshape(result, tf.shape(images))
    result.set_shape(images.shape)
    # Bicubic overshoots at edges.
    return tf.clip_by_value(result, 0.0, 1.0), masks


def resize_jpeg(
    images,
    masks,
    seeds,
    resize_range=(0.5, 2.0),
    resize_methods=RESIZE_METHODS,
    jpeg_quality_range=(50, 95),
    real_jpeg_probability=0.0,
):
    """`resize_with_methods`, then `jpeg_compression` (a photo resized and saved again),
    each with its own seed from `split_seeds(seeds, 2)`."""
    resize_seeds, jpeg_seeds = tf.unstack(split_seeds(seeds, 2))
    resized, masks = resize_with_methods(images, masks, resize_seeds, resize_range, resize_methods)
    return jpeg_compression(resized, masks, jpeg_seeds, jpeg_quality_range, real_jpeg_probability)


def blur_jpeg(
    images, masks, seeds, blur_kernel_sizes=(3, 5), jpeg_quality_range=(50, 95),
    real_jpeg_probability=0.0,
):
    """`gaussian_blur`, then `jpeg_compression`, each with its own seed from
    `split_seeds(seeds, 2)`."""
    blur_seeds, jpeg_seeds = tf.unstack(split_seeds(seeds, 2))
    blurred, masks = gaussian_blur(images, masks, blur_seeds, blur_kernel_sizes)
    return jpeg_compression(blurred, masks, jpeg_seeds, jpeg_quality_range, real_jpeg_probability)


BENIGN_ATTACKS = {
    "identity": identity,
    "noise": gaussian_noise,
    "blur": gaussian_blur,
    "rescale": rescale,
    "jpeg": jpeg_compression,
    "crop": crop,
    # Opt-in extras.
    "median": median_blur,
    "colour": colour_jitter,
    "resize": resize_with_methods,
    "resize_jpeg": resize_jpeg,
    "blur_jpeg": blur_jpeg,
}
