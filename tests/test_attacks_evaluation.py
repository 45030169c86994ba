"""The evaluation attacks of Table 1 (real codecs, host side) on real photos."""

import io

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from imuge_tf import scoring
from imuge_tf.attacks.evaluation import (
    ATTACK_NAMES,
    NOISE_SIGMA,
    TABLE1_ATTACKS,
    EvaluationAttack,
    apply_attack,
    crop_window,
    get_attack,
)
from imuge_tf.samples import sample_photo

PAPER_ORDER = ("jpeg90", "jpeg70", "jpeg50", "resize150", "resize70", "resize50", "crop90",
               "crop70", "crop50", "blur", "noise", "none")


def _high_frequency_energy(image):
    """Mean squared 4-neighbour Laplacian of the grey image (interior pixels)."""
    grey = np.asarray(image, np.float64).mean(axis=-1)
    laplacian = (4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1]
                 - grey[1:-1, :-2] - grey[1:-1, 2:])
    return float(np.mean(laplacian**2))


@pytest.fixture(scope="module")
def astronaut():
    return sample_photo("astronaut")


@pytest.fixture(scope="module")
def coffee():
    """400 x 600: not square, sides not multiples of 16."""
    return sample_photo("coffee")


@pytest.fixture(scope="module")
def odd():
    """An odd-sized crop of a real photo (sides not multiples of 8 or 2)."""
    return np.ascontiguousarray(sample_photo("chelsea")[3:184, 10:247])


def test_table_order_and_lookup():
    assert ATTACK_NAMES == PAPER_ORDER
    assert tuple(attack.name for attack in TABLE1_ATTACKS) == PAPER_ORDER
    assert all(isinstance(attack, EvaluationAttack) for attack in TABLE1_ATTACKS)
    assert get_attack("jpeg70").column == "JPEG QF=70"
    assert get_attack("resize150").column == "Scaling 150%"
    assert get_attack("crop50").column == "Cropping 50%"
    assert [get_attack(n).column for n in ("blur", "noise", "none")] == [
        "Blurring", "AWGN", "No attack"]


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="jpeg90.*none"):
        get_attack("jpeg")
    with pytest.raises(ValueError, match="valid names"):
        apply_attack("gamma", np.zeros((8, 8, 3), np.uint8))


@pytest.mark.parametrize("name", PAPER_ORDER)
@pytest.mark.parametrize("fixture", ["coffee", "odd"])
def test_every_attack_keeps_size_and_types(request, name, fixture):
    image = request.getfixturevalue(fixture)
    before = image.copy()
    attacked, extra_mask = apply_attack(name, image, seed=3)
    assert attacked.shape == image.shape and attacked.dtype == np.uint8
    assert extra_mask.shape == image.shape[:2] and extra_mask.dtype == bool
    np.testing.assert_array_equal(image, before)  # the input is not modified
    assert attacked is not image
    if not name.startswith("crop"):
        assert not extra_mask.any()


@pytest.mark.parametrize("quality", [90, 70, 50])
@pytest.mark.parametrize("fixture", ["coffee", "odd"])
def test_jpeg_is_pillows_own_codec(request, fixture, quality):
    image = request.getfixturevalue(fixture)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)  # Pillow's defaults
    reference = Image.open(io.BytesIO(buffer.getvalue()))
    assert JpegImagePlugin.get_sampling(reference) == 2  # 4:2:0 is Pillow's default
    attacked, _ = apply_attack(f"jpeg{quality}", image)
    np.testing.assert_array_equal(attacked, np.asarray(reference.convert("RGB")))


def test_lower_quality_is_further_from_the_input(astronaut):
    psnr = [scoring.psnr(apply_attack(f"jpeg{q}", astronaut)[0], astronaut) for q in (90, 70, 50)]
    assert psnr[0] > psnr[1] > psnr[2] > 25, psnr


@pytest.mark.parametrize("fixture", ["astronaut", "coffee"])
def test_resizing_loses_detail_in_order(request, fixture):
    image = request.getfixturevalue(fixture)
    psnr = {p: scoring.psnr(apply_attack(f"resize{p}", image)[0], image) for p in (150, 70, 50)}
    assert psnr[150] > psnr[70] > psnr[50], psnr
    energy = {p: _high_frequency_energy(apply_attack(f"resize{p}", image)[0])
              for p in (150, 70, 50)}
    assert energy[150] > energy[70] > energy[50], energy


