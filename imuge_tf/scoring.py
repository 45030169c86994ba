"""Per-image evaluation scores in numpy: image quality, tamper localization, ranking.

These score one received image at a time on the host (the `imuge evaluate` protocol and the
demo), as opposed to `imuge_tf.metrics`, which works on TF batches inside training; both turn a
mean squared error into PSNR with the one formula, `imuge_tf.metrics.mse_to_psnr`. This module
owns the pixel F1 (`f1`, and `pooled_f1` for a batch of masks).

Images are uint8 (0..255) or floats on the [0, 1] scale; both arguments of a comparison are
converted to float64 in [0, 1] first, so a uint8 image can be compared with a float one. Masks
are boolean-like H x W (or H x W x 1) arrays; values > 0.5 count as tampered.

Conventions for degenerate inputs, chosen so that means over many photos stay meaningful:

- `psnr` / `l_psnr` of identical pixels: `MAX_PSNR` (100 dB, as in training logs), not inf;
- `l_psnr` with an empty mask: NaN (there is nothing to score; `numpy.nanmean` skips it);
- `f1` / `iou` when neither mask has a tampered pixel: 1.0 (a perfect "nothing tampered");
- `auc` when the true mask is all one class: NaN (ROC AUC is undefined).
"""

from __future__ import annotations

import numpy as np

from imuge_tf.metrics import MAX_PSNR, mse_to_psnr

__all__ = [
    "BCE_EPSILON",
    "MAX_PSNR",
    "auc",
    "bce",
    "f1",
    "iou",
    "l_psnr",
    "pooled_f1",
    "psnr",
    "ssim",
    "to_unit_float",
]

# Probabilities are clipped to [eps, 1 - eps] before the logarithm, as Keras does, so one
# confidently wrong pixel gives a large but finite loss.
BCE_EPSILON = 1e-7


def to_unit_float(image) -> np.ndarray:
    """`image` as float64 on the [0, 1] scale: uint8 is divided by 255, floats are kept."""
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"image must be uint8 or float, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.integer):
        # Another integer type is ambiguous (0..255? 0..65535?): refuse rather than guess.
        raise ValueError(f"integer images must be uint8, got dtype {array.dtype}")
    return array.astype(np.float64)


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = to_unit_float(a), to_unit_float(b)
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    return a, b


def _mask(mask, shape=None) -> np.ndarray:
    """A bool H x W mask (an H x W x 1 one is squeezed); checked against `shape`'s H x W."""
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"mask must be H x W or H x W x 1, got shape {np.shape(mask)}")
    if shape is not None and array.shape != tuple(shape[:2]):
        raise ValueError(f"mask shape {array.shape} does not match the image's {shape[:2]}")
    return array > 0.5 if array.dtype != bool else array


def _psnr_of(mse) -> float:
    return float(mse_to_psnr(np.float64(mse)))


def psnr(a, b) -> float:
    """PSNR in dB between two images of the same shape (uint8 or [0, 1] floats), peak 1.0."""
    a, b = _pair(a, b)
    return _psnr_of(np.mean(np.square(a - b)))


def l_psnr(original, recovered, mask) -> float:
    """Local PSNR: PSNR over the pixels inside `mask` only (all channels of those pixels).

    NaN when the mask is empty.
    """
    original, recovered = _pair(original, recovered)
    inside = _mask(mask, original.shape)
    if not inside.any():
        return float("nan")
    return _psnr_of(np.mean(np.square(original[inside] - recovered[inside])))


def ssim(a, b) -> float:
    """Mean SSIM (scikit-image, uniform 7 x 7 windows, data range 1) over all channels.

    Images smaller than 7 pixels on a side use the largest odd window that fits.
    """
    from skimage.metrics import structural_similarity

    a, b = _pair(a, b)
    if a.ndim not in (2, 3):
        raise ValueError(f"images must be H x W or H x W x C, got shape {a.shape}")
    side = min(a.shape[:2])
    if side < 3:
        raise ValueError(f"SSIM needs images of at least 3 x 3 pixels, got {a.shape[:2]}")
    window = min(7, side if side % 2 else side - 1)
    channel_axis = -1 if a.ndim == 3 else None
    return float(structural_similarity(a, b, data_range=1.0, channel_axis=channel_axis,
                                       win_size=window))


def bce(probability, true_mask) -> float:
    """Mean binary cross-entropy of per-pixel tamper probabilities against the true mask."""
    p = np.asarray(probability, dtype=np.float64)
    if p.ndim == 3 and p.shape[-1] == 1:
        p = p[..., 0]
    target = _mask(true_mask, p.shape).astype(np.float64)
    p = np.clip(p, BCE_EPSILON, 1.0 - BCE_EPSILON)
    return float(-np.mean(target * np.log(p) + (1.0 - target) * np.log1p(-p)))


