"""End to end on the shipped demo weights: what a user gets from `Imuge.from_pretrained()`.

The photos are scikit-image's, which the shipped model never saw in training (it was trained
on shared/data/photos). Each test follows the user's path with real codecs: the immunized
photo is saved as a real JPEG (Pillow, QF 90), a patch of another photo is pasted in, the
result is verified and recovered.
"""


import numpy as np
import pytest
from PIL import Image
from real_codecs import jpeg

from imuge_tf import Imuge
from imuge_tf.samples import sample_photo
from imuge_tf.scoring import l_psnr, psnr

SIZE = 192  # not the working size (128): exercises the any-size path
# Recovery is scored on larger photos: the self-embedded reference holds 16 x 16-px means, too
# coarse for a whole object that is 60 px across (BENCHMARKS.md, `reference_recovery`, has
# camera photos).
RECOVERY_SIZE = 384


@pytest.fixture(scope="module")
def imuge():
    return Imuge.from_pretrained()


def square(name, size=SIZE):
    photo = Image.fromarray(sample_photo(name))
    side = min(photo.size)
    left, top = (photo.width - side) // 2, (photo.height - side) // 2
    photo = photo.crop((left, top, left + side, top + side))
    return np.asarray(photo.resize((size, size), Image.Resampling.LANCZOS))


def ellipse_mask(size=SIZE, centre=(0.4, 0.55), radii=(0.18, 0.13)):
    rows, cols = np.mgrid[0:size, 0:size] / size
    return ((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2 <= 1.0


def f1(predicted, true):
    tp = np.sum(predicted & true)
    return 2 * tp / max(predicted.sum() + true.sum(), 1)


def test_immunized_photo_looks_the_same(imuge):
    photo = square("astronaut")
    immunized = imuge.immunize(photo)
    assert psnr(photo, immunized) >= 30.0


@pytest.mark.parametrize("host, donor", [
    ("coffee", "rocket"),
    ("astronaut", "chelsea"),
])
def test_pasted_patch_is_found_and_recovered_after_real_jpeg(imuge, host, donor):
    photo = square(host, RECOVERY_SIZE)
    received = jpeg(imuge.immunize(photo), quality=90)
    mask = ellipse_mask(RECOVERY_SIZE)
    tampered = np.where(mask[:, :, None], square(donor, RECOVERY_SIZE), received)

    result = imuge.verify(tampered)
    assert result.verdict == "tampered"
    assert f1(result.mask, mask) >= 0.7  # the shipped model's localization bar

    recovered = imuge.recover(tampered, result)
    # The self-embedded reference survives the JPEG: far above what the context alone gives.
    from imuge_tf.evaluation import telea_inpaint

    telea = l_psnr(photo, telea_inpaint(tampered, mask), mask)
    assert l_psnr(photo, recovered, mask) > telea + 3.0


@pytest.mark.parametrize("name", ["coffee", "chelsea"])
def test_untouched_immunized_photo_is_intact(imuge, name):
    received = jpeg(imuge.immunize(square(name)), quality=90)
    result = imuge.verify(received)
    assert result.verdict == "intact", result.to_dict()


@pytest.mark.parametrize("name", ["coffee", "rocket"])
def test_never_immunized_photo_is_not_immunized(imuge, name):
    result = imuge.verify(jpeg(square(name), quality=90))
    assert result.verdict == "not_immunized", result.to_dict()


def recovered_l_psnr(imuge, photo, received, donor, mask, quality=None):
    """L-PSNR of the patch recovered with the true mask, after an optional real JPEG."""
    tampered = np.where(mask[:, :, None], donor, received)
    if quality is not None:
        tampered = jpeg(tampered, quality)
    return l_psnr(photo, imuge.recover_with_mask(tampered, mask), mask)


@pytest.mark.parametrize("quality", [None, 90, 75])
def test_recovery_reads_the_immunization(imuge, quality):
    """The Imuge effect: with the same tamper and the same mask, recovery is clearly better
    from the immunized photo than from the never-immunized one, saved losslessly or as JPEG:
    it reads what the immunization carries instead of guessing."""
    photo, donor = square("coffee", RECOVERY_SIZE), square("rocket", RECOVERY_SIZE)
    mask = ellipse_mask(RECOVERY_SIZE)
    immunized = recovered_l_psnr(imuge, photo, imuge.immunize(photo), donor, mask, quality)
    never_immunized = recovered_l_psnr(imuge, photo, photo, donor, mask, quality)
    assert immunized > never_immunized + 3.0, (immunized, never_immunized)


@pytest.mark.parametrize("host, donor", [("coffee", "rocket"), ("astronaut", "chelsea")])
def test_recovery_beats_inpainting_on_a_losslessly_saved_photo(imuge, host, donor):
    """The recovery bar: recovery well above OpenCV's Telea inpainting on the same mask."""
    from imuge_tf.evaluation import telea_inpaint

    photo, patch = square(host, RECOVERY_SIZE), square(donor, RECOVERY_SIZE)
    mask = ellipse_mask(RECOVERY_SIZE)
    tampered = np.where(mask[:, :, None], patch, imuge.immunize(photo))
    recovered = l_psnr(photo, imuge.recover_with_mask(tampered, mask), mask)
    telea = l_psnr(photo, telea_inpaint(tampered, mask), mask)
    assert recovered > telea + 3.0, (recovered, telea)