@pytest.mark.parametrize("keep", [90, 70, 50])
@pytest.mark.parametrize("fixture", ["astronaut", "coffee", "odd"])
def test_crop_blackens_and_marks_the_border(request, fixture, keep):
    image = request.getfixturevalue(fixture)
    attacked, extra_mask = apply_attack(f"crop{keep}", image)
    assert abs(extra_mask.mean() - (1 - keep / 100)) <= 0.02
    assert not attacked[extra_mask].any()  # black outside the window
    np.testing.assert_array_equal(attacked[~extra_mask], image[~extra_mask])
    # The kept part is one centred rectangle with about the image's aspect ratio.
    rows, cols = np.nonzero(~extra_mask)
    top, left, height, width = crop_window(*image.shape[:2], keep / 100)
    assert (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1) == (
        top, left, top + height, left + width)
    assert abs(top - (image.shape[0] - rows.max() - 1)) <= 1
    assert abs(left - (image.shape[1] - cols.max() - 1)) <= 1
    assert abs(width / height - image.shape[1] / image.shape[0]) < 0.02


@pytest.mark.parametrize("fixture", ["astronaut", "coffee", "odd"])
def test_blur_removes_high_frequencies(request, fixture):
    image = request.getfixturevalue(fixture)
    blurred, _ = apply_attack("blur", image)
    assert _high_frequency_energy(blurred) < 0.3 * _high_frequency_energy(image)
    # A blur, not a shift or a darkening: the mean colour stays.
    np.testing.assert_allclose(blurred.mean(axis=(0, 1)), image.mean(axis=(0, 1)), atol=0.5)


def test_noise_is_seeded_and_has_the_documented_sigma(astronaut):
    first, _ = apply_attack("noise", astronaut, seed=7)
    again, _ = apply_attack("noise", astronaut, seed=7)
    other, _ = apply_attack("noise", astronaut, seed=8)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    # Away from 0 and 255 clipping is rare: the difference is the noise (plus rounding).
    mid = (astronaut >= 80) & (astronaut <= 175)
    difference = first.astype(np.float64)[mid] - astronaut[mid]
    assert abs(difference.std() / (NOISE_SIGMA * 255) - 1) < 0.03
    assert abs(difference.mean()) < 0.5


def test_none_returns_the_input(coffee):
    attacked, extra_mask = apply_attack("none", coffee)
    np.testing.assert_array_equal(attacked, coffee)
    assert not extra_mask.any()


@pytest.mark.parametrize("name", PAPER_ORDER)
def test_tiny_images(name):
    for shape in ((1, 1, 3), (2, 5, 3), (9, 4, 3)):
        image = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
        attacked, extra_mask = apply_attack(name, image)
        assert attacked.shape == shape and extra_mask.shape == shape[:2]


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8), np.uint8), "H x W x 3"),
        (np.zeros((8, 8, 4), np.uint8), "H x W x 3"),
        (np.zeros((1, 8, 8, 3), np.uint8), "H x W x 3"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
        ([[[0, 0, 0]]], "numpy"),
        (Image.new("RGB", (4, 4)), "numpy"),
    ],
)
def test_bad_input_raises(image, message):
    with pytest.raises(ValueError, match=message):
        apply_attack("jpeg90", image)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_bad_seed_raises(coffee, seed):
    with pytest.raises(ValueError, match="seed"):
        apply_attack("noise", coffee, seed=seed)


def test_module_needs_no_tensorflow():
    """evaluation.py itself imports no TensorFlow (the package's __init__ does, so the file is
    loaded on its own, with TensorFlow made unimportable)."""
    import subprocess
    import sys

    import imuge_tf.attacks.evaluation as evaluation

    code = (
        "import importlib.util, sys\n"
        "sys.modules['tensorflow'] = None\n"
        f"spec = importlib.util.spec_from_file_location('evaluation', {evaluation.__file__!r})\n"
        "module = sys.modules['evaluation'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "import numpy as np\n"
        "for name in module.ATTACK_NAMES:\n"
        "    module.apply_attack(name, np.zeros((20, 30, 3), np.uint8))\n"
        "assert 'tensorflow' not in [m for m, v in sys.modules.items() if v is not None]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
