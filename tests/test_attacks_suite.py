"""The opt-in attacks beyond the paper's set: median blur, colour changes, resizing with several
interpolations, resize/blur + JPEG, and the copy-move, splice and removal tampers."""

import numpy as np
import pytest
import tensorflow as tf
from attack_batches import photo_batch
from scipy.ndimage import binary_dilation, median_filter

from imuge_tf.attacks import (
    BENIGN_ATTACKS,
    TAMPERS,
    AttackPipeline,
    blur_jpeg,
    colour_factors,
    colour_jitter,
    copy_move,
    gaussian_blur,
    harmonized_splice,
    jpeg_compression,
    median_blur,
    pyramid_fill,
    remove_content,
    resize_jpeg,
    resize_parameters,
    resize_with_methods,
    split_seeds,
)
from imuge_tf.config import ConfigError, load_config
from imuge_tf.models.factory import attack_arguments
from imuge_tf.scoring import psnr

NEW_BENIGN = ("median", "colour", "resize", "resize_jpeg", "blur_jpeg")
NEW_TAMPERS = ("copy_move", "splice", "removal")
PAPER_BENIGN = ["identity", "noise", "blur", "rescale", "jpeg", "crop"]
PAPER_TAMPERS = ["donor", "colour", "clone"]
BATCH, SIZE = 8, 48


@pytest.fixture(scope="module")
def batch(photos):
    """Real photo crops, donors from other photos, rectangle masks and seeds."""
    names = ["astronaut", "coffee", "chelsea", "rocket"] * 2
    return photo_batch(photos, names, SIZE, stride=3, first_offset=30, offset_step=17,
                       donor_offset=3, mask_top_min=2, seed=1)


def _gradient(function, images):
    """Gradient of a fixed random projection of function(images) with respect to images."""
    variable = tf.Variable(images)
    with tf.GradientTape() as tape:
        output = function(variable)
        loss = tf.reduce_sum(output * tf.random.stateless_uniform(tf.shape(output), [7, 8]))
    return tape.gradient(loss, variable)


def _assert_useful_gradient(gradient):
    assert gradient is not None
    gradient = gradient.numpy()
    assert np.all(np.isfinite(gradient))
    assert np.all(np.abs(gradient).reshape(len(gradient), -1).max(axis=1) > 1e-3)


# ---- benign attacks ------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW_BENIGN)
def test_new_benign_attacks_range_change_and_gradient(batch, name):
    attack = BENIGN_ATTACKS[name]
    images = batch["images"]
    weights = tf.random.stateless_uniform(images.shape, [7, 8])

    @tf.function
    def attack_and_gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            attacked, masks = attack(x, batch["masks"], batch["seeds"])
            loss = tf.reduce_sum(attacked * weights)
        return attacked, masks, tape.gradient(loss, x)

    attacked, masks, gradient = attack_and_gradient(images)
    attacked = attacked.numpy()
    assert attacked.shape == images.shape
    assert attacked.min() >= 0.0 and attacked.max() <= 1.0
    change = np.abs(attacked - images.numpy()).reshape(BATCH, -1).mean(axis=1)
    assert np.median(change) > 2e-3, f"{name} barely changes the images"
    np.testing.assert_array_equal(masks.numpy(), batch["masks"].numpy())
    _assert_useful_gradient(gradient)


def test_median_blur_is_a_median_filter_and_removes_salt_and_pepper(batch):
    clean = batch["images"].numpy()
    rng = np.random.default_rng(2)
    noisy = clean.copy()
    hits = rng.random(clean.shape[:3]) < 0.05
    noisy[hits] = rng.integers(0, 2, size=(hits.sum(), 1)).astype(np.float32)
    masks = batch["masks"]
    filtered, _ = median_blur(tf.constant(noisy), masks, batch["seeds"], median_kernel_sizes=(3,))
    filtered = filtered.numpy()
    # Exactly the classical median filter with mirrored borders.
    expected = median_filter(noisy, size=(1, 3, 3, 1), mode="mirror")
    np.testing.assert_array_equal(filtered, expected)
    five, _ = median_blur(tf.constant(noisy), masks, batch["seeds"], median_kernel_sizes=(5,))
    np.testing.assert_array_equal(five.numpy(), median_filter(noisy, size=(1, 5, 5, 1),
                                                              mode="mirror"))
    for b in range(BATCH):
        assert psnr(filtered[b], clean[b]) > psnr(noisy[b], clean[b]) + 5.0
    # Per-sample window sizes: some samples get 3x3, some 5x5.
    seeds = tf.stack([tf.range(BATCH), tf.fill([BATCH], 4)], axis=1)
    both, _ = median_blur(tf.constant(noisy), masks, seeds, median_kernel_sizes=(3, 5))
    sizes = set()
    for b in range(BATCH):
        for size in (3, 5):
            reference = median_filter(noisy[b], size=(size, size, 1), mode="mirror")
            if np.array_equal(both.numpy()[b], reference):
                sizes.add(size)
    assert sizes == {3, 5}


