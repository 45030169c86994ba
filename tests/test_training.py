"""Training: the schedule, a train step that learns, distributed fits, resume after kill -9.

The distributed and interrupted runs are real subprocesses (`python train.py ...`), as a user
would start them; MirroredStrategy gets two logical CPU devices set before TF initialises.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from imuge_tf.config import load_config
from imuge_tf.data import make_dataset
from imuge_tf.models.factory import build_imuge, compile_imuge
from imuge_tf.models.imuge import training_schedule
from imuge_tf.samples import sample_photos

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "train.py")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def schedule_at(step, **overrides):
    arguments = dict(steps_per_epoch=10, stage_epochs=2, fade_fraction=0.5,
                     decoupling_epochs=5)
    arguments.update(overrides)
    stage, alpha, decoupled = training_schedule(step, **arguments)
    return int(stage), round(float(alpha), 4), bool(decoupled)


def test_schedule_follows_the_paper():
    # Stages of 2 epochs (20 steps); new segments fade in over the first epoch of a stage.
    assert schedule_at(0) == (1, 1.0, True)
    assert schedule_at(19) == (1, 1.0, True)
    assert schedule_at(20) == (2, 0.0, True)
    assert schedule_at(25) == (2, 0.5, True)
    assert schedule_at(30) == (2, 1.0, True)
    assert schedule_at(45) == (3, 0.5, True)
    assert schedule_at(50) == (3, 1.0, False)  # decoupling lifted after 5 epochs
    assert schedule_at(60) == (4, 0.0, False)  # the last stage starts after 3 x 2 epochs
    assert schedule_at(1000) == (4, 1.0, False)
    assert schedule_at(0, progressive_recovery=False) == (4, 1.0, True)
    assert schedule_at(0, task_decoupling=False) == (1, 1.0, False)


@pytest.fixture(scope="module")
def fixed_batch():
    dataset, _ = make_dataset(sample_photos()[:4], image_size=32, batch_size=4, seed=3)
    return next(iter(dataset))


def as_floats(logs):
    return {name: float(value) for name, value in logs.items()}


@pytest.mark.slow
def test_train_step_learns_a_fixed_batch(fixed_batch):
    # Same batch and same attack seeds every step: the step must overfit it. Decoupling
    # stays on (V trains on L_cls alone), the recovery starts at full resolution.
    config = load_config("smoke", ["train.decoupling_epochs=1000", "train.learning_rate=0.003",
                                   "model.progressive_recovery=false"])
    model = compile_imuge(build_imuge(config), config)
    first_encoder_weights = [w.numpy().copy() for w in model.encoder.trainable_weights]
    step = tf.function(model.train_step)  # traced once: a trace costs more than the steps
    first = as_floats(step(fixed_batch))
    for _ in range(59):
        step(fixed_batch)
    # Metrics are running means: compare single-step values via the trackers' first and last.
    model.reset_metrics()
    last = as_floats(step(fixed_batch))
    assert last["L_R"] < 0.5 * first["L_R"], (first["L_R"], last["L_R"])
    assert last["L_C"] < 0.5 * first["L_C"], (first["L_C"], last["L_C"])
    assert last["L_cls"] < 0.8 * first["L_cls"], (first["L_cls"], last["L_cls"])
    assert last["psnr_immunized"] > first["psnr_immunized"] + 3.0
    assert all(np.isfinite(v) for v in last.values())
    changed = [not np.allclose(a, w.numpy()) for a, w in
               zip(first_encoder_weights, model.encoder.trainable_weights)]
    assert all(changed), "every encoder weight gets a gradient"
    assert int(model.optimizer.iterations.numpy()) == 61
    assert int(model.discriminator_optimizer.iterations.numpy()) == 61


def test_decoupling_keeps_classification_gradients_out_of_the_encoder(fixed_batch):
    config = load_config("smoke", ["model.discriminators=false",
                                   "model.progressive_recovery=false"])
    model = compile_imuge(build_imuge(config), config)
    stage, alpha = tf.constant(4), tf.constant(1.0)

    def encoder_gradient(decoupled):
        with tf.GradientTape() as tape:
            outputs = model.forward(fixed_batch, stage, alpha, tf.constant(decoupled),
                                    training=True)
            loss = model._generator_losses(outputs, tf.constant(decoupled))["L_cls"]
        gradients = tape.gradient(loss, model.encoder.trainable_variables)
        return sum(float(tf.reduce_sum(tf.abs(g))) for g in gradients if g is not None)

    assert encoder_gradient(True) == 0.0
    assert encoder_gradient(False) > 0.0


def run_train(args, workdir, timeout=600, env=None):
    command = [sys.executable, TRAIN, "--config", "smoke", "--workdir", str(workdir),
               "--quiet", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=env or ENV, cwd=ROOT)


MIRRORED_SCRIPT = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
from imuge_tf.config import load_config
from imuge_tf.data import make_dataset
from imuge_tf.models.factory import build_imuge
from imuge_tf.samples import sample_photos
from imuge_tf.training import train

def copies(model):
    # (the numbers of per-device copies, the largest difference between two copies)
    variables = (model.weights + model.optimizer.variables
                 + model.discriminator_optimizer.variables)
    values = [[c.numpy() for c in v.value.values] for v in variables]
    return (sorted({len(c) for c in values}),
            max(float(np.max(np.abs(c[0] - other))) for c in values for other in c[1:]))

def iterations(model):
    return [int(model.optimizer.iterations.numpy()),
            int(model.discriminator_optimizer.iterations.numpy())]

# train() itself, as `--strategy mirrored` runs it.
result = train(load_config("smoke", ["train.epochs=1", "train.batch_size=4"]),
               sample_photos()[:4], sys.argv[1], strategy_name="mirrored", verbose=0,
               log=lambda *a: None)
trained = result["model"]
# Its strategy again: a second MirroredStrategy in the process would reuse the collective
# ops' instance keys.
mirrored = trained.distribute_strategy

# The same global batch of 4, fitted for two steps from the same weights by each strategy.
# Attacks are skipped and every sample is immunized, so no draw depends on the replica's
# seeds, and every loss is a mean over samples: two replicas' halves then give the global
# batch's update only if the batch is split, each replica's loss is divided by the replica
# count and their gradients are summed. SGD, unlike Adam, shows a wrongly scaled gradient.
# The steps run eagerly, since tracing them for both strategies takes minutes; train() ran
# the traced step.
config = load_config("smoke", ["attacks.skip_probability=1.0", "attacks.benign=[identity]",
                               "attacks.tampers=[donor]",
                               "attacks.never_immunized_probability=0.0",
                               "attacks.residual_removal_probability=0.0"])
dataset, _ = make_dataset(sample_photos()[:4], image_size=32, batch_size=4, seed=3)
data = tf.data.Dataset.from_tensors(next(iter(dataset))).repeat()
keras.utils.set_random_seed(0)
initial = build_imuge(config).get_weights()

def fitted(strategy):
    with strategy.scope():
        model = build_imuge(config)
        model.set_weights(initial)
        model.compile(generator_optimizer=keras.optimizers.SGD(0.1),
                      discriminator_optimizer=keras.optimizers.SGD(0.1), run_eagerly=True)
    model.fit(data, steps_per_epoch=2, epochs=1, verbose=0)
    return model

alone, shared = fitted(tf.distribute.get_strategy()), fitted(mirrored)
split = [int(t.shape[0]) for t in mirrored.experimental_local_results(
    next(iter(mirrored.experimental_distribute_dataset(data)))["image"])]
after, expected = shared.get_weights(), alone.get_weights()
print(json.dumps({
    "replicas": mirrored.num_replicas_in_sync,
    "split": split,
    "copies": copies(shared),
    "iterations": iterations(shared),
    "largest_update": max(float(np.max(np.abs(a - b))) for a, b in zip(after, initial)),
    "largest_gap": max(float(np.max(np.abs(a - b))) for a, b in zip(after, expected)),
    "train": {"replicas": trained.distribute_strategy.num_replicas_in_sync,
              "step": result["step"], "copies": copies(trained),
              "iterations": iterations(trained),
              "losses": {k: v[-1] for k, v in result["history"].items()}},
}))
"""


