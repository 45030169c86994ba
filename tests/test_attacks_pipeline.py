"""Benign attacks, malicious tampers and the attack pipeline: what they do to pixels and masks,
their gradients, their randomness (per sample, per replica, deterministic per seed)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from attack_batches import photo_batch

from imuge_tf.attacks import (
    BENIGN_ATTACKS,
    AttackPipeline,
    clone_stamp,
    crop,
    gaussian_noise,
    replace_with_colour,
    replace_with_donor,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
BATCH, SIZE = 6, 40


@pytest.fixture(scope="module")
def batch(photos):
    """Real photo crops, donors from other photos, blob-free random rectangle masks, seeds."""
    names = ["astronaut", "coffee", "chelsea", "rocket", "astronaut", "coffee"]
    return photo_batch(photos, names, SIZE, stride=4, first_offset=20, offset_step=10,
                       donor_offset=5, mask_top_min=0, seed=0)


def _gradient(function, images):
    """Gradient of a random projection of function(images) with respect to images."""
    variable = tf.Variable(images)
    with tf.GradientTape() as tape:
        output = function(variable)
        weights = tf.random.stateless_uniform(tf.shape(output), [3, 4])
        loss = tf.reduce_sum(output * weights)
    return tape.gradient(loss, variable)


def _assert_useful_gradient(gradient):
    assert gradient is not None
    gradient = gradient.numpy()
    assert np.all(np.isfinite(gradient))
    # Every sample gets a gradient, not just some.
    assert np.all(np.abs(gradient).reshape(len(gradient), -1).max(axis=1) > 1e-3)


# ---- tampers -------------------------------------------------------------------------------


def _check_eq1(result, images, masks, inside):
    result, images = result.numpy(), images.numpy()
    outside = np.broadcast_to(masks.numpy() == 0, result.shape)
    np.testing.assert_array_equal(result[outside], images[outside])
    np.testing.assert_array_equal(result[~outside], inside[~outside])


def test_donor_replacement(batch):
    result = replace_with_donor(batch["images"], batch["donors"], batch["masks"])
    _check_eq1(result, batch["images"], batch["masks"], batch["donors"].numpy())


def test_colour_replacement(batch):
    result = replace_with_colour(batch["images"], batch["masks"], batch["seeds"]).numpy()
    colours = []
    for sample, mask in zip(result, batch["masks"].numpy(), strict=True):
        inside = sample[mask[..., 0] == 1]
        np.testing.assert_array_equal(inside, np.broadcast_to(inside[0], inside.shape))
        colours.append(inside[0])
    flat = np.broadcast_to(np.array(colours)[:, None, None, :], result.shape)
    _check_eq1(tf.constant(result), batch["images"], batch["masks"], flat)
    assert len({tuple(colour) for colour in colours}) == BATCH
    assert np.all((np.array(colours) >= 0) & (np.array(colours) <= 1))


def test_clone_stamp_copies_a_shifted_image(batch):
    shift_range = (0.1, 0.4)
    result = clone_stamp(batch["images"], batch["masks"], batch["seeds"], shift_range).numpy()
    images = batch["images"].numpy()
    shifts = set()
    for sample, image, mask in zip(result, images, batch["masks"].numpy(), strict=True):
        inside = mask[..., 0] == 1
        matches = [
            (dy, dx)
            for dy in range(SIZE)
            for dx in range(SIZE)
            if np.array_equal(np.roll(image, (dy, dx), axis=(0, 1))[inside], sample[inside])
        ]
        assert matches, "the mask area is not a shifted copy of the image"
        dy, dx = matches[0]
        for shift in (dy, dx):
            magnitude = min(shift, SIZE - shift)
            assert 0 < magnitude and 0.1 * SIZE - 1 <= magnitude <= 0.4 * SIZE + 1
        shifts.add((dy, dx))
    assert len(shifts) > 1
    outside = np.broadcast_to(batch["masks"].numpy() == 0, result.shape)
    np.testing.assert_array_equal(result[outside], images[outside])


@pytest.mark.parametrize("kind", ["donor", "colour", "clone"])
def test_gradients_through_tampers(batch, kind):
    def tamper(images):
        if kind == "donor":
            return replace_with_donor(images, batch["donors"], batch["masks"])
        if kind == "colour":
            return replace_with_colour(images, batch["masks"], batch["seeds"])
        return clone_stamp(images, batch["masks"], batch["seeds"])

    gradient = _gradient(tamper, batch["images"])
    _assert_useful_gradient(gradient)
    if kind != "clone":
        # Replaced pixels do not depend on the image.
        assert np.all(
            gradient.numpy()[np.broadcast_to(batch["masks"].numpy() == 1, gradient.shape)] == 0
        )


# ---- benign attacks ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BENIGN_ATTACKS))
def test_benign_attack_range_effect_and_gradient(batch, name):
    attack = BENIGN_ATTACKS[name]
    # Saturated pixels too, to exercise the clipping.
    images = tf.concat([batch["images"][:-1], tf.ones_like(batch["images"][-1:])], axis=0)
    attacked, masks = attack(images, batch["masks"], batch["seeds"])
    attacked = attacked.numpy()
    assert attacked.shape == images.shape
    assert attacked.min() >= 0.0 and attacked.max() <= 1.0
    change = np.abs(attacked - images.numpy())[:-1].reshape(BATCH - 1, -1).mean(axis=1)
    if name == "identity":
        assert np.all(change == 0)
    else:
        assert np.all(change > 1e-3) or name == "noise", f"{name} left a sample unchanged"
        assert np.mean(change) > 2e-3
    if name != "crop":
        np.testing.assert_array_equal(masks.numpy(), batch["masks"].numpy())
    # Same seeds, same result.
    again, _ = attack(images, batch["masks"], batch["seeds"])
    np.testing.assert_array_equal(again.numpy(), attacked)
    gradient = _gradient(lambda x: attack(x, batch["masks"], batch["seeds"])[0], images)
    if name == "colour":
        # Brightened, a white image stays white whatever the input: no gradient is the truth.
        gradient = gradient[:-1]
    _assert_useful_gradient(gradient)


def test_noise_sigma_is_per_sample_and_bounded():
    images = tf.fill([16, 32, 32, 3], 0.5)
    seeds = tf.stack([tf.range(16), tf.fill([16], 9)], axis=1)
    noisy, _ = gaussian_noise(images, tf.zeros([16, 32, 32, 1]), seeds, noise_stddev=0.1)
    sigmas = np.std(noisy.numpy() - 0.5, axis=(1, 2, 3))
    assert sigmas.max() < 0.11 and sigmas.min() < 0.05 and sigmas.max() > 0.05
    assert len(np.unique(np.round(sigmas, 4))) == 16


def test_crop_marks_the_cropped_area(batch):
    keep_range = (0.5, 0.9)
    attacked, masks = crop(batch["images"], batch["masks"], batch["seeds"], keep_range)
    attacked, masks = attacked.numpy(), masks.numpy()
    images, original = batch["images"].numpy(), batch["masks"].numpy()
    removed = (masks == 1) & (original == 0)
    kept = np.broadcast_to(~removed & (original == 0), attacked.shape)
    np.testing.assert_array_equal(attacked[kept], images[kept])
    assert np.all(attacked[np.broadcast_to(removed, attacked.shape)] == 0)
    # The tamper mask is kept, and the removed area is everything outside one rectangle.
    assert np.all(masks >= original)
    windows = []
    for sample_masks in masks[..., 0]:
        rows, cols = np.nonzero(sample_masks == 0)
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        outside = np.ones(sample_masks.shape, bool)
        outside[top:bottom, left:right] = False
        assert np.all(sample_masks[outside] == 1)
        fraction = (bottom - top) * (right - left) / SIZE**2
        assert keep_range[0] - 0.06 <= fraction <= keep_range[1] + 0.06
        windows.append((top, bottom, left, right))
    assert len(set(windows)) > 1


# ---- pipeline ------------------------------------------------------------------------------


def _run(pipeline, batch, seeds=None):
    result = pipeline(
        batch["images"], batch["donors"], batch["masks"], batch["seeds"] if seeds is None else seeds
    )
    return {key: value.numpy() for key, value in result.items()}


def test_skipped_samples_are_untouched(batch):
    result = _run(AttackPipeline(skip_probability=1.0), batch)
    assert result["skipped"].all()
    np.testing.assert_array_equal(result["attacked"], batch["images"].numpy())
    assert np.all(result["mask"] == 0)
    assert np.all(result["benign_index"] == -1) and np.all(result["tamper_index"] == -1)

    pipeline = AttackPipeline(skip_probability=0.5)
    seeds = tf.stack([tf.range(BATCH), tf.fill([BATCH], 5)], axis=1)
    result = _run(pipeline, batch, seeds)
    skipped = result["skipped"]
    assert skipped.any() and not skipped.all()
    np.testing.assert_array_equal(result["attacked"][skipped], batch["images"].numpy()[skipped])
    assert np.all(result["mask"][skipped] == 0)
    assert np.all(result["mask"][~skipped].reshape((~skipped).sum(), -1).max(axis=1) == 1)
    assert np.all(
        np.any(result["attacked"][~skipped] != batch["images"].numpy()[~skipped], axis=(1, 2, 3))
    )


def test_pipeline_applies_the_chosen_tamper_then_attack(batch):
    pipeline = AttackPipeline(
        skip_probability=0.0, benign_attacks=("identity", "crop"), tamper_kinds=("donor", "colour")
    )
    seeds = tf.stack([tf.range(16), tf.fill([16], 1)], axis=1)
    tile = {key: tf.tile(batch[key], [3, 1, 1, 1])[:16] for key in ("images", "donors", "masks")}
    result = _run(pipeline, tile, seeds)
    images, donors, masks = (tile[key].numpy() for key in ("images", "donors", "masks"))
    assert set(result["benign_index"]) == {0, 1} and set(result["tamper_index"]) == {0, 1}
    inside = masks[..., 0] == 1
    for b in range(16):
        tampered = result["tampered"][b]
        np.testing.assert_array_equal(tampered[~inside[b]], images[b][~inside[b]])
        if result["tamper_index"][b] == 0:
            np.testing.assert_array_equal(tampered[inside[b]], donors[b][inside[b]])
        else:
            assert len(np.unique(tampered[inside[b]], axis=0)) == 1
        if result["benign_index"][b] == 0:
            np.testing.assert_array_equal(result["attacked"][b], tampered)
            np.testing.assert_array_equal(result["mask"][b], masks[b])
        else:
            assert result["mask"][b].mean() > masks[b].mean()


def test_pipeline_randomness_and_determinism(batch):
    pipeline = AttackPipeline()
    seeds = tf.stack([tf.range(32), tf.fill([32], 3)], axis=1)
    tile = {key: tf.tile(batch[key], [6, 1, 1, 1])[:32] for key in ("images", "donors", "masks")}
    first = _run(pipeline, tile, seeds)
    assert len(set(first["benign_index"])) >= 5 and len(set(first["tamper_index"])) == 4
    # Same seeds, same everything, eager or traced.
    traced = tf.function(pipeline)
    second = {
        key: value.numpy()
        for key, value in traced(tile["images"], tile["donors"], tile["masks"], seeds).items()
    }
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    # Other seeds, other draws.
    third = _run(pipeline, tile, seeds + tf.constant([[0, 1]]))
    assert np.mean(third["benign_index"] != first["benign_index"]) > 0.3
    assert not np.array_equal(third["attacked"], first["attacked"])


def test_pipeline_gradients_reach_the_immunized_image(batch):
    pipeline = AttackPipeline(skip_probability=0.0, real_jpeg_probability=0.5)
    for offset in range(3):
        seeds = batch["seeds"] + offset
        gradient = _gradient(
            lambda x, s=seeds: pipeline(x, batch["donors"], batch["masks"], s)["attacked"],
            batch["images"],
        )
        _assert_useful_gradient(gradient)


def test_pipeline_config_and_validation():
    pipeline = AttackPipeline(skip_probability=0.2, benign_attacks=("jpeg",), noise_stddev=0.1)
    config = pipeline.get_config()
    assert json.loads(json.dumps(config)) == config
    assert AttackPipeline.from_config(config).get_config() == config
    assert config["benign_attacks"] == ["jpeg"] and config["noise_stddev"] == 0.1
    with pytest.raises(ValueError, match="identity.*noise.*blur.*rescale.*jpeg.*crop"):
        AttackPipeline(benign_attacks=("identity", "sharpen"))
    with pytest.raises(ValueError, match="donor.*colour.*clone"):
        AttackPipeline(tamper_kinds=("inpaint",))
    with pytest.raises(ValueError, match="jpeg_quality_range"):
        AttackPipeline(jpeg_quality_range=(0, 90))
    with pytest.raises(ValueError, match="skip_probability"):
        AttackPipeline(skip_probability=1.5)


_MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    from imuge_tf.attacks import AttackPipeline

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    pipeline = AttackPipeline(skip_probability=0.1)
    images = tf.random.stateless_uniform([8, 32, 32, 3], [1, 2])
    donors = tf.random.stateless_uniform([8, 32, 32, 3], [3, 4])
    masks = tf.cast(tf.random.stateless_uniform([8, 32, 32, 1], [5, 6]) > 0.7, tf.float32)

    @tf.function
    def step(fold_replica):
        def replica_fn():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            stream = replica * tf.cast(fold_replica, tf.int32)
            seeds = tf.stack([tf.range(8), tf.fill([8], stream)], axis=1)
            out = pipeline(images, donors, masks, seeds)
            return out["attacked"], out["benign_index"], out["tamper_index"]
        return strategy.run(replica_fn)

    report = {"replicas": strategy.num_replicas_in_sync}
    for fold in (True, False):
        attacked, benign, tamper = (strategy.experimental_local_results(x) for x in step(fold))
        report[str(fold)] = {
            "attacked_equal": bool(tf.reduce_all(attacked[0] == attacked[1])),
            "choices_equal": bool(tf.reduce_all(benign[0] == benign[1])
                                  and tf.reduce_all(tamper[0] == tamper[1])),
        }
    print("RESULT " + json.dumps(report))
    """
)


@pytest.mark.slow
def test_replicas_draw_different_attacks():
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    completed = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=REPO_ROOT,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, completed.stderr[-3000:]
    report = json.loads(lines[-1][len("RESULT ") :])
    assert report["replicas"] == 2
    # Seeds with the replica id folded in: the replicas attack differently.
    assert not report["True"]["attacked_equal"] and not report["True"]["choices_equal"]
    # Same seeds on both replicas: identical attacks (the pipeline itself is deterministic).
    assert report["False"]["attacked_equal"] and report["False"]["choices_equal"]
