"""Synthetic photos for the tests that use a hand-set verifier which flags saturated red."""

import numpy as np


def calm_photo(height, width, seed=0):
    """A smooth photo without saturated red anywhere: the hand-set verifier finds nothing."""
    y, x = np.mgrid[0:height, 0:width]
    y, x = y / height, x / width
    rng = np.random.default_rng(seed)
    image = np.stack([0.3 + 0.2 * x, 0.4 + 0.2 * y, 0.5 + 0.1 * x * y], axis=-1)
    image += rng.uniform(-0.02, 0.02, image.shape)
    return np.rint(image * 255).astype(np.uint8)


def with_red_square(image, region):
    """`image` with `region` (a pair of slices) painted saturated red: the "tamper"."""
    tampered = image.copy()
    tampered[region] = (255, 0, 0)
    return tampered