@pytest.mark.parametrize("size", [3, 5])
def test_median_blur_gradient_goes_to_the_median_pixel(size):
    # Distinct values (no ties): the same gradient as a sort-based median.
    images = tf.random.stateless_uniform([2, 12, 13, 3], [5, size])
    masks = tf.zeros([2, 12, 13, 1])

    def sorted_median(x):
        pad = size // 2
        padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        patches = tf.stack([padded[:, dy : dy + 12, dx : dx + 13, :]
                            for dy in range(size) for dx in range(size)], axis=-1)
        return tf.math.top_k(patches, k=size * size // 2 + 1).values[..., -1]

    ours = _gradient(lambda x: median_blur(x, masks, tf.zeros([2, 2], tf.int32), (size,))[0],
                     images)
    reference = _gradient(sorted_median, images)
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), atol=1e-5)


def _saturation(images):
    """Mean distance of each pixel's RGB from its BT.601 luma."""
    luma = images @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.abs(images - luma[..., None]).mean(axis=(1, 2, 3))


@pytest.mark.parametrize("which", ["brightness", "contrast", "saturation"])
def test_colour_changes_follow_the_draws(batch, which):
    # Mid-range images, so nothing clips and the relations are exact.
    images = 0.25 + 0.5 * batch["images"].numpy()
    ranges = {"brightness": (0.0, 0.0), "contrast": (1.0, 1.0), "saturation": (1.0, 1.0)}
    ranges[which] = {"brightness": (-0.1, 0.1), "contrast": (0.7, 1.3),
                     "saturation": (0.7, 1.3)}[which]
    kwargs = {f"{key}_range": value for key, value in ranges.items()}
    seeds = tf.stack([tf.range(BATCH), tf.fill([BATCH], 11)], axis=1)
    attacked, _ = colour_jitter(tf.constant(images), batch["masks"], seeds, **kwargs)
    attacked = attacked.numpy()
    drawn = colour_factors(seeds, **kwargs)[which].numpy()
    lo, hi = ranges[which]
    assert np.all((drawn >= lo) & (drawn <= hi)) and len(np.unique(drawn)) == BATCH
    if which == "brightness":
        measured = attacked.mean(axis=(1, 2, 3)) - images.mean(axis=(1, 2, 3))
        np.testing.assert_allclose(measured, drawn, atol=1e-5)
    elif which == "contrast":
        measured = attacked.std(axis=(1, 2, 3)) / images.std(axis=(1, 2, 3))
        np.testing.assert_allclose(measured, drawn, rtol=1e-3)
        # The mean luma stays.
        luma = np.array([0.299, 0.587, 0.114], np.float32)
        np.testing.assert_allclose((attacked @ luma).mean(axis=(1, 2)),
                                   (images @ luma).mean(axis=(1, 2)), atol=1e-5)
    else:
        measured = _saturation(attacked) / _saturation(images)
        np.testing.assert_allclose(measured, drawn, rtol=1e-3)
    # Each sample moves in its own drawn direction.
    neutral = 0.0 if which == "brightness" else 1.0
    assert np.all(np.sign(measured - neutral) == np.sign(drawn - neutral))
    assert len(set(np.sign(drawn - neutral))) == 2


@pytest.mark.parametrize("method", ["nearest", "area"])
def test_nearest_and_area_resize_are_exact_forward_and_bilinear_backward(batch, method):
    images = batch["images"]
    seeds = batch["seeds"]
    attacked, _ = resize_with_methods(images, batch["masks"], seeds, resize_methods=(method,))
    factors = resize_parameters(seeds)[0].numpy()
    assert len(np.unique(np.round(factors, 3))) == BATCH
    for b in range(BATCH):
        scaled = max(int(np.round(SIZE * factors[b])), 1)
        small = tf.image.resize(images[b], [scaled, scaled], method=method)
        expected = tf.image.resize(small, [SIZE, SIZE], method=method).numpy()
        np.testing.assert_array_equal(attacked.numpy()[b], np.clip(expected, 0.0, 1.0))
    # The gradient is the antialiased bilinear round trip's.
    gradient = _gradient(
        lambda x: resize_with_methods(x, batch["masks"], seeds, resize_methods=(method,))[0],
        images,
    )
    bilinear = _gradient(
        lambda x: resize_with_methods(x, batch["masks"], seeds, resize_methods=("bilinear",))[0],
        images,
    )
    _assert_useful_gradient(gradient)
    np.testing.assert_allclose(gradient.numpy(), bilinear.numpy(), atol=1e-5)