@pytest.mark.slow
def test_fit_under_mirrored_strategy_on_two_logical_cpus(tmp_path):
    # Tracing the step for two replicas takes minutes on a busy CPU.
    result = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=900, env=ENV, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["split"] == [2, 2]  # each replica gets half of the global batch
    # Every variable, the optimizers' included, has a copy on each device, and the copies
    # got the same (all-reduced) updates.
    assert report["copies"] == [[2], 0.0]
    assert report["iterations"] == [2, 2]
    # The same weights as one device fitting the whole batch (float sums in another order),
    # while the steps moved them by far more than that.
    assert report["largest_gap"] < 1e-5, report
    assert report["largest_update"] > 1e-3, report
    # train() itself, as `--strategy mirrored` runs it (the traced step).
    trained = report["train"]
    assert trained["replicas"] == 2 and trained["step"] == 2
    assert trained["copies"] == [[2], 0.0] and trained["iterations"] == [2, 2]
    assert all(np.isfinite(v) for v in trained["losses"].values())
    assert os.path.exists(tmp_path / "run" / "inference" / "decoder.keras")


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_multiworker_training_with_two_processes_on_loopback(tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workdir = tmp_path / "run"
    processes = []
    for index in range(2):
        env = {**ENV, "TF_CONFIG": json.dumps({"cluster": cluster,
                                               "task": {"type": "worker", "index": index}})}
        command = [sys.executable, TRAIN, "--config", "smoke", "--workdir", str(workdir),
                   "--quiet", "--strategy", "multiworker", "--set", "train.epochs=1"]
        processes.append(subprocess.Popen(command, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT))
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    assert "done at step 2" in outputs[0][0]
    assert os.path.exists(workdir / "inference" / "encoder.keras")
    assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith("ckpt-2")
    # The non-chief's private checkpoints are cleaned up.
    assert not [name for name in os.listdir(workdir) if name.startswith(".worker")]


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    command = [sys.executable, TRAIN, "--config", "smoke", "--workdir", str(workdir), "--quiet",
               "--set", "train.epochs=200", "--set", "train.checkpoint_every_steps=1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=ENV, cwd=ROOT)
    checkpoints = workdir / "checkpoints"
    deadline = time.time() + 400
    try:
        while time.time() < deadline:
            latest = tf.train.latest_checkpoint(str(checkpoints)) if checkpoints.exists() else None
            if latest and int(latest.rsplit("-", 1)[1]) >= 2:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the run wrote no checkpoint in time")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    killed_at = int(tf.train.latest_checkpoint(str(checkpoints)).rsplit("-", 1)[1])
    assert killed_at < 400

    # Resume with a shorter total: the step count must go on from the checkpoint, not 0.
    total_epochs = killed_at // 2 + 2
    result = run_train(["--set", f"train.epochs={total_epochs}"], workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed_from = int(result.stdout.split("from step ")[1].split()[0])
    assert resumed_from >= killed_at
    assert f"done at step {total_epochs * 2}" in result.stdout
    metadata = json.loads((workdir / "inference" / "imuge.json").read_text())
    assert metadata["step"] == total_epochs * 2
    assert metadata["image_size"] == 32
    # The resolved config, TensorBoard scalars and image grids are in the work directory.
    assert load_config("smoke", [f"train.epochs={total_epochs}"]).to_yaml() == (
        workdir / "config.yaml").read_text()
    assert any(name.startswith("events") for name in os.listdir(workdir / "logs" / "train"))
    assert any(name.startswith("events") for name in os.listdir(workdir / "logs" / "images"))
    # The inference networks load on their own and run.
    import keras

    import imuge_tf.models.unet  # noqa: F401  (registers the layer classes)

    encoder = keras.saving.load_model(str(workdir / "inference" / "encoder.keras"))
    residual = encoder(np.zeros((1, 32, 32, 3), np.float32))
    assert residual.shape == (1, 32, 32, 3)


@pytest.mark.slow
def test_bad_input_gives_one_line_errors(tmp_path):
    missing = run_train(["--data", str(tmp_path / "nowhere")], tmp_path / "a")
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr
    assert "nowhere" in missing.stderr.strip().splitlines()[-1]

    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_train(["--data", str(empty)], tmp_path / "b")
    assert result.returncode == 2 and "Traceback" not in result.stderr

    result = run_train(["--set", "model.colour=red"], tmp_path / "c")
    assert result.returncode == 2 and "model.colour" in result.stderr

    # A work directory made by another config is refused, naming what differs.
    workdir = tmp_path / "d"
    workdir.mkdir()
    (workdir / "config.yaml").write_text(load_config("smoke", ["model.base_filters=8"]).to_yaml())
    result = run_train([], workdir)
    assert result.returncode == 2
    assert "model.base_filters" in result.stderr and "Traceback" not in result.stderr
