"""Inference post-processing of the verifier's output (paper section 3.5), on numpy arrays.

The verifier gives a per-pixel tamper probability. The paper binarizes it with Otsu's
threshold and cleans it with an erosion followed by a dilation with a 4 x 4 kernel (a
morphological opening): specks smaller than the kernel disappear, larger regions keep their
shape.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_THRESHOLD_RANGE", "otsu_threshold", "refine_mask"]

# Otsu's threshold is clipped into this range by `refine_mask`. Otsu always splits a map into
# two classes, even when it holds only one: on an intact image (every probability near 0) it
# would cut the noise in two and flag half the pixels, on a wholly tampered one it would clear
# half of them. Within the range, two real classes are still split where Otsu puts it.
DEFAULT_THRESHOLD_RANGE = (0.25, 0.75)


def _as_map(probability):
    probability = np.asarray(probability)
    if probability.ndim == 3 and probability.shape[-1] == 1:
        probability = probability[..., 0]
    if probability.ndim != 2:
        raise ValueError(f"probability must be an H x W map, got shape {probability.shape}")
    if probability.size == 0:
        raise ValueError("probability map is empty")
    probability = probability.astype(np.float64)
    if not np.all(np.isfinite(probability)):
        raise ValueError("probability map contains NaN or infinite values")
    return probability


def otsu_threshold(probability, bins=256):
    """Otsu's threshold of a map of values (e.g. tamper probabilities H x W).

    A histogram of `bins` equal bins over [min, max] of the values; the threshold is the bin
    centre that maximizes the between-class variance, with values > threshold in the upper
    class (the convention of skimage.filters.threshold_otsu). A constant map returns its value.
    """
    values = _as_map(probability).ravel()
    low, high = float(values.min()), float(values.max())
    if low == high:
        return low
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2.0
    counts = counts.astype(np.float64)
    # Split after bin k: class 0 = bins 0..k, class 1 = bins k+1..end.
    weight0 = np.cumsum(counts)[:-1]
    weight1 = np.cumsum(counts[::-1])[::-1][1:]
    sum0 = np.cumsum(counts * centres)[:-1]
    sum1 = np.cumsum((counts * centres)[::-1])[::-1][1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean0 = sum0 / weight0
        mean1 = sum1 / weight1
        between = weight0 * weight1 * (mean0 - mean1) ** 2
    # Splits with an empty class have no between-class variance.
    between = np.where((weight0 > 0) & (weight1 > 0), between, -1.0)
    return float(centres[int(np.argmax(between))])


def refine_mask(probability, threshold=None, kernel_size=4, *,
                threshold_range=DEFAULT_THRESHOLD_RANGE):
    """Binary tamper mask from a probability map: threshold, then erode, then dilate.

    Args:
      probability: H x W (or H x W x 1) floats, tamper probability per pixel.
      threshold: pixels above it are tampered; None uses Otsu's threshold clipped into
        `threshold_range` (pass threshold_range=None for Otsu's value as it is).
      kernel_size: side of the square structuring element of the opening (the paper's 4);
        0 or 1 skips the morphology.

    Returns a bool H x W mask. The opening only removes pixels: regions narrower than the
    kernel vanish, larger ones are kept exactly, also where they touch the image border.
    """
    from scipy import ndimage  # a dependency, imported here to keep `imuge --help` light

    probability = _as_map(probability)
    if threshold is None:
        threshold = otsu_threshold(probability)
        if threshold_range is not None:
            low, high = threshold_range
            threshold = min(max(threshold, low), high)
    mask = probability > float(threshold)
    kernel_size = int(kernel_size)
    if kernel_size < 0:
        raise ValueError(f"kernel_size must be >= 0, got {kernel_size}")
    if kernel_size <= 1 or not mask.any():
        return mask
    # SciPy's erosion treats pixels outside the image as background, but the dilation grows
    # the survivors back out to the border, so regions touching the edge keep their extent.
    return ndimage.binary_opening(mask, structure=np.ones((kernel_size, kernel_size), bool))