def test_resize_draws_methods_per_sample_and_leg(batch):
    seeds = tf.stack([tf.range(32), tf.fill([32], 2)], axis=1)
    factors, there, back = (value.numpy() for value in resize_parameters(seeds))
    assert set(there) == set(back) == {0, 1, 2, 3}
    assert np.mean(there != back) > 0.5
    assert factors.min() >= 0.5 and factors.max() <= 2.0
    assert factors.min() < 0.8 and factors.max() > 1.5
    # Different methods give different results for the same factor.
    images = batch["images"]
    results = [
        resize_with_methods(images, batch["masks"], batch["seeds"], resize_methods=(m,))[0].numpy()
        for m in ("bilinear", "bicubic", "nearest", "area")
    ]
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(results[i] - results[j]).mean() > 1e-3


@pytest.mark.parametrize("name", ["resize_jpeg", "blur_jpeg"])
def test_combinations_compose_their_parts_and_differ_from_each(batch, name):
    images, masks, seeds = batch["images"], batch["masks"], batch["seeds"]
    first_seeds, jpeg_seeds = tf.unstack(split_seeds(seeds, 2))
    if name == "resize_jpeg":
        combined, _ = resize_jpeg(images, masks, seeds)
        first, _ = resize_with_methods(images, masks, first_seeds)
    else:
        combined, _ = blur_jpeg(images, masks, seeds)
        first, _ = gaussian_blur(images, masks, first_seeds)
    composed, _ = jpeg_compression(first, masks, jpeg_seeds)
    np.testing.assert_array_equal(combined.numpy(), composed.numpy())
    jpeg_alone, _ = jpeg_compression(images, masks, jpeg_seeds)
    for part in (first, jpeg_alone):
        difference = np.abs(combined.numpy() - part.numpy()).reshape(BATCH, -1).mean(axis=1)
        assert np.all(difference > 1e-3)


# ---- tampers -------------------------------------------------------------------------------


def _run_tamper(name, batch, images=None):
    images = batch["images"] if images is None else images
    return TAMPERS[name](images, batch["donors"], batch["masks"], batch["seeds"])


@pytest.mark.parametrize("name", NEW_TAMPERS)
def test_new_tampers_change_exactly_the_masked_pixels(batch, name):
    result = tf.function(lambda: _run_tamper(name, batch))().numpy()
    images = batch["images"].numpy()
    inside = batch["masks"].numpy()[..., 0] == 1
    np.testing.assert_array_equal(result[~inside], images[~inside])
    changed = np.any(result != images, axis=-1)
    for b in range(BATCH):
        assert changed[b][inside[b]].mean() > 0.9, f"{name} left the masked area unchanged"
    assert result.min() >= 0.0 and result.max() <= 1.0
    _assert_useful_gradient(_gradient(lambda x: _run_tamper(name, batch, x), batch["images"]))


