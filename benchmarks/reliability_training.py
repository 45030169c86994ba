"""Training under kill -9, divergence and damaged checkpoints, with real `python train.py` runs.

- **kills**: one work directory, `train.py` started again and again and killed with SIGKILL,
  half of the time while a checkpoint is being written (a `ckpt-N_temp/` folder or a `.partial`
  file is present), the other half at a random moment; every restart must resume at or after
  the last step the previous run saved, and a final run must finish;
- **divergence**: `train.learning_rate=1e30` with the default attacks and with the identity
  attack only: the run must exit non-zero saying it diverged, and the latest checkpoint must
  hold finite numbers only;
- **determinism**: two runs with one seed (separate processes) must write identical
  checkpoints; a run with another seed must not;
- **damaged checkpoint**: the latest checkpoint truncated (as by a full disk) and the state
  file garbled: resume must go on from the previous one.

`run()` returns the figures as a dict; benchmarks/reliability.py renders them.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (quietens TensorFlow before it is imported)

TRAIN = os.path.join(common.REPO_ROOT, "train.py")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
SHORT = ["train.steps_per_epoch=1", "train.checkpoint_every_steps=1"]


def _command(workdir, overrides):
    command = [sys.executable, TRAIN, "--config", "smoke", "--workdir", workdir, "--quiet"]
    for override in overrides:
        command += ["--set", override]
    return command


def _train(workdir, overrides, timeout=900):
    return subprocess.run(_command(workdir, overrides), capture_output=True, text=True,
                          env=ENV, cwd=common.REPO_ROOT, timeout=timeout)


def _saved_steps(workdir):
    steps = []
    for index in glob.glob(os.path.join(workdir, "checkpoints", "ckpt-*.index")):
        name = os.path.basename(index)[len("ckpt-"):-len(".index")]
        if name.isdigit():
            steps.append(int(name))
    return steps


def _saving(workdir):
    """True while a checkpoint or an inference file is being written."""
    return bool(glob.glob(os.path.join(workdir, "checkpoints", "*_temp"))
                or glob.glob(os.path.join(workdir, "inference", ".partial-*")))


def _tensors(workdir):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(
        os.path.join(workdir, "checkpoints")))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if key != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def _all_finite(tensors):
    import numpy as np

    return all(np.all(np.isfinite(v)) for v in tensors.values()
               if np.issubdtype(np.asarray(v).dtype, np.floating))


def kills(folder, rounds=20, seed=0):
    """Kills `train.py` `rounds` times; returns the figures."""
    chance = random.Random(seed)
    workdir = os.path.join(folder, "killed")
    overrides = SHORT + ["train.epochs=100000"]
    records = []
    for index in range(rounds):
        during_save = index % 2 == 0
        before = max(_saved_steps(workdir), default=0)
        started = time.time()
        process = subprocess.Popen(_command(workdir, overrides), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=ENV,
                                   cwd=common.REPO_ROOT)
        # Wait until this run has saved something of its own, then aim the kill.
        deadline = started + 600
        while time.time() < deadline and max(_saved_steps(workdir), default=0) <= before:
            if process.poll() is not None:
                break
            time.sleep(0.05)
        caught_saving = False
        if process.poll() is None:
            if during_save:
                aim = time.time() + 20
                while time.time() < aim and not _saving(workdir):
                    time.sleep(0.001)
                caught_saving = _saving(workdir)
            else:
                time.sleep(chance.uniform(0.0, 3.0))
            process.send_signal(signal.SIGKILL)
        stdout, stderr = process.communicate()
        resumed = None
        if "resuming" in stdout:
            resumed = int(stdout.split("from step ")[1].split()[0])
        records.append({"round": index, "aimed_at_save": during_save,
                        "killed_while_saving": caught_saving, "saved_before": before,
                        "resumed_from": resumed, "returncode": process.returncode,
                        "traceback": "Traceback" in stderr,
                        "seconds": round(time.time() - started, 1)})
        common.log(f"kill {index + 1}/{rounds}: saved before {before}, resumed from {resumed}, "
                   f"{'during a save' if caught_saving else 'between saves'}")
    # Never back: each run resumed at or after what the previous runs had saved (a save cut
    # short is lost, so at least the step before it).
    went_back = [r for r in records[1:] if r["resumed_from"] is None
                 or r["resumed_from"] < r["saved_before"] - 1]
    final_epochs = max(_saved_steps(workdir), default=0) + 2
    final = _train(workdir, SHORT + [f"train.epochs={final_epochs}"])
    return {
        "rounds": rounds,
        "killed_while_saving": sum(r["killed_while_saving"] for r in records),
        "resumed": sum(r["resumed_from"] is not None for r in records[1:]),
        "went_back": len(went_back),
        "tracebacks": sum(r["traceback"] for r in records),
        "final_run_exit": final.returncode,
        "final_run_finished": f"done at step {final_epochs}" in final.stdout,
        "final_run_said": [line for line in final.stdout.splitlines()
                           if "skipped" in line or "removed" in line],
        "leftovers": len(glob.glob(os.path.join(workdir, "checkpoints", "*_temp"))),
        "records": records,
    }


def divergence(folder):
    cases = {}
    for name, extra in (("default attacks", []),
                        ("identity attack", ["attacks.benign=[identity]"])):
        workdir = os.path.join(folder, "diverged-" + name.split()[0])
        result = _train(workdir, ["train.learning_rate=1e30", "train.epochs=4"] + SHORT + extra)
        message = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        steps = _saved_steps(workdir)
        cases[name] = {"exit": result.returncode, "message": message[-1] if message else None,
                       "traceback": "Traceback" in result.stderr,
                       "latest_checkpoint_step": max(steps, default=None),
                       "latest_checkpoint_finite": _all_finite(_tensors(workdir))
                       if steps else None}
    return cases


def determinism(folder):
    import numpy as np

    runs = {}
    for name, seed in (("first", 0), ("second", 0), ("other seed", 1)):
        workdir = os.path.join(folder, "seeded-" + name.replace(" ", "-"))
        result = _train(workdir, ["train.epochs=3", f"data.seed={seed}"] + SHORT)
        assert result.returncode == 0, result.stderr[-2000:]
        runs[name] = _tensors(workdir)
    first = runs["first"]

    def differing(other):
        return sum(not np.array_equal(first[key], other[key]) for key in first)

    return {"tensors": len(first), "same_seed_differing": differing(runs["second"]),
            "other_seed_differing": differing(runs["other seed"])}


def damaged_checkpoint(folder):
    workdir = os.path.join(folder, "damaged")
    first = _train(workdir, ["train.epochs=4"] + SHORT)
    assert first.returncode == 0, first.stderr[-2000:]
    latest = os.path.join(workdir, "checkpoints", "ckpt-4.data-00000-of-00001")
    with open(latest, "r+b") as stream:
        stream.truncate(os.path.getsize(latest) // 2)
    with open(os.path.join(workdir, "checkpoints", "checkpoint"), "w") as stream:
        stream.write("garbled {{{")
    resumed = _train(workdir, ["train.epochs=6"] + SHORT)
    said = [line for line in resumed.stdout.splitlines() if "skipped" in line]
    return {"exit": resumed.returncode,
            "resumed_from": int(resumed.stdout.split("from step ")[1].split()[0])
            if "from step " in resumed.stdout else None,
            "finished": "done at step 6" in resumed.stdout, "said": said,
            "traceback": "Traceback" in resumed.stderr}


def run(rounds=20, folder=None) -> dict:
    with tempfile.TemporaryDirectory(prefix="imuge-reliability-") as scratch:
        folder = folder or scratch
        started = time.time()
        figures = {"kills": kills(folder, rounds)}
        common.log("kills done")
        figures["divergence"] = divergence(folder)
        common.log("divergence done")
        figures["determinism"] = determinism(folder)
        common.log("determinism done")
        figures["damaged_checkpoint"] = damaged_checkpoint(folder)
        figures["seconds"] = round(time.time() - started, 1)
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="kills (default: 20)")
    args = parser.parse_args(argv)
    figures = run(args.rounds)
    print(json.dumps({k: v for k, v in figures.items() if k != "records"}, indent=2,
                     default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
