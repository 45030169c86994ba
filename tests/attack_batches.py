"""The batch the attack tests share: crops of real photos, donors cut from other photos,
rectangle masks and per-sample seeds, as the attack pipeline receives them."""

import numpy as np
import tensorflow as tf


def photo_batch(photos, names, size, *, stride, first_offset, offset_step, donor_offset,
                mask_top_min, seed):
    """Crops of `photos[name]` for each name (every `stride`-th pixel, `size` a side, each
    from its own offset), donors from the same photos in reverse order, one random
    rectangle mask per sample and a seed pair per sample, all from `seed`."""
    rng = np.random.default_rng(seed)

    def crop_of(name, offset):
        photo = photos[name]
        return photo[offset : offset + stride * size : stride,
                     offset : offset + stride * size : stride]

    images = np.stack([crop_of(name, first_offset + offset_step * i)
                       for i, name in enumerate(names)])
    donors = np.stack([crop_of(name, donor_offset) for name in reversed(names)])
    masks = np.zeros((len(names), size, size, 1), np.float32)
    for mask in masks:
        top, left = rng.integers(mask_top_min, size // 2, size=2)
        mask[top : top + size // 3, left : left + size // 4] = 1.0
    seeds = rng.integers(0, 2**31 - 1, size=(len(names), 2))
    return {
        "images": tf.constant(images.astype(np.float32) / 255.0),
        "donors": tf.constant(donors.astype(np.float32) / 255.0),
        "masks": tf.constant(masks),
        "seeds": tf.constant(seeds, tf.int32),
    }
