"""Per-image scores: hand-computed values and brute-force references (no sklearn)."""

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf

from imuge_tf import metrics, scoring


def test_psnr_matches_the_definition_for_uint8_and_floats():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255  # one channel value off by the full range: MSE = 1 / 48
    assert scoring.psnr(a, b) == pytest.approx(10 * math.log10(48))
    # The same images on the [0, 1] scale, and mixed dtypes, give the same number.
    assert scoring.psnr(a / 255.0, b / 255.0) == pytest.approx(10 * math.log10(48))
    assert scoring.psnr(a, b / 255.0) == pytest.approx(10 * math.log10(48))
    assert scoring.psnr(a, a) == scoring.MAX_PSNR
    with pytest.raises(ValueError):
        scoring.psnr(a, b[:2])
    with pytest.raises(ValueError):
        scoring.psnr(a.astype(np.int32), b)


def test_l_psnr_looks_only_inside_the_mask():
    original = np.full((4, 4, 3), 0.5)
    recovered = original.copy()
    recovered[:2] = 0.6  # error 0.1 in the top half
    recovered[3, 3] = 0.0  # a big error outside the mask must not count
    mask = np.zeros((4, 4), bool)
    mask[:2] = True
    assert scoring.l_psnr(original, recovered, mask) == pytest.approx(20.0)
    assert scoring.l_psnr(original, recovered, mask[..., None]) == pytest.approx(20.0)
    assert math.isnan(scoring.l_psnr(original, recovered, np.zeros((4, 4), bool)))
    with pytest.raises(ValueError):
        scoring.l_psnr(original, recovered, mask[:3])


def test_per_photo_and_batched_psnr_are_one_formula():
    # The per-photo scores (float64) and the training logs (float32 batches) both turn an
    # MSE into dB with metrics.mse_to_psnr: the same numbers for the same photos.
    rng = np.random.default_rng(0)
    a = rng.random((3, 8, 8, 3))
    b = np.clip(a + rng.normal(0, [[[[0.01]]], [[[0.05]]], [[[0.2]]]], a.shape), 0, 1)
    mask = np.zeros((3, 8, 8, 1))
    mask[:, 2:6, 1:5] = 1.0
    as_tensor = lambda x: tf.constant(x, tf.float32)  # noqa: E731
    batched = metrics.psnr(as_tensor(a), as_tensor(b)).numpy()
    local, _ = metrics.masked_psnr(as_tensor(a), as_tensor(b), as_tensor(mask))
    assert [scoring.psnr(x, y) for x, y in zip(a, b)] == pytest.approx(batched, rel=1e-5)
    assert [scoring.l_psnr(x, y, m) for x, y, m in zip(a, b, mask)] == pytest.approx(
        local.numpy(), rel=1e-5)
    # The same cap, for identical photos and for errors too small to matter.
    assert scoring.psnr(a[0], a[0]) == float(metrics.psnr(a[:1], a[:1])[0]) == scoring.MAX_PSNR
    assert scoring.psnr(a[0], a[0] + 1e-7) == scoring.MAX_PSNR
    # The per-photo score keeps float64 (no float32 rounding of the MSE).
    assert metrics.mse_to_psnr(np.float64(1e-3)).dtype == tf.float64
    assert scoring.psnr(np.zeros((2, 2)), np.full((2, 2), 1e-3)) == pytest.approx(60.0, abs=1e-9)


def test_ssim_is_one_for_identical_images_and_drops_with_noise():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert scoring.ssim(image, image) == pytest.approx(1.0)
    noisy = np.clip(image + rng.normal(0, 40, image.shape), 0, 255).astype(np.uint8)
    assert scoring.ssim(image, noisy) < 0.9
    # Tiny images fall back to a smaller window instead of failing.
    assert scoring.ssim(image[:5, :5], image[:5, :5]) == pytest.approx(1.0)


