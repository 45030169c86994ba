"""Training that fails loudly and reproducibly: divergence stops the run, a seed fixes the run,
resume survives what a kill or a bad disk leaves behind, and --init-from starts a new run
from another run's networks.

The long soak (kill -9 twenty times, also during saves) is `benchmarks/reliability.py`.
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from imuge_tf.config import load_config
from imuge_tf.models.factory import build_imuge, compile_imuge
from imuge_tf.samples import sample_photos
from imuge_tf.training import TrainingError, _warm_start, train

# Real trainings, some of them in subprocesses: minutes.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "train.py")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
# One step per epoch and a checkpoint at every step: several checkpoints from a short run.
SHORT = ["train.epochs=2", "train.steps_per_epoch=1", "train.checkpoint_every_steps=1"]


def checkpoint_tensors(workdir, prefix=None):
    path = prefix or tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    reader = tf.train.load_checkpoint(path)
    # The object graph names Python objects, whose names depend on what else the process built.
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if key != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def all_finite(tensors):
    return all(np.all(np.isfinite(value)) for value in tensors.values()
               if np.issubdtype(np.asarray(value).dtype, np.floating))


@pytest.fixture(scope="module")
def twin_runs(tmp_path_factory):
    """Two runs of the same config and seed, in one process (so the global random state has
    moved on between them: only the seed can make them equal). Tests that damage a run's
    files do it to a copy (`copy_of`): a training run is the costly part of each test."""
    config = load_config("smoke", SHORT)
    photos = sample_photos()[:3]
    folders = []
    for name in ("first", "second"):
        workdir = str(tmp_path_factory.mktemp(name))
        train(config, photos, workdir, verbose=0, log=lambda *args: None)
        folders.append(workdir)
    return config, photos, folders


def copy_of(workdir, tmp_path):
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    return copy


def test_two_runs_with_one_seed_are_identical_bit_for_bit(twin_runs):
    _, _, (first, second) = twin_runs
    a, b = checkpoint_tensors(first), checkpoint_tensors(second)
    assert a.keys() == b.keys() and len(a) > 100
    differing = [key for key in a if not np.array_equal(a[key], b[key])]
    assert differing == []


def test_resume_skips_an_unreadable_latest_checkpoint(twin_runs, tmp_path):
    config, photos, (_, second) = twin_runs
    workdir = copy_of(second, tmp_path)
    checkpoints = os.path.join(workdir, "checkpoints")
    assert tf.train.latest_checkpoint(checkpoints).endswith("ckpt-2")
    data = os.path.join(checkpoints, "ckpt-2.data-00000-of-00001")
    with open(data, "r+b") as stream:  # a save cut short by a full disk
        stream.truncate(os.path.getsize(data) // 2)
    # What a kill during a save leaves: TensorFlow's temporary shard folder.
    os.makedirs(os.path.join(checkpoints, "ckpt-3_temp"))
    with open(os.path.join(checkpoints, "ckpt-3_temp", "part-00000-of-00001.index"), "w") as f:
        f.write("half")
    lines = []
    result = train(load_config("smoke", SHORT[1:] + ["train.epochs=3"]), photos, workdir,
                   verbose=0, log=lines.append)
    assert result["start_step"] == 1 and result["step"] == 3
    assert any("skipped checkpoint ckpt-2" in line for line in lines), lines
    assert any("removed 1 temporary" in line for line in lines), lines
    assert not os.path.exists(os.path.join(checkpoints, "ckpt-3_temp"))
    # The damaged files are kept aside, and the state file names only readable checkpoints.
    assert os.path.exists(os.path.join(checkpoints, "unreadable",
                                       "ckpt-2.data-00000-of-00001"))
    assert tf.train.latest_checkpoint(checkpoints).endswith("ckpt-3")
    assert all_finite(checkpoint_tensors(workdir))


def test_a_garbled_state_file_does_not_hide_the_checkpoints(twin_runs, tmp_path):
    config, photos, (first, _) = twin_runs
    workdir = copy_of(first, tmp_path)
    checkpoints = os.path.join(workdir, "checkpoints")
    with open(os.path.join(checkpoints, "checkpoint"), "w") as stream:
        stream.write("model_checkpoint_path: {{{ not a proto")
    # The run is complete at its latest checkpoint, so resuming finds it and has no step left
    # (a resume that missed it would start from step 0 and train).
    lines = []
    result = train(config, photos, workdir, verbose=0, log=lines.append)
    assert result["start_step"] == 2 and result["step"] == 2
    assert any("nothing to do" in line for line in lines), lines


def test_init_from_copies_the_networks_but_not_the_schedule(twin_runs, tmp_path):
    import keras

    config, _, (first, _) = twin_runs
    trained = keras.saving.load_model(os.path.join(first, "inference", "encoder.keras"))
    fresh = compile_imuge(build_imuge(config), config)
    assert not np.allclose(fresh.encoder.get_weights()[0], trained.get_weights()[0])
    _warm_start(fresh, first)
    for loaded, expected in zip(fresh.encoder.get_weights(), trained.get_weights()):
        np.testing.assert_array_equal(loaded, expected)
    assert int(fresh.optimizer.iterations.numpy()) == 0  # a fresh schedule
    # Without a checkpoint, the inference networks of a folder (e.g. a shipped model) serve.
    other = compile_imuge(build_imuge(config), config)
    _warm_start(other, os.path.join(first, "inference"))
    for loaded, expected in zip(other.encoder.get_weights(), trained.get_weights()):
        np.testing.assert_array_equal(loaded, expected)
    with pytest.raises(TrainingError, match="no checkpoint"):
        _warm_start(fresh, str(tmp_path / "nowhere"))


def test_divergence_exits_non_zero_with_one_line_and_keeps_the_last_finite_checkpoint(
        tmp_path):
    """`train.py` with a learning rate that diverges, with the default attacks: a NaN
    immunized photo first fails an attack's range check, and the run must still say that it
    diverged (not what the attack saw), in one line naming the last finite checkpoint."""
    workdir = tmp_path / "run"
    command = [sys.executable, TRAIN, "--config", "smoke", "--workdir", str(workdir), "--quiet",
               "--set", "train.learning_rate=1e30", "--set", "train.epochs=3",
               "--set", "train.steps_per_epoch=1", "--set", "train.checkpoint_every_steps=1"]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=ROOT,
                            timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: training diverged at step")
    latest = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
    assert latest is not None and os.path.basename(latest) in line
    assert all_finite(checkpoint_tensors(str(workdir), latest))
    # Inference networks are written at epoch ends from finite weights only.
    metadata = workdir / "inference" / "imuge.json"
    if metadata.exists():
        import keras

        import imuge_tf.models.unet  # noqa: F401  (registers the layer classes)

        encoder = keras.saving.load_model(str(workdir / "inference" / "encoder.keras"))
        assert all(np.all(np.isfinite(weight)) for weight in encoder.get_weights())
