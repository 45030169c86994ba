"""Tamper cases on uint8 photos of any size: where a tamper goes, what is pasted there, and
the tampered photo.

"Paste part of another photo into a random object-shaped mask" is the tamper of the paper's
eq. 1; `imuge tamper`, `imuge demo` and the evaluation protocol all make theirs here, so that
the three mean the same by it:

- `object_mask`: a bool H x W mask from the training generator (imuge_tf.attacks.masks),
  drawn on a square canvas and scaled to the photo;
- `covering` and `bundled_donor`: a donor photo scaled and centre-cropped to cover the photo;
- `paste`: eq. 1 on uint8 pixels; `make_tamper`: any kind of imuge_tf.attacks.tamper.TAMPERS;
- `tamper_case`: the mask, donor and seed of one named photo, as `imuge tamper` makes them.
"""

from __future__ import annotations

import zlib

import numpy as np

# random_tamper_mask draws squares from this side up.
MIN_CANVAS = 16
# Masks of photos larger than this (or not square) are drawn on a square of this side and
# scaled to the photo.
MASK_CANVAS = 512
OBJECT_SHAPES = ("rectangle", "ellipse", "polygon", "blob")
# The second half of the stateless seed of `imuge tamper`'s masks (the first is the photo's).
MASK_STREAM = 0x7A3


def object_mask(seed, height, width, *, canvas=MASK_CANVAS, smooth=True,
                **mask_options) -> np.ndarray:
    """A random object-shaped tamper mask, bool H x W (True = tampered).

    Args:
      seed: a pair of ints, the stateless seed of imuge_tf.attacks.masks.random_tamper_mask.
      height, width: the photo's size.
      canvas: a square photo of side MIN_CANVAS..canvas gets its mask drawn at its own size;
        any other photo, on a canvas x canvas square scaled to it.
      smooth: scale bilinearly and threshold at one half (smooth outlines on large photos);
        False scales by nearest neighbour (the stretched canvas pixels stay visible).
      mask_options: arguments of random_tamper_mask (area_range, largest_range, max_regions,
        shapes).
    """
    import tensorflow as tf

    from imuge_tf.attacks.masks import random_tamper_mask

    side = height if height == width and MIN_CANVAS <= height <= canvas else canvas
    mask = random_tamper_mask(tf.constant(seed, tf.int64), side, **mask_options)
    if (height, width) != (side, side):
        mask = tf.image.resize(mask[None], (height, width),
                               method="bilinear" if smooth else "nearest")[0]
    return np.asarray(mask)[:, :, 0] >= 0.5


def covering(donor: np.ndarray, height: int, width: int) -> np.ndarray:
    """`donor` scaled (Lanczos) and centre-cropped to cover height x width; as it is when it
    has that size already."""
    from imuge_tf.io import cover

    if donor.shape[:2] == (height, width):
        return donor
    return cover(donor, height, width)


def bundled_donor(height: int, width: int, *, pick: int = 0, unlike=None) -> np.ndarray:
    """A photo bundled with scikit-image covering height x width: the one `pick` chooses
    (modulo their number), or the next one that differs from the photo `unlike`."""
    from imuge_tf.samples import SAMPLE_PHOTO_NAMES, sample_photo

    count = len(SAMPLE_PHOTO_NAMES)
    for step in range(count):
        donor = covering(sample_photo(SAMPLE_PHOTO_NAMES[(pick + step) % count]), height, width)
        if unlike is None or not np.array_equal(donor, unlike):
            return donor
    raise RuntimeError("no bundled photo differs from the photo to tamper with")


def paste(image: np.ndarray, donor: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Eq. 1 on uint8 pixels: the donor inside the mask, the image outside it."""
    return np.where(mask[..., None], donor, image)


def make_tamper(kind: str, image: np.ndarray, mask: np.ndarray, donor: np.ndarray,
                seed: int) -> np.ndarray:
    """`image` (uint8) tampered by `kind` (a name of imuge_tf.attacks.tamper.TAMPERS) inside
    `mask`, with `donor` as the other photo where the kind takes one; pixels outside the mask
    unchanged."""
    import tensorflow as tf

    from imuge_tf.attacks.tamper import TAMPERS

    images = tf.convert_to_tensor(image[None].astype(np.float32) / 255.0)
    donors = tf.convert_to_tensor(donor[None].astype(np.float32) / 255.0)
    masks = tf.constant(mask[None, :, :, None], tf.float32)
    seeds = tf.constant([[seed % 2**31, list(TAMPERS).index(kind)]], tf.int32)
    tampered = TAMPERS[kind](images, donors, masks, seeds)
    tampered = np.asarray(tf.round(tf.clip_by_value(tampered, 0.0, 1.0) * 255.0))[0]
    # The composite is exact outside a binary mask; copy those pixels anyway so that the
    # untouched area is bit-identical whatever the float rounding.
    return paste(image, tampered.astype(np.uint8), mask)


def photo_seed(seed: int, name: str) -> int:
    """One photo's seed from a run's seed and the photo's name: a photo gets the same tamper
    whichever batch it is in, and photos of one batch get different ones."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % 2**31


def tamper_case(image: np.ndarray, seed: int, name: str):
    """(mask, donor, seed) of `imuge tamper` for the photo `image` named `name`: an
    object-shaped mask and a bundled donor photo (not the photo itself), both fixed by
    photo_seed(seed, name); the seed is the one to give make_tamper."""
    height, width = image.shape[:2]
    case = photo_seed(seed, name)
    mask = object_mask((case, MASK_STREAM), height, width, shapes=OBJECT_SHAPES)
    donor = bundled_donor(height, width, pick=case, unlike=image)
    return mask, donor, case
