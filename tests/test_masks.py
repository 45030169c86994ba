"""Tamper masks: RST/RLT land near their targets, shapes vary, seeds decide everything."""

import functools

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from imuge_tf.attacks.masks import (
    SHAPES,
    mask_statistics,
    random_tamper_mask,
    random_tamper_masks,
)

SEEDS = 30


def _masks(size, count=SEEDS, **kwargs):
    """`count` masks for seeds [i, 17] as a numpy array [count, S, S] (cached: tracing is slow)."""
    return _cached_masks(size, count, tuple(sorted(kwargs.items()))).copy()


@functools.cache
def _cached_masks(size, count, kwargs):
    seeds = tf.stack([tf.range(count), tf.fill([count], 17)], axis=1)
    masks = tf.function(random_tamper_masks, autograph=False)(seeds, size, **dict(kwargs))
    return masks.numpy()[..., 0]


def _statistics(masks):
    return np.array([mask_statistics(m) for m in masks])


@pytest.mark.parametrize(
    "area, largest, regions",
    [
        (0.20, 0.10, 4),  # the brief's example
        (0.10, 0.06, 4),  # paper, Table 2, row 1
        (0.25, 0.06, 6),  # paper, Table 2, row 2 (needs 5 regions of at most 6 %)
        (0.30, 0.16, 4),  # paper, Table 2, row 4
    ],
)
def test_mean_rst_and_rlt_match_fixed_targets(area, largest, regions):
    stats = _statistics(
        _masks(96, area_range=(area, area), largest_range=(largest, largest), max_regions=regions)
    )
    mean_rst, mean_rlt = stats.mean(axis=0)
    assert abs(mean_rst - area) < 0.02
    assert abs(mean_rlt - largest) < 0.02
    # Not only on average: each mask is close too.
    assert np.all(np.abs(stats[:, 0] - area) < 0.05)


def test_ranges_are_sampled_and_rlt_never_exceeds_rst():
    stats = _statistics(_masks(96))
    rst, rlt = stats[:, 0], stats[:, 1]
    assert np.all(rlt <= rst + 1e-9)
    assert np.all((rst > 0.08) & (rst < 0.33))
    assert np.all((rlt > 0.05) & (rlt < 0.18))
    assert rst.std() > 0.03  # drawn from the range, not a constant
    assert abs(rst.mean() - 0.20) < 0.04


def test_rlt_above_rst_is_lowered_to_a_single_region():
    # The paper's Table 2 lists RST 10 % with RLT 16 %: one region of 10 % is what fits.
    stats = _statistics(_masks(96, area_range=(0.10, 0.10), largest_range=(0.16, 0.16)))
    assert np.allclose(stats[:, 0], stats[:, 1])
    assert abs(stats[:, 0].mean() - 0.10) < 0.01


def test_one_region_when_max_regions_is_one():
    masks = _masks(64, count=8, area_range=(0.2, 0.2), largest_range=(0.05, 0.05), max_regions=1)
    for mask in masks:
        assert ndimage.label(mask)[1] == 1
        rst, rlt = mask_statistics(mask)
        assert rst == rlt and abs(rst - 0.2) < 0.03


def test_regions_are_separate_components():
    # RST 20 % from regions of at most 10 %: at least two regions, kept apart.
    masks = _masks(96, area_range=(0.2, 0.2), largest_range=(0.1, 0.1), max_regions=4)
    counts = [ndimage.label(m, structure=np.ones((3, 3)))[1] for m in masks]
    assert min(counts) >= 2
    assert max(counts) > 2  # sometimes more than the minimum


def _component_fill_ratios(masks):
    """Area / bounding-box area of every connected region of every mask."""
    ratios = []
    for mask in masks:
        labels, _ = ndimage.label(mask)
        for index, box in enumerate(ndimage.find_objects(labels), start=1):
            ratios.append(np.mean(labels[box] == index))
    return np.array(ratios)


def test_shapes_are_not_only_rectangles():
    ratios = _component_fill_ratios(_masks(96))
    assert np.mean(ratios < 0.95) > 0.3  # ellipses and polygons fill ~60-85 % of their box
    assert np.any(ratios == 1.0)  # and some rectangles