def test_copy_move_pastes_a_far_shifted_maybe_mirrored_copy(batch):
    seeds = tf.stack([tf.range(BATCH), tf.fill([BATCH], 6)], axis=1)
    masks = batch["masks"].numpy()
    # On an image of its own coordinates, each pasted pixel shows where it was copied from.
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    coordinates = np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.float32)
    coordinates = np.broadcast_to(coordinates, (BATCH, SIZE, SIZE, 3))
    sources = copy_move(tf.constant(coordinates), batch["masks"], seeds).numpy()
    result = copy_move(batch["images"], batch["masks"], seeds).numpy()
    flips, shifts = [], set()
    for b in range(BATCH):
        inside = masks[b, ..., 0] == 1
        dy = np.unique((rows - sources[b, ..., 0])[inside] % SIZE)
        flipped_cols = (SIZE - 1 - sources[b, ..., 1]) % SIZE
        dx_plain = np.unique((cols - sources[b, ..., 1])[inside] % SIZE)
        dx_flipped = np.unique((cols - flipped_cols)[inside] % SIZE)
        # One shift for the whole region, mirrored or not.
        assert len(dy) == 1 and (len(dx_plain) == 1 or len(dx_flipped) == 1)
        flip = len(dx_plain) != 1
        dy, dx = int(dy[0]), int((dx_flipped if flip else dx_plain)[0])
        for shift in (dy, dx):
            assert 0.3 * SIZE - 1 <= shift <= 0.7 * SIZE + 1
        # The photo's pasted content is that copy exactly.
        image = batch["images"].numpy()[b]
        source = np.roll(image[:, ::-1] if flip else image, (dy, dx), axis=(0, 1))
        np.testing.assert_array_equal(result[b][inside], source[inside])
        np.testing.assert_array_equal(result[b][~inside], image[~inside])
        flips.append(flip)
        shifts.add((dy, dx))
    assert any(flips) and not all(flips)
    assert len(shifts) > BATCH // 2
    never = copy_move(batch["images"], batch["masks"], seeds, flip_probability=0.0).numpy()
    always = copy_move(batch["images"], batch["masks"], seeds, flip_probability=1.0).numpy()
    for b in range(BATCH):
        assert np.array_equal(never[b], result[b]) != flips[b]
        assert np.array_equal(always[b], result[b]) == flips[b]


def test_splice_matches_the_host_colours_inside_the_mask(batch):
    images, donors, masks = batch["images"], batch["donors"], batch["masks"]
    spliced = harmonized_splice(images, donors, masks).numpy()
    inside = masks.numpy()[..., 0] == 1
    plain_gap, matched_gap = [], []
    for b in range(BATCH):
        host = images.numpy()[b][inside[b]]
        pasted = spliced[b][inside[b]]
        donor = donors.numpy()[b][inside[b]]
        # The pasted content is the donor's, up to a per-channel affine map.
        for channel in range(3):
            assert np.corrcoef(pasted[:, channel], donor[:, channel])[0, 1] > 0.95
        plain_gap.append(np.abs(donor.mean(0) - host.mean(0)).mean())
        matched_gap.append(np.abs(pasted.mean(0) - host.mean(0)).mean())
        assert not np.allclose(pasted, host, atol=0.02)
    assert np.max(matched_gap) < 0.02
    assert np.mean(matched_gap) < 0.2 * np.mean(plain_gap)


def _gradient_image(height, width):
    y, x = np.mgrid[0:height, 0:width]
    y, x = y / (height - 1), x / (width - 1)
    return np.stack([x, y, 0.6 * x + 0.3 * y + 0.05], axis=-1).astype(np.float32)


