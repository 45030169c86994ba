"""Verdicts that cost something to fool: no false alarms, crops, turns and resizes understood,
keys and content binding (shipped weights, bundled photos, Pillow's real codecs)."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image
from real_codecs import jpeg, round_trip

from imuge_tf import Imuge
from imuge_tf.inference import AlreadyImmunizedError
from imuge_tf.keys import KEY_ENV, DemoKeyWarning, KeyFileError, read_key_file
from imuge_tf.samples import SAMPLE_PHOTO_NAMES, sample_photo

OWNER = b"the owner's secret key for the tests"
OTHER = b"somebody else's key"


@pytest.fixture(scope="module")
def owner():
    return Imuge.from_pretrained(key=OWNER)


@pytest.fixture(scope="module")
def immunized(owner):
    return {name: owner.immunize(sample_photo(name)) for name in ("astronaut", "coffee",
                                                                  "chelsea", "retina")}


def resize(image, factor, method=Image.Resampling.BICUBIC):
    height, width = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize(
        (round(width * factor), round(height * factor)), method))


def f1(predicted, true):
    return 2 * np.sum(predicted & true) / max(predicted.sum() + true.sum(), 1)


@pytest.mark.parametrize("name", SAMPLE_PHOTO_NAMES)
def test_untouched_bundled_photos_are_intact_as_saved_and_after_jpeg(owner, name):
    protected = owner.immunize(sample_photo(name))
    for received in (protected, round_trip(protected, "PNG"), jpeg(protected, 75)):
        result = owner.verify(received)
        assert result.verdict == "intact", (name, result.to_dict())


@pytest.mark.parametrize("offset", [(13, 21), (5, 3), (37, 90), (64, 8)])
def test_a_crop_at_any_offset_is_intact_and_its_origin_found(owner, immunized, offset):
    top, left = offset
    received = immunized["astronaut"][top:top + 400, left:left + 380]
    result = owner.verify(received)
    assert result.verdict == "intact", result.to_dict()
    assert result.crop_origin == (top, left) and result.rotation == 0
    assert result.to_dict()["geometry"]["crop_origin"] == [top, left]


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_quarter_turns_are_intact_and_reported(owner, immunized, turns):
    result = owner.verify(np.rot90(immunized["coffee"], turns).copy())
    assert result.verdict == "intact", result.to_dict()
    assert result.rotation == 90 * turns


def test_a_tamper_in_a_turned_and_cropped_photo_is_found_where_it_is(owner, immunized):
    protected = immunized["astronaut"]
    donor = sample_photo("retina")[400:912, 400:912]
    truth = np.zeros(protected.shape[:2], bool)
    truth[150:260, 200:330] = True
    tampered = np.where(truth[:, :, None], donor, protected)
    received, received_truth = np.rot90(tampered, 1)[7:, 11:], np.rot90(truth, 1)[7:, 11:]
    result = owner.verify(jpeg(np.ascontiguousarray(received), 90))
    assert result.verdict == "tampered" and result.rotation == 90
    assert f1(result.mask, received_truth) > 0.85


def test_recovery_of_a_turned_photo_reads_its_reference(owner, immunized):
    protected = immunized["astronaut"]
    truth = np.zeros(protected.shape[:2], bool)
    truth[150:260, 200:330] = True
    tampered = np.where(truth[:, :, None], 255 - protected, protected)
    turned, turned_truth = np.rot90(tampered, 3).copy(), np.rot90(truth, 3)
    result = owner.verify(turned)
    assert result.verdict == "tampered" and result.rotation == 270
    recovered = owner.recover(turned, result)
    original = np.rot90(sample_photo("astronaut"), 3).astype(float)
    error = np.abs(recovered.astype(float) - original)[turned_truth].mean()
    received_error = np.abs(turned.astype(float) - original)[turned_truth].mean()
    assert error < received_error / 4


def test_recovery_of_a_cropped_photo_finds_where_its_records_are(owner, immunized):
    """After a crop the records' placement (which depends on the original size) is found
    again: recovery reads the reference, not only the decoder."""
    protected = immunized["astronaut"]
    truth = np.zeros(protected.shape[:2], bool)
    truth[150:260, 200:330] = True
    tampered = np.where(truth[:, :, None], 255 - protected, protected)
    # Cut at the top and left (offsets off the 8 x 8 grid), keeping the tamper's records,
    # which lie about half the photo away.
    received, received_truth = tampered[13:, 21:], truth[13:, 21:]
    result = owner.verify(received)
    assert result.verdict == "tampered" and result.crop_origin == (13, 21)
    _, decoded, _, _ = owner.pipeline.read_reference(
        received[None].astype(np.float32), result.mask[None, :, :, None].astype(np.float32),
        np.asarray(result.crop_origin, np.int32))
    assert np.asarray(decoded)[0, :, :, 0][received_truth].mean() > 0.9
    recovered = owner.recover(received, result)
    original = sample_photo("astronaut")[13:, 21:].astype(float)
    error = np.abs(recovered.astype(float) - original)[received_truth].mean()
    assert error < np.abs(received.astype(float) - original)[received_truth].mean() / 4


@pytest.mark.parametrize("factor", [0.5, 0.75])
def test_a_downscaled_photo_is_intact_and_its_scale_found(owner, immunized, factor):
    protected = immunized["retina"]  # 1411 px: a resize leaves a photo big enough to read
    received = resize(protected, factor)
    if factor == 0.75:
        received = jpeg(received, 80)
    result = owner.verify(received)
    assert result.verdict == "intact", result.to_dict()
    assert result.original_size == protected.shape[:2]
    assert result.scale == pytest.approx(factor, abs=0.01)


def test_a_paste_in_a_downscaled_photo_is_found(owner, immunized):
    protected = immunized["retina"]
    tampered = protected.copy()
    tampered[400:800, 500:900] = np.flipud(tampered[400:800, 500:900])
    result = owner.verify(resize(tampered, 0.75))
    truth = np.zeros(tampered.shape[:2], bool)
    truth[400:800, 500:900] = True
    assert result.verdict == "tampered"
    assert f1(result.mask, resize(truth.astype(np.uint8) * 255, 0.75) > 127) > 0.8


@pytest.mark.parametrize("name", ["coffee", "rocket"])
def test_never_immunized_photos_stay_not_immunized_after_resizing(owner, name):
    photo = sample_photo(name)
    for received in (photo, jpeg(photo, 90), resize(photo, 0.5), np.rot90(photo).copy()):
        assert owner.verify(received).verdict == "not_immunized"


# --------------------------------------------------------------------------- keys and forgery
@pytest.mark.slow
def test_another_key_does_not_verify(owner, immunized):
    other = Imuge.from_pretrained(key=OTHER)
    assert other.verify(immunized["coffee"]).verdict == "not_immunized"
    assert owner.verify(other.immunize(sample_photo("chelsea"))).verdict == "not_immunized"


def test_the_public_carrier_pattern_does_not_forge_a_verdict(owner):
    from imuge_tf.models.carrier import DEFAULT_AMPLITUDE, carrier_tile

    photo = sample_photo("coffee")
    height, width = photo.shape[:2]
    tile = np.kron(carrier_tile(2, 64), np.ones((4, 4)))  # upsampled to the photo's scale
    pattern = np.tile(tile, (height // tile.shape[0] + 1, width // tile.shape[1] + 1))
    forged = photo + DEFAULT_AMPLITUDE * 255.0 * pattern[:height, :width, None]
    assert owner.verify(np.clip(forged.round(), 0, 255).astype(np.uint8)).verdict \
        == "not_immunized"


def test_a_residual_copied_onto_another_photo_is_not_intact(owner, immunized):
    donor = sample_photo("coffee")
    residual = immunized["coffee"].astype(np.int16) - donor
    photo = np.asarray(Image.fromarray(sample_photo("rocket")).resize(donor.shape[1::-1]))
    forged = np.clip(photo + residual, 0, 255).astype(np.uint8)
    assert owner.verify(forged).verdict != "intact"


def test_reimmunizing_is_refused_unless_forced_and_laundering_fails(owner, immunized):
    protected = immunized["chelsea"]
    assert owner.is_immunized(protected)
    tampered = protected.copy()
    tampered[80:200, 120:260] = 255 - tampered[80:200, 120:260]
    with pytest.raises(AlreadyImmunizedError, match="already immunized"):
        owner.immunize(tampered)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DemoKeyWarning)
        demo = Imuge.from_pretrained()
    laundered = demo.immunize(tampered, force=True)
    assert owner.verify(laundered).verdict != "intact"
    # A key holder may re-immunize on purpose.
    assert owner.verify(owner.immunize(tampered, force=True)).verdict == "intact"


def test_a_splice_from_another_photo_with_the_same_key_is_found(owner, immunized):
    photo, donor = immunized["astronaut"], immunized["retina"][:512, :512]
    truth = np.zeros(photo.shape[:2], bool)
    truth[96:320, 128:352] = True
    spliced = np.where(truth[:, :, None], donor, photo)
    result = owner.verify(jpeg(spliced, 85))
    assert result.verdict == "tampered", result.to_dict()
    assert f1(result.mask, truth) > 0.8


def test_the_demo_key_warns_and_the_environment_supplies_a_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.warns(DemoKeyWarning, match="public demo key"):
        demo = Imuge.from_pretrained()
    assert demo.demo_key
    monkeypatch.setenv(KEY_ENV, OWNER.decode())
    with warnings.catch_warnings():
        warnings.simplefilter("error", DemoKeyWarning)
        keyed = Imuge.from_pretrained()
    assert keyed.key == OWNER and not keyed.demo_key


def test_key_files(tmp_path):
    path = tmp_path / "key"
    path.write_bytes(OWNER + b"\n")
    assert read_key_file(str(path)) == OWNER
    (tmp_path / "empty").write_bytes(b" \n")
    with pytest.raises(KeyFileError, match="empty"):
        read_key_file(str(tmp_path / "empty"))
    with pytest.raises(KeyFileError, match="cannot read"):
        read_key_file(str(tmp_path / "missing"))


@pytest.mark.slow
def test_cli_key_file_and_reimmunize(tmp_path, photo_dir):
    """The CLI end to end: immunize with a key file, verify with it (intact) and without it
    (not immunized, with the demo-key warning), refuse to immunize twice."""
    key = tmp_path / "key"
    key.write_bytes(OWNER)
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    source = os.path.join(photo_dir, sorted(os.listdir(photo_dir))[0])

    def imuge(*args):
        return subprocess.run([sys.executable, "-m", "imuge_tf.cli", *args], env=env,
                              capture_output=True, text=True, timeout=600)

    made = imuge("immunize", source, "--out", str(tmp_path / "p"), "--key-file", str(key))
    assert made.returncode == 0, made.stderr
    protected = os.path.join(tmp_path, "p", os.listdir(tmp_path / "p")[0])
    keyed = imuge("verify", protected, "--key-file", str(key), "--json")
    assert keyed.returncode == 0 and '"intact"' in keyed.stdout
    plain = imuge("verify", protected)
    assert plain.returncode != 0 and "public demo key" in plain.stderr
    again = imuge("immunize", protected, "--out", str(tmp_path / "q"), "--key-file", str(key))
    assert again.returncode == 2 and "already immunized" in again.stderr
    missing = imuge("verify", protected, "--key-file", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "key file" in missing.stderr
    assert "Traceback" not in missing.stderr + again.stderr


@pytest.mark.slow
def test_small_photos_and_random_crops_are_never_mistaken(owner):
    """Small photos hold few blocks, so chance matches with the keyed lattice weigh more (and
    the crop search scores millions of candidates): never-immunized crops of any size stay
    `not_immunized`, immunized ones `intact`."""
    rng = np.random.default_rng(7)
    wrong = []
    for index in range(24):
        photo = sample_photo(SAMPLE_PHOTO_NAMES[index % len(SAMPLE_PHOTO_NAMES)])
        height, width = rng.integers(16, 300, size=2)
        top = rng.integers(0, photo.shape[0] - height + 1)
        left = rng.integers(0, photo.shape[1] - width + 1)
        crop = np.ascontiguousarray(photo[top:top + height, left:left + width])
        if owner.verify(crop).verdict != "not_immunized":
            wrong.append(("never", crop.shape))
        if owner.verify(owner.immunize(crop)).verdict != "intact":
            wrong.append(("immunized", crop.shape))
    assert not wrong
