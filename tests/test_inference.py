"""The Imuge facade on real photos of any size (plumbing; quality is in test_pretrained.py)."""

import json
import os
import shutil

import numpy as np
import pytest

from imuge_tf.inference import (
    CALIBRATION_ATTACKS,
    Imuge,
    ModelNotFoundError,
    calibrate,
    check_photo,
)


@pytest.fixture(scope="module")
def imuge(untrained_model_dir):
    return Imuge.load(untrained_model_dir)


@pytest.mark.parametrize("size", [(37, 53), (128, 128), (300, 200)])
def test_immunize_keeps_the_size_and_the_residual_keeps_the_aspect_ratio(imuge, photos, size):
    import tensorflow as tf

    photo = np.asarray(tf.image.resize(photos["coffee"][None], size, antialias=True))[0]
    photo = photo.round().astype(np.uint8)
    immunized = imuge.immunize(photo)
    assert immunized.shape == photo.shape and immunized.dtype == np.uint8
    residual = imuge.residual(photo)
    assert residual.shape == (*imuge.working_size(*size), 3)
    assert (immunized != photo).any()  # an untrained encoder still adds something


def test_recover_replaces_pixels_only_inside_the_mask(imuge, photos):
    photo = photos["chelsea"]
    mask = np.zeros(photo.shape[:2], bool)
    mask[50:120, 200:330] = True
    tampered = photo.copy()
    tampered[mask] = (0, 255, 0)
    recovered = imuge.recover_with_mask(tampered, mask)
    assert recovered.shape == photo.shape and recovered.dtype == np.uint8
    np.testing.assert_array_equal(recovered[~mask], tampered[~mask])
    # The pre-fill alone already brings the green patch closer to the cat.
    before = np.abs(tampered[mask].astype(float) - photo[mask]).mean()
    after = np.abs(recovered[mask].astype(float) - photo[mask]).mean()
    assert after < before
    with pytest.raises(ValueError, match="mask shape"):
        imuge.recover_with_mask(tampered, mask[:10])


@pytest.mark.slow
def test_the_learned_verifier_cannot_vouch_for_a_photo(imuge, photos):
    """Without the keyed mark a photo is not_immunized whatever the learned verifier's stored
    thresholds say: thresholds that would call every map intact change nothing."""
    photo = photos["rocket"]
    saved = dict(imuge.thresholds)
    try:
        imuge.thresholds = {"intact_max_fraction": 1.0, "not_immunized_min_fraction": 1.01}
        result = imuge.verify(photo)
        assert result.verdict == "not_immunized" and result.mask.all()
        assert result.evidence == "verifier"
    finally:
        imuge.thresholds = saved
    result = imuge.verify(photo)
    assert result.probability.shape == photo.shape[:2]
    assert result.mask.shape == photo.shape[:2]
    assert 0.0 <= result.probability.min() and result.probability.max() <= 1.0
    summary = json.loads(json.dumps(result.to_dict()))
    assert summary["verdict"] in ("intact", "tampered", "not_immunized")
    assert summary["height"] == photo.shape[0] and summary["width"] == photo.shape[1]


def test_recover_leaves_intact_and_not_immunized_photos_alone(imuge, photos):
    photo = photos["astronaut"]
    result = imuge.verify(photo)
    result.verdict = "not_immunized"
    np.testing.assert_array_equal(imuge.recover(photo, result), photo)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((64, 64, 3), np.float32), "uint8"),
    (np.zeros((64, 64, 4), np.uint8), "H x W x 3"),
    (np.zeros((8, 64, 3), np.uint8), "at least"),
])
def test_bad_arrays_are_refused_with_a_reason(bad, message):
    with pytest.raises(ValueError, match=message):
        check_photo(bad)


def test_grayscale_arrays_become_rgb():
    assert check_photo(np.zeros((20, 30), np.uint8)).shape == (20, 30, 3)


def test_missing_or_incomplete_model_folders_are_named(tmp_path, untrained_model_dir):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        Imuge.load(str(tmp_path / "nowhere"))
    with pytest.raises(ModelNotFoundError, match="no imuge.json"):
        Imuge.load(str(tmp_path))
    broken = tmp_path / "work" / "inference"
    shutil.copytree(untrained_model_dir, broken)
    os.remove(broken / "decoder.keras")
    with pytest.raises(ModelNotFoundError, match="decoder.keras"):
        Imuge.load(str(tmp_path / "work"))  # a work directory resolves to its inference/


def test_calibration_is_stored_with_the_weights(tmp_path, untrained_model_dir, photos):
    folder = tmp_path / "inference"
    shutil.copytree(untrained_model_dir, folder)
    imuge = Imuge.load(str(folder))
    small = [photo[:96, :96] for photo in (photos["coffee"], photos["chelsea"])]
    report = calibrate(imuge, small)
    thresholds = report["thresholds"]
    assert 0 < thresholds["intact_max_fraction"] <= 0.05
    assert 0.4 <= thresholds["not_immunized_min_fraction"] <= 0.95
    assert len(report["never_immunized_flagged"]) == 2 * len(CALIBRATION_ATTACKS)
    reloaded = Imuge.load(str(folder))
    assert reloaded.thresholds == thresholds
    assert reloaded.metadata["calibration"]["photos"] == 2


def test_half_precision_weights_are_loaded_by_name(untrained_model_dir, tmp_path, photos):
    from imuge_tf.inference import HALF_SUFFIX, NETWORKS, save_half

    full = Imuge.load(untrained_model_dir)
    folder = tmp_path / "half"
    shutil.copytree(untrained_model_dir, folder)
    metadata = json.loads((folder / "imuge.json").read_text())
    metadata["networks"] = {name: f"{name}{HALF_SUFFIX}" for name in NETWORKS}
    (folder / "imuge.json").write_text(json.dumps(metadata))
    for name in NETWORKS:
        save_half(getattr(full, name), str(folder / f"{name}{HALF_SUFFIX}"))
    half = Imuge.load(str(folder))
    for name in NETWORKS:
        for kept, stored in zip(getattr(full, name).weights, getattr(half, name).weights):
            assert kept.path == stored.path
            np.testing.assert_array_equal(
                np.asarray(stored), np.asarray(kept).astype(np.float16).astype(np.float32))
    # A file that lacks a variable (or holds another network's) is refused by name.
    with np.load(folder / f"decoder{HALF_SUFFIX}") as stored:
        arrays = {key: stored[key] for key in stored.files}
    dropped = sorted(arrays)[0]
    del arrays[dropped]
    np.savez(folder / f"decoder{HALF_SUFFIX}", **arrays)
    with pytest.raises(ModelNotFoundError, match="missing") as error:
        Imuge.load(str(folder))
    assert dropped in str(error.value)