def test_bce_hand_values():
    probability = np.array([[0.9, 0.2], [0.5, 0.0]])
    mask = np.array([[1, 0], [1, 0]], bool)
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.5) + math.log(1 - 1e-7)) / 4
    assert scoring.bce(probability, mask) == pytest.approx(expected)
    # A confidently wrong pixel is large but finite (clipped like Keras).
    assert math.isfinite(scoring.bce(np.zeros((2, 2)), np.ones((2, 2), bool)))
    assert scoring.bce(np.zeros((2, 2)), np.ones((2, 2), bool)) == pytest.approx(
        -math.log(1e-7))


def test_f1_and_iou_hand_values():
    true = np.array([[1, 1, 0, 0]], bool)
    predicted = np.array([[1, 0, 1, 0]], bool)  # tp 1, fp 1, fn 1
    assert scoring.f1(predicted, true) == pytest.approx(0.5)
    assert scoring.iou(predicted, true) == pytest.approx(1 / 3)
    assert scoring.f1(true, true) == 1.0 and scoring.iou(true, true) == 1.0
    empty = np.zeros_like(true)
    assert scoring.f1(empty, empty) == 1.0 and scoring.iou(empty, empty) == 1.0
    assert scoring.f1(empty, true) == 0.0 and scoring.iou(predicted, empty) == 0.0
    # Probabilities are thresholded at 0.5.
    assert scoring.f1(np.array([[0.9, 0.6, 0.4, 0.1]]), true) == 1.0


def test_pooled_f1_counts_every_pixel_of_the_batch_once():
    # Sample 0: tp 1, fp 1, fn 1 (F1 0.5); sample 1: tp 4 (F1 1.0). Pooled: tp 5, fp 1, fn 1,
    # so 10 / 12, not the per-image mean 0.75.
    true = np.array([[[1, 1, 0, 0]], [[1, 1, 1, 1]]], bool)
    predicted = np.array([[[1, 0, 1, 0]], [[1, 1, 1, 1]]], bool)
    assert scoring.pooled_f1(predicted, true) == pytest.approx(10 / 12)
    # A TF-style batch of probabilities (N x H x W x 1), thresholded at 0.5 as `f1` does.
    probabilities = np.where(predicted, 0.9, 0.2)[..., None].astype(np.float32)
    assert scoring.pooled_f1(probabilities, true[..., None].astype(np.float32)) == \
        pytest.approx(10 / 12)
    # One sample: the same as `f1`; nothing tampered anywhere: 1.0.
    assert scoring.pooled_f1(predicted[:1], true[:1]) == scoring.f1(predicted[0], true[0])
    empty = np.zeros_like(true)
    assert scoring.pooled_f1(empty, empty) == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        scoring.pooled_f1(predicted, true[:1])


def brute_force_auc(scores, positive):
    """P(score of a positive > score of a negative) + 0.5 P(equal), over all pairs."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_hand_values_and_brute_force_with_ties():
    assert scoring.auc(np.array([[0.1, 0.4, 0.35, 0.8]]),
                       np.array([[0, 0, 1, 1]], bool)) == pytest.approx(0.75)
    assert scoring.auc(np.array([[0.5, 0.5]]), np.array([[1, 0]], bool)) == pytest.approx(0.5)
    rng = np.random.default_rng(1)
    for _ in range(5):
        scores = rng.integers(0, 6, (7, 9)) / 5.0  # few distinct values: many ties
        positive = rng.random((7, 9)) < 0.4
        assert scoring.auc(scores, positive) == pytest.approx(
            brute_force_auc(scores.ravel(), positive.ravel()))
    perfect = np.array([[0.0, 0.2, 0.9, 1.0]])
    assert scoring.auc(perfect, perfect > 0.5) == 1.0
    assert scoring.auc(1.0 - perfect, perfect > 0.5) == 0.0


def test_auc_is_nan_for_one_class_masks():
    scores = np.random.default_rng(2).random((4, 4))
    assert math.isnan(scoring.auc(scores, np.zeros((4, 4), bool)))
    assert math.isnan(scoring.auc(scores, np.ones((4, 4), bool)))
