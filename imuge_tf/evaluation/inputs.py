"""The protocol's inputs: photos (loaded at their own size or as squares, and named), the
donor each one's tamper takes its content from, and the object-shaped tamper masks."""

from __future__ import annotations

import math
import os
from collections import Counter

import numpy as np

from imuge_tf.attacks import cases
from imuge_tf.evaluation.settings import MASK_CANVAS, TAMPER_MASK


def _centre_square(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    return np.ascontiguousarray(image[top:top + size, left:left + size])


def load_photo(source, size: int | None = None) -> np.ndarray:
    """A file path or uint8 array as an RGB uint8 photo: at its own size when `size` is None,
    else S x S, S = `size`.

    Files are read with Pillow (EXIF orientation, any mode to 8-bit RGB). With `size`, the
    shorter side is scaled to `size` (Lanczos down, bicubic up) and the centred square kept.
    """
    from imuge_tf.data import load_image, prepare_array

    if size is None:
        if isinstance(source, np.ndarray):
            from imuge_tf.inference import check_photo

            return check_photo(source).copy()
        from imuge_tf.io import read_image

        return read_image(os.fspath(source))
    if isinstance(source, np.ndarray):
        image = prepare_array(source, size, size)
    else:
        image = load_image(os.fspath(source), size, size)
    return _centre_square(image, size)


def _photo_sources(paths_or_arrays) -> list[tuple[str, object]]:
    """(name, source) pairs from a folder, one file, or a sequence of paths and arrays."""
    if isinstance(paths_or_arrays, (str, os.PathLike)):
        path = os.fspath(paths_or_arrays)
        if os.path.isdir(path):
            from imuge_tf.data import find_images

            return [(os.path.relpath(p, path), p) for p in find_images(path)]
        return [(os.path.basename(path), path)]
    if isinstance(paths_or_arrays, np.ndarray) and paths_or_arrays.ndim == 3:
        return [("array_0", paths_or_arrays)]
    sources = []
    for index, item in enumerate(paths_or_arrays):
        if isinstance(item, np.ndarray):
            sources.append((f"array_{index}", item))
        else:
            sources.append((os.path.basename(os.fspath(item)), item))
    # Photos are named by file name in the results; the same name in two folders would merge
    # two photos' rows, so then the whole paths name them.
    names = Counter(name for name, _ in sources)
    return [(os.fspath(item) if names[name] > 1 and not isinstance(item, np.ndarray) else name,
             item) for name, item in sources]


def _donor_for(photo: np.ndarray, donor: np.ndarray) -> np.ndarray:
    """`donor` scaled and centre-cropped to `photo`'s size (benchmarks use it too)."""
    return cases.covering(donor, photo.shape[0], photo.shape[1])


def _bundled_donor(photo: np.ndarray) -> np.ndarray:
    """A bundled scikit-image photo at the photo's size that is not the photo itself."""
    return cases.bundled_donor(photo.shape[0], photo.shape[1], unlike=photo)


def _tamper_mask(seed: tuple[int, int], shape, *, area_range, largest_range, max_regions,
                 shapes) -> np.ndarray:
    """A bool H x W object-shaped tamper mask (imuge_tf.attacks.cases.object_mask): drawn
    at S x S for a square photo of side S <= MASK_CANVAS, else on the MASK_CANVAS square and
    stretched to the photo (nearest neighbour)."""
    return cases.object_mask(seed, shape[0], shape[1], canvas=MASK_CANVAS, smooth=False,
                             area_range=area_range, largest_range=largest_range,
                             max_regions=max_regions, shapes=shapes)


def _fixed_share_mask(seed, shape, rst, rlt) -> np.ndarray:
    # Enough regions to reach RST without any exceeding RLT, and no more: masks.py would
    # otherwise spread the rest over up to `max_regions` small regions.
    regions = min(16, max(1, math.ceil(rst / rlt - 1e-6) + 1))
    return _tamper_mask(seed, shape, area_range=(rst, rst), largest_range=(rlt, rlt),
                        max_regions=regions, shapes=TAMPER_MASK["shapes"])
