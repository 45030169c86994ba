"""Parity gates: how far a converted model is from the Keras one it replaces, and whether
that is close enough to ship it (the encoder's TFLite variants against the Keras encoder, the
camera model against `Imuge.immunize`).
"""

from __future__ import annotations

import numpy as np

# Parity gates, applied to each TFLite variant against the Keras encoder on the check photos.
# fp32 must match to float rounding (a larger error means a broken conversion, not quantizing).
# A quantized variant may move the residual by a few 8-bit levels but must not erase it: its
# error's RMS is bounded by a share of the residual's own RMS.
FP32_MAX_LEVELS = 0.05
QUANTIZED_MAX_LEVELS = 8.0
QUANTIZED_RMS_SHARE = 0.5  # error RMS at most this share of the residual's own RMS
# The camera model's immunized photo against `Imuge.immunize` on the same photo, in levels on
# every pixel (the block mark picks its lattice points with exact arithmetic, so runtimes
# differ only by the rounding of the final sum).
CAMERA_MAX_LEVELS = 1


def residual_error(encoder, runner, images) -> dict:
    """How far `runner`'s residuals are from `encoder`'s, in 8-bit levels, on `images`."""
    errors, magnitudes = [], []
    for image in images:
        expected = np.asarray(encoder(image, training=False), np.float64)
        got = np.asarray(runner(image), np.float64)
        errors.append(np.abs(got - expected).ravel() * 255.0)
        magnitudes.append(np.abs(expected).ravel() * 255.0)
    errors, magnitudes = np.concatenate(errors), np.concatenate(magnitudes)
    return {"max_levels": float(errors.max()), "rms_levels": float(np.sqrt(np.mean(errors**2))),
            "p99_levels": float(np.percentile(errors, 99)),
            "residual_rms_levels": float(np.sqrt(np.mean(magnitudes**2)))}


def residual_gate(variant: str, error: dict) -> tuple[bool, str]:
    """Whether a variant's residual error is acceptable, and why not."""
    largest = error["max_levels"]
    if variant == "fp32":
        ok = largest <= FP32_MAX_LEVELS
        return ok, "" if ok else (f"fp32 residual differs by {largest:.3g} levels (max; "
                                  f"> {FP32_MAX_LEVELS}): a broken conversion")
    limit = QUANTIZED_RMS_SHARE * error["residual_rms_levels"]
    ok = largest <= QUANTIZED_MAX_LEVELS and error["rms_levels"] <= limit
    return ok, "" if ok else (
        f"residual error max {largest:.2f} / RMS {error['rms_levels']:.2f} levels "
        f"exceeds {QUANTIZED_MAX_LEVELS:g} / {limit:.2f} ({QUANTIZED_RMS_SHARE:.0%} of the "
        f"residual's own {error['residual_rms_levels']:.2f} levels RMS)")


def camera_parity(imuge, camera, photos) -> dict:
    """How far the camera model's immunized photos are from `Imuge.immunize` (8-bit levels)."""
    from imuge_tf.io import cover

    height, width = camera.shape[1], camera.shape[2]
    differences = []
    for photo in photos:
        photo = cover(photo, height, width)
        got = camera(photo).astype(np.int16)
        expected = imuge.immunize(photo).astype(np.int16)
        differences.append(np.abs(got - expected).ravel())
    difference = np.concatenate(differences)
    return {"photos": len(photos), "max_levels": int(difference.max()),
            "within_one_level_share": float(np.mean(difference <= 1)),
            "differing_share": float(np.mean(difference > 0)),
            "holds": bool(difference.max() <= CAMERA_MAX_LEVELS)}