def _confusion(predicted, true) -> tuple[int, int, int]:
    true = _mask(true)
    predicted = _mask(predicted, true.shape)
    tp = int(np.count_nonzero(predicted & true))
    fp = int(np.count_nonzero(predicted & ~true))
    fn = int(np.count_nonzero(~predicted & true))
    return tp, fp, fn


def f1(predicted_mask, true_mask) -> float:
    """Pixel F1 of a predicted binary mask against the true one (1.0 when both are empty)."""
    tp, fp, fn = _confusion(predicted_mask, true_mask)
    denominator = 2 * tp + fp + fn
    return 1.0 if denominator == 0 else 2.0 * tp / denominator


def pooled_f1(predicted_masks, true_masks) -> float:
    """Pixel F1 of a batch of masks (N x H x W or N x H x W x 1) with all pixels pooled.

    One F1 over every pixel of the batch, not the mean of per-image F1s, so that a sample
    weighs by its pixels and a sample without any tamper (whose own F1 is 0 or 1) does not
    swing the figure. 1.0 when no mask of either batch has a tampered pixel.
    """
    predicted_masks, true_masks = np.asarray(predicted_masks), np.asarray(true_masks)
    if len(predicted_masks) != len(true_masks):
        raise ValueError(f"batches differ in length: {len(predicted_masks)} predicted masks, "
                         f"{len(true_masks)} true ones")
    tp = fp = fn = 0
    for predicted, true in zip(predicted_masks, true_masks):
        counts = _confusion(predicted, true)
        tp, fp, fn = tp + counts[0], fp + counts[1], fn + counts[2]
    denominator = 2 * tp + fp + fn
    return 1.0 if denominator == 0 else 2.0 * tp / denominator


def iou(predicted_mask, true_mask) -> float:
    """Intersection over union of two binary masks (1.0 when both are empty)."""
    tp, fp, fn = _confusion(predicted_mask, true_mask)
    union = tp + fp + fn
    return 1.0 if union == 0 else tp / union


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of `values`, ties sharing the mean of the ranks they span."""
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    del unique
    # A group of `count` equal values starting after `start` earlier ones spans ranks
    # start + 1 .. start + count, whose mean is start + (count + 1) / 2.
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return (starts + (counts + 1) / 2.0)[inverse.ravel()]


def auc(probability, true_mask) -> float:
    """Pixel-level ROC AUC of tamper probabilities against the true mask.

    Computed from ranks (the Mann-Whitney U statistic): the chance that a random tampered pixel
    scores higher than a random untampered one, ties counting one half. NaN when the true mask
    is all tampered or all untampered.
    """
    scores = np.asarray(probability, dtype=np.float64)
    if scores.ndim == 3 and scores.shape[-1] == 1:
        scores = scores[..., 0]
    positive = _mask(true_mask, scores.shape).ravel()
    scores = scores.ravel()
    n_positive = int(np.count_nonzero(positive))
    n_negative = positive.size - n_positive
    if n_positive == 0 or n_negative == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    u = ranks[positive].sum() - n_positive * (n_positive + 1) / 2.0
    return float(u / (n_positive * n_negative))


def flat_area(image, window: int = 7, below: float = 1.5) -> np.ndarray:
    """H x W bool: pixels whose `window` x `window` luminance standard deviation is below
    `below` 8-bit levels (sky, walls, studio backdrops: where a pattern shows first)."""
    from scipy import ndimage

    levels = to_unit_float(image) * 255.0
    luminance = levels[..., :3] @ np.array([0.299, 0.587, 0.114]) if levels.ndim == 3 else levels
    mean = ndimage.uniform_filter(luminance, window)
    variance = ndimage.uniform_filter(luminance**2, window) - mean**2
    return np.sqrt(np.maximum(variance, 0.0)) < below


def mosaic_ratio(original, immunized, cell: int) -> float:
    """How much the residual `immunized - original` steps on the lines of a `cell`-px grid
    (`cell` a multiple of 8): the mean step between neighbouring 8 x 8-block means across the
    grid's lines over the same step elsewhere. About 1 without a cell pattern; far above 1
    for a mosaic of cells (8 x 8-block means leave out patterns within a block, such as the
    block mark's, which has no block mean)."""
    if cell < 16 or cell % 8:
        raise ValueError(f"cell must be a multiple of 8 of at least 16 px, got {cell}")
    original, immunized = _pair(original, immunized)
    residual = (immunized - original).reshape(*original.shape[:2], -1).mean(axis=2)
    rows, columns = residual.shape[0] // 8, residual.shape[1] // 8
    means = residual[:rows * 8, :columns * 8].reshape(rows, 8, columns, 8).mean(axis=(1, 3))
    steps = np.abs(np.diff(means, axis=1))
    on_grid = np.zeros(steps.shape[1], bool)
    on_grid[cell // 8 - 1::cell // 8] = True
    return float(steps[:, on_grid].mean() / max(steps[:, ~on_grid].mean(), 1e-12))
