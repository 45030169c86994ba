"""Post-processing of the verifier's map: Otsu's threshold and the 4 x 4 opening (section 3.5)."""

import numpy as np
import pytest
from skimage.filters import threshold_otsu

from imuge_tf.postprocess import otsu_threshold, refine_mask


def noisy_square(seed=0, size=96, specks=30):
    """A probability map: a bright square on a dark noisy background, with bright specks."""
    rng = np.random.default_rng(seed)
    probability = np.clip(rng.normal(0.1, 0.08, (size, size)), 0, 1)
    truth = np.zeros((size, size), bool)
    truth[20:60, 30:75] = True
    probability[truth] = np.clip(rng.normal(0.85, 0.08, truth.sum()), 0, 1)
    speck_rows = rng.integers(0, size, specks)
    speck_cols = rng.integers(0, size, specks)
    outside = ~truth[speck_rows, speck_cols]
    probability[speck_rows[outside], speck_cols[outside]] = 0.95
    return probability.astype(np.float32), truth, (speck_rows[outside], speck_cols[outside])


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_otsu_matches_skimage(seed):
    rng = np.random.default_rng(seed)
    # Bimodal with unequal classes and spreads, and a unimodal skewed map.
    bimodal = np.concatenate([rng.normal(0.2, 0.05, 3000), rng.normal(0.7, 0.1, 1000)])
    skewed = rng.beta(2, 8, 4000)
    for values in (bimodal, skewed):
        values = values.reshape(40, 100)
        bin_width = (values.max() - values.min()) / 256
        assert otsu_threshold(values) == pytest.approx(threshold_otsu(values), abs=bin_width)


def test_otsu_separates_two_levels_and_handles_a_constant_map():
    values = np.zeros((10, 10))
    values[:, 7:] = 0.9
    threshold = otsu_threshold(values)
    assert 0.0 <= threshold < 0.9
    assert ((values > threshold) == (values == 0.9)).all()
    assert otsu_threshold(np.full((5, 5), 0.3)) == pytest.approx(0.3)


def test_noisy_square_is_recovered_and_specks_removed():
    probability, truth, (rows, cols) = noisy_square()
    thresholded = refine_mask(probability, kernel_size=0)
    assert thresholded[rows, cols].all()  # the specks pass the threshold...
    mask = refine_mask(probability)
    assert mask.dtype == bool and mask.shape == truth.shape
    assert iou(mask, truth) > 0.9
    assert not mask[rows, cols].any()  # ...and the opening removes them
    assert not (mask & ~thresholded).any()  # an opening only removes pixels


def test_region_touching_the_border_keeps_its_edge():
    probability = np.zeros((64, 64), np.float32)
    probability[:, :10] = 1.0  # cropped-away borders
    probability[-6:, :] = 1.0
    probability[:5, 20:40] = 1.0
    probability[30:50, 30:50] = 1.0
    mask = refine_mask(probability)
    np.testing.assert_array_equal(mask, probability > 0.5)


def test_empty_and_full_maps():
    assert not refine_mask(np.zeros((32, 32), np.float32)).any()
    # Low noise only (an intact image): Otsu alone would flag about half of it.
    rng = np.random.default_rng(3)
    quiet = rng.uniform(0.0, 0.1, (64, 64))
    assert (quiet > otsu_threshold(quiet)).mean() > 0.2
    assert not refine_mask(quiet).any()
    assert refine_mask(np.ones((32, 32, 1), np.float32)).all()


def test_explicit_threshold_and_bad_input():
    probability, truth, _ = noisy_square(seed=4)
    assert not refine_mask(probability, threshold=0.99).any()
    assert iou(refine_mask(probability, threshold=0.5), truth) > 0.9
    with pytest.raises(ValueError, match="H x W"):
        refine_mask(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        otsu_threshold(np.full((4, 4), np.nan))