def test_rectangles_only_fill_their_boxes():
    ratios = _component_fill_ratios(_masks(96, count=10, shapes=("rectangle",)))
    assert np.all(ratios == 1.0)


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_alone(shape):
    masks = _masks(96, count=10, shapes=(shape,), area_range=(0.15, 0.15))
    stats = _statistics(masks)
    assert np.all(masks.reshape(len(masks), -1).max(axis=1) == 1.0)
    assert abs(stats[:, 0].mean() - 0.15) < 0.02
    if shape != "rectangle":
        assert np.all(_component_fill_ratios(masks) < 1.0)


def test_masks_are_binary_float32_with_the_requested_size():
    mask = random_tamper_mask(tf.constant([1, 2]), 48)
    assert mask.shape == (48, 48, 1) and mask.dtype == tf.float32
    assert set(np.unique(mask.numpy())) == {0.0, 1.0}


def test_never_empty_even_for_tiny_areas():
    masks = _masks(16, count=10, area_range=(0.001, 0.001), largest_range=(0.001, 0.001))
    assert np.all(masks.reshape(10, -1).sum(axis=1) >= 1)


def test_same_seed_same_mask_and_other_seeds_differ():
    a = random_tamper_mask(tf.constant([5, 6], tf.int64), 64).numpy()
    b = random_tamper_mask(tf.constant([5, 6], tf.int32), 64).numpy()
    c = random_tamper_mask(tf.constant([5, 7], tf.int64), 64).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    masks = _masks(64, count=10)
    assert len({m.tobytes() for m in masks}) == 10


def test_batched_masks_equal_single_masks_and_work_in_tf_data():
    seeds = tf.constant([[3, 1], [4, 1], [5, 9]], tf.int64)
    batched = random_tamper_masks(seeds, 32, max_regions=3).numpy()
    dataset = tf.data.Dataset.from_tensor_slices(seeds).map(
        lambda s: random_tamper_mask(s, 32, max_regions=3), num_parallel_calls=2
    )
    for single, from_data in zip(batched, dataset):
        np.testing.assert_array_equal(single, from_data.numpy())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"area_range": (0.0, 0.2)}, "area_range"),
        ({"area_range": (0.3, 0.2)}, "min <= max"),
        ({"area_range": (0.2, 1.0)}, "area_range"),
        ({"area_range": 0.2}, "pair"),
        ({"largest_range": (-0.1, 0.1)}, "largest_range"),
        ({"largest_range": ("a", "b")}, "largest_range"),
        ({"max_regions": 0}, "max_regions"),
        ({"max_regions": 2.5}, "max_regions"),
        ({"shapes": ("triangle",)}, "triangle"),
        ({"shapes": ()}, "shapes"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        random_tamper_mask(tf.constant([1, 2]), 32, **kwargs)


def test_bad_size_and_seed_raise():
    with pytest.raises(ValueError, match="image_size"):
        random_tamper_mask(tf.constant([1, 2]), 4)
    with pytest.raises(ValueError, match="image_size"):
        random_tamper_mask(tf.constant([1, 2]), 32.0)
    with pytest.raises(ValueError, match="seed"):
        random_tamper_mask(tf.constant([1.0, 2.0]), 32)
    with pytest.raises(ValueError):
        random_tamper_mask(tf.constant([1, 2, 3]), 32)


def test_mask_statistics_on_known_masks():
    mask = np.zeros((10, 10, 1), np.float32)
    mask[0:2, 0:3] = 1  # 6 pixels
    mask[5:9, 5:9] = 1  # 16 pixels
    assert mask_statistics(mask) == pytest.approx((0.22, 0.16))
    # Regions touching at a corner are one region.
    mask[2, 3] = 1
    mask[3, 4] = 1
    mask[4, 4] = 1
    assert mask_statistics(mask[..., 0]) == pytest.approx((0.25, 0.25))
    assert mask_statistics(np.zeros((4, 4))) == (0.0, 0.0)
    with pytest.raises(ValueError, match="shape"):
        mask_statistics(np.zeros((2, 4, 4, 1)))