@pytest.mark.parametrize("shape", [(64, 64), (45, 37)])
def test_removal_fills_a_hole_in_a_gradient_smoothly(shape):
    height, width = shape
    image = _gradient_image(height, width)
    mask = np.zeros((height, width, 1), np.float32)
    top, left = height // 3, width // 3
    mask[top : top + height // 4, left : left + width // 4] = 1.0
    removed = remove_content(tf.constant(image[None]), tf.constant(mask[None])).numpy()[0]
    inside = mask[..., 0] == 1
    np.testing.assert_array_equal(removed[~inside], image[~inside])
    error = np.abs(removed[inside] - image[inside]).mean()
    ring = binary_dilation(inside, iterations=2) & ~inside
    flat_error = np.abs(image[ring].mean(axis=0) - image[inside]).mean()
    assert error < 0.05 and error < 0.25 * flat_error
    # The fill is exact for a constant image, and reads the surroundings (gradients there).
    constant = np.full((1, height, width, 3), 0.3, np.float32)
    np.testing.assert_allclose(pyramid_fill(constant, mask[None]).numpy(), constant, atol=1e-6)
    gradient = _gradient(lambda x: remove_content(x, mask[None])[..., :1] * mask[None],
                         tf.constant(image[None])).numpy()[0]
    assert np.abs(gradient[~inside]).sum() > 0 and np.all(gradient[inside] == 0)


def test_pyramid_fill_keeps_known_pixels_and_handles_soft_and_full_masks(batch):
    images, masks = batch["images"], batch["masks"]
    filled = pyramid_fill(images, masks).numpy()
    outside = np.broadcast_to(masks.numpy() == 0, filled.shape)
    np.testing.assert_array_equal(filled[outside], images.numpy()[outside])
    assert np.all(np.isfinite(filled)) and filled.min() >= 0.0 and filled.max() <= 1.0
    full = pyramid_fill(images, tf.ones_like(masks)).numpy()
    np.testing.assert_array_equal(full, np.zeros_like(full))
    # A soft mask is partial knowledge: half-known pixels stay closer to the image than a
    # hard hole's fill does.
    soft = pyramid_fill(images, 0.5 * masks).numpy()
    inside = ~outside
    assert np.all(np.isfinite(soft)) and soft.min() >= 0.0 and soft.max() <= 1.0
    soft_error = np.abs(soft - images.numpy())[inside].mean()
    assert 0 < soft_error < 0.5 * np.abs(filled - images.numpy())[inside].mean()


# ---- pipeline and config -------------------------------------------------------------------


def test_pipeline_runs_the_new_attacks(batch):
    pipeline = AttackPipeline(skip_probability=0.0, benign_attacks=NEW_BENIGN,
                              tamper_kinds=NEW_TAMPERS)
    seeds = tf.stack([tf.range(BATCH), tf.fill([BATCH], 5)], axis=1)
    images = tf.Variable(batch["images"])
    with tf.GradientTape() as tape:
        output = pipeline(images, batch["donors"], batch["masks"], seeds)
        loss = tf.reduce_sum(output["attacked"] * tf.random.stateless_uniform(images.shape, [1, 2]))
    _assert_useful_gradient(tape.gradient(loss, images))
    result = {key: value.numpy() for key, value in output.items()}
    assert set(result["tamper_index"]) == {0, 1, 2}
    assert len(set(result["benign_index"])) >= 4
    images, masks = batch["images"].numpy(), batch["masks"].numpy()
    splice = harmonized_splice(batch["images"], batch["donors"], batch["masks"]).numpy()
    removal = remove_content(batch["images"], batch["masks"]).numpy()
    for b in range(BATCH):
        inside = masks[b, ..., 0] == 1
        np.testing.assert_array_equal(result["tampered"][b][~inside], images[b][~inside])
        expected = {1: splice, 2: removal}.get(result["tamper_index"][b])
        if expected is not None:
            np.testing.assert_array_equal(result["tampered"][b], expected[b])
    assert result["attacked"].min() >= 0.0 and result["attacked"].max() <= 1.0


def test_pipeline_defaults_config_and_names():
    default = AttackPipeline()
    assert list(default.benign_attacks) == PAPER_BENIGN
    assert list(default.tamper_kinds) == PAPER_TAMPERS
    config = AttackPipeline(benign_attacks=("median", "resize"), resize_methods=("area",),
                            contrast_range=(0.8, 1.2), copy_move_flip_probability=0.0).get_config()
    assert config["resize_methods"] == ["area"] and config["contrast_range"] == [0.8, 1.2]
    assert config["copy_move_flip_probability"] == 0.0
    assert AttackPipeline.from_config(config).get_config() == config
    with pytest.raises(ValueError, match="crop.*median.*colour.*resize.*resize_jpeg.*blur_jpeg"):
        AttackPipeline(benign_attacks=("median", "sharpen"))
    with pytest.raises(ValueError, match="clone.*copy_move.*splice.*removal"):
        AttackPipeline(tamper_kinds=("inpaint",))
    with pytest.raises(ValueError, match="median_kernel_sizes"):
        AttackPipeline(benign_attacks=("median",), median_kernel_sizes=(4,))
    with pytest.raises(ValueError, match="resize_methods"):
        AttackPipeline(benign_attacks=("resize",), resize_methods=("lanczos3",))
    with pytest.raises(ValueError, match="saturation_range"):
        AttackPipeline(benign_attacks=("colour",), saturation_range=(1.3, 0.7))
    with pytest.raises(ValueError, match="shift_range"):
        AttackPipeline(tamper_kinds=("copy_move",), copy_move_shift_range=(0.0, 0.5))


def test_config_names_the_new_attacks():
    config = load_config("smoke", ["attacks.benign=[median, colour, resize, resize_jpeg]",
                                   "attacks.tampers=[copy_move, splice, removal, donor]"])
    assert config.attacks.benign == ("median", "colour", "resize", "resize_jpeg")
    pipeline = AttackPipeline(**attack_arguments(config))
    assert pipeline.tamper_kinds == ("copy_move", "splice", "removal", "donor")
    # The default stays the paper's set.
    default = load_config("smoke").attacks
    assert list(default.benign) == PAPER_BENIGN and list(default.tampers) == PAPER_TAMPERS
    with pytest.raises(ConfigError, match="attacks.benign"):
        load_config("smoke", ["attacks.benign=[median, sharpen]"])
