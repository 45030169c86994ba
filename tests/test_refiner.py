"""The reference refiner: its training step, serialization, and its place in recovery."""

import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from imuge_tf import refiner_training
from imuge_tf.inference import Imuge
from imuge_tf.io import cover
from imuge_tf.models.reference import SelfReference
from imuge_tf.models.refiner import FACTOR, RefinerModel, build_refiner, refine


def _batch(photos, count=4, size=64):
    """(context, mask, reference, original) at the refiner's scale from bundled photos."""
    reference = SelfReference()
    originals, references, masks = [], [], []
    for index, name in enumerate(("astronaut", "coffee", "chelsea", "rocket")[:count]):
        photo = cover(photos[name], size * FACTOR, size * FACTOR).astype(np.float32)[None]
        originals.append(tf.nn.avg_pool2d(photo, FACTOR, FACTOR, "VALID")[0])
        references.append(tf.nn.avg_pool2d(reference.expected(tf.constant(photo)), FACTOR,
                                           FACTOR, "VALID")[0])
        mask = np.zeros((size, size, 1), np.float32)
        mask[8 + index * 4:40 + index * 4, 12:44] = 1.0
        masks.append(mask)
    originals = tf.stack(originals)
    return originals, tf.constant(np.stack(masks)), tf.stack(references), originals


@pytest.mark.slow
def test_refiner_starts_as_the_bare_reference_and_learns(photos):
    context, mask, reference, original = _batch(photos)
    model = RefinerModel(build_refiner(base_filters=8, max_filters=16))
    np.testing.assert_allclose(model((context, mask, reference)), reference, atol=1e-4)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    data = tf.data.Dataset.from_tensors((context, mask, reference, original)).repeat()
    before = model.evaluate(data.take(1), verbose=0, return_dict=True)
    model.fit(data, steps_per_epoch=60, epochs=1, verbose=0)
    after = model.evaluate(data.take(1), verbose=0, return_dict=True)
    assert before["l1_gain"] == pytest.approx(0.0, abs=1e-3)
    assert after["loss"] < before["loss"] * 0.9
    assert after["l1_gain"] > 0.5  # levels closer to the original inside the mask


def test_refiner_model_keras_round_trip(photos, tmp_path):
    context, mask, reference, _ = _batch(photos, count=2)
    model = RefinerModel(build_refiner(base_filters=8, max_filters=16), outside_weight=0.2)
    for variable in model.refiner.trainable_variables:  # not the zero initial head
        variable.assign(np.random.default_rng(0).normal(0, 0.05, variable.shape))
    path = str(tmp_path / "refiner.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert isinstance(loaded, RefinerModel) and loaded.outside_weight == 0.2
    np.testing.assert_allclose(loaded((context, mask, reference)),
                               model((context, mask, reference)), atol=1e-4)


def test_refine_keeps_full_resolution_and_any_size(photos):
    network = build_refiner(base_filters=8, max_filters=16)
    for variable in network.trainable_variables:
        variable.assign(np.random.default_rng(1).normal(0, 0.05, variable.shape))
    levels = tf.constant(cover(photos["coffee"], 150, 203).astype(np.float32)[None])
    mask = np.zeros((1, 150, 203, 1), np.float32)
    mask[:, 40:90, 50:120] = 1.0
    reference = SelfReference().expected(levels)
    refined = np.asarray(refine(network, levels, tf.constant(mask), reference))
    assert refined.shape == (1, 150, 203, 3)
    assert 0.0 <= refined.min() and refined.max() <= 255.0
    assert np.abs(refined - np.asarray(reference)).max() > 0.1  # the correction is applied


@pytest.mark.slow
def test_trained_refiner_is_stored_and_used_by_recover(untrained_model_dir, photos, tmp_path):
    model_dir = str(tmp_path / "model")
    shutil.copytree(untrained_model_dir, model_dir)
    data_dir = tmp_path / "photos"
    data_dir.mkdir()
    from PIL import Image

    for name in ("astronaut", "coffee"):
        Image.fromarray(cover(photos[name], 512, 640)).save(data_dir / f"{name}.png")
    assert refiner_training.main(["--data", str(data_dir), "--out", model_dir, "--minutes", "0",
                                  "--examples", "4", "--steps-per-round", "2"]) == 0
    with open(os.path.join(model_dir, "imuge.json")) as handle:
        metadata = json.load(handle)
    assert metadata["networks"]["refiner"] == "refiner.f16.npz"
    assert metadata["refiner"]["steps"] == 2
    assert refiner_training.main(["--data", str(data_dir), "--out", model_dir, "--minutes", "0",
                                  "--examples", "4", "--steps-per-round", "1", "--resume"]) == 0
    with open(os.path.join(model_dir, "imuge.json")) as handle:
        assert json.load(handle)["refiner"]["steps"] == 3  # went on from the stored one
    imuge = Imuge.load(model_dir)
    assert imuge.refiner is not None
    plain = Imuge.load(untrained_model_dir)
    for each in (imuge, plain):
        each.residual_gain = 0.03
    photo = cover(photos["astronaut"], 256, 320)
    immunized = plain.immunize(photo)
    mask = np.zeros(photo.shape[:2], bool)
    mask[64:160, 96:224] = True
    received = immunized.copy()
    received[mask] = 0
    with_refiner = imuge.recover_with_mask(received, mask)
    without = plain.recover_with_mask(received, mask)
    np.testing.assert_array_equal(with_refiner[~mask], received[~mask])
    assert not np.array_equal(with_refiner[mask], without[mask])


def test_refiner_training_refuses_a_missing_folder(tmp_path, capsys):
    assert refiner_training.main(["--data", str(tmp_path / "absent"), "--out",
                                  str(tmp_path / "model")]) == 2
    assert "error:" in capsys.readouterr().err
