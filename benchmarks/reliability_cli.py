"""Batches killed with SIGKILL at random moments, then resumed: are the outputs all whole?

    python benchmarks/reliability_cli.py [PHOTO_FOLDER] [--rounds 6] [--seed 0] [--model PATH]

Runs `imuge immunize PHOTOS --out OUT` and `imuge verify RECEIVED --out OUT` (RECEIVED: the
immunized photos, a quarter of them with a flat rectangle painted in) as real subprocesses.
First one uninterrupted run of each gives the reference outputs and exit code. Then, in each
round, a fresh run is killed with SIGKILL at a random moment of its batch (once a random number
of photos are complete, after a random part of the time one photo takes), its first resume
(`--skip-existing`) is killed the same way in about half of the rounds, and a last resume runs
to the end.

After each kill: how many temporary `.partial` files it left, and whether every output present
is byte-identical to the reference (none half-written) and every photo has all or none of its
outputs. After the last resume: every output of every photo present, readable (PNG decoded,
JSON parsed) and byte-identical to the reference, no hidden file left in OUT, and the exit
code that of the uninterrupted run (verify's depends on verdicts read back from reports).

Without PHOTO_FOLDER, 12 small photos are made from the ones bundled with scikit-image. The
model is --model, else the shipped demo one. `run` returns the figures; `main` prints them as
one JSON document, with the time and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO_ROOT, log, machine_facts, utc_now  # noqa: E402

PHOTOS = 12
PHOTO_SIZE = (192, 256)  # height, width: small, so that a round takes seconds, not minutes
TAMPERED_SHARE = 4  # every fourth received photo is tampered
POLL_S = 0.01
REMOVED = re.compile(r"removed (\d+) temporary file\(s\) left by interrupted runs")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def make_photos(folder):
    """PHOTOS small PNGs from scikit-image's bundled photos (whole ones, then offset crops)."""
    from imuge_tf.io import cover, write_image
    from imuge_tf.samples import SAMPLE_PHOTO_NAMES, sample_photo

    os.makedirs(folder, exist_ok=True)
    for index in range(PHOTOS):
        image = sample_photo(SAMPLE_PHOTO_NAMES[index % len(SAMPLE_PHOTO_NAMES)])
        if index >= len(SAMPLE_PHOTO_NAMES):
            height, width = image.shape[:2]
            image = image[height // 4:, width // 4:]
        write_image(os.path.join(folder, f"photo{index:02d}.png"), cover(image, *PHOTO_SIZE))
    return folder


def make_received(immunized, folder):
    """The immunized photos (relative path -> PNG bytes) as received: every
    TAMPERED_SHARE-th with a grey rectangle painted in."""
    from imuge_tf.io import read_image, write_image

    for index, name in enumerate(sorted(immunized)):
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as stream:
            stream.write(immunized[name])
        if index % TAMPERED_SHARE == 0:
            image = read_image(path).copy()
            height, width = image.shape[:2]
            image[height // 4:height // 2, width // 4:width // 2] = 128
            write_image(path, image, force=True)
    return folder


def listing(root):
    """Relative paths of every file under `root` (none if it does not exist)."""
    return [os.path.relpath(os.path.join(folder, name), root)
            for folder, _, names in os.walk(root) for name in names]


def contents(root):
    """Every file under `root`, hidden ones too: relative path -> bytes."""
    files = {}
    for path in listing(root):
        with open(os.path.join(root, path), "rb") as stream:
            files[path] = stream.read()
    return files


class Command:
    """One batch command, its outputs per photo and its uninterrupted reference run."""

    def __init__(self, name, inputs, photos, out, model, suffixes):
        self.name, self.inputs, self.out, self.suffixes = name, inputs, out, suffixes
        self.photos = photos
        self.arguments = [name, inputs, "--out", out] + (["--model", model] if model else [])
        self.reference = None
        self.reference_code = None
        self.reference_seconds = None
        self.first_output_seconds = None
        self.seconds_per_photo = None

    def start(self, *extra, log_dir):
        stdout = open(os.path.join(log_dir, f"{self.name}.out"), "wb")
        stderr = open(os.path.join(log_dir, f"{self.name}.err"), "wb")
        child = subprocess.Popen([sys.executable, "-m", "imuge_tf.cli", *self.arguments,
                                  *extra], cwd=REPO_ROOT, env=ENV, stdout=stdout,
                                 stderr=stderr)
        stdout.close()
        stderr.close()
        return child

    def outputs(self, files):
        """Photo name -> its outputs' relative paths (all the suffixes)."""
        photos = {}
        for path in files:
            for suffix in self.suffixes:
                if path.endswith(suffix) and not os.path.basename(path).startswith("."):
                    photos.setdefault(path[:-len(suffix)], set()).add(path)
                    break
        return photos

    def make_reference(self, log_dir):
        started = time.monotonic()
        child = self.start(log_dir=log_dir)
        last_output, count = None, 0
        while child.poll() is None:
            now = len(self.outputs(listing(self.out)))
            if now > count:
                count, last_output = now, time.monotonic() - started
                if self.first_output_seconds is None:
                    self.first_output_seconds = last_output
            time.sleep(POLL_S)
        self.reference_seconds = time.monotonic() - started
        # From the first photo's outputs to the last one's (the process's own ending, which
        # can take seconds, is no photo's work).
        writing = (last_output or 0.0) - (self.first_output_seconds or 0.0)
        self.seconds_per_photo = writing / max(1, self.photos - 1)
        self.reference_code = child.returncode
        self.reference = contents(self.out)
        shutil.rmtree(self.out)
        expected = len(self.suffixes) * self.photos
        if len(self.reference) != expected or self.reference_code not in (0, 1, 3):
            raise RuntimeError(f"the reference `imuge {self.name}` run failed (exit code "
                               f"{self.reference_code}, {len(self.reference)} of {expected} "
                               f"outputs); see {log_dir}")


def complete_photos(command):
    return sum(len(paths) == len(command.suffixes)
               for paths in command.outputs(listing(command.out)).values())


def kill_at_random(command, rng, log_dir, *extra):
    """Starts `command` and kills it with SIGKILL at a random moment of its batch; returns
    what the kill left."""
    # Most of a run is starting up (TensorFlow, the model, tracing): a kill at a random time
    # would mostly land there. So the moment is drawn in the batch itself: once a random
    # number of photos are complete (from those done already), after a random part of the
    # time one photo takes in the reference run.
    done = complete_photos(command)
    wait_for = rng.randint(done, command.photos - 1)
    delay = rng.uniform(0.0, command.seconds_per_photo)
    child = command.start(*extra, log_dir=log_dir)
    while child.poll() is None and complete_photos(command) < wait_for:
        time.sleep(POLL_S)
    moment = time.monotonic() + delay
    while child.poll() is None and time.monotonic() < moment:
        time.sleep(POLL_S)
    finished = child.poll() is not None
    if not finished:
        child.send_signal(signal.SIGKILL)
    child.wait()
    files = contents(command.out)
    present = {path for path in files if not os.path.basename(path).startswith(".")}
    photos = command.outputs(present)
    return {
        "killed": not finished,
        "after_photos": wait_for,
        "plus_seconds": round(delay, 3),
        "partials": sum(os.path.basename(p).endswith(".partial") for p in files),
        "outputs_present": len(present),
        # Present but not what the uninterrupted run wrote: half-written or wrong.
        "broken": sum(files[path] != command.reference.get(path) for path in present),
        # Some of a photo's outputs without the others (possible only for a kill between the
        # renames of one photo's files).
        "incomplete_photos": sum(len(paths) != len(command.suffixes)
                                 for paths in photos.values()),
    }


def readable(path, data):
    from imuge_tf.io import ImageReadError, read_image

    if path.endswith(".json"):
        try:
            json.loads(data)
        except ValueError:
            return False
        return True
    try:
        read_image(path)
    except ImageReadError:
        return False
    return True


def check(command):
    """Compares every output after the last resume with the reference."""
    files = contents(command.out)
    broken = 0
    for path, data in command.reference.items():
        got = files.get(path)
        if got is None or got != data or not readable(os.path.join(command.out, path), got):
            broken += 1
    return {"outputs_checked": len(command.reference), "broken": broken,
            "unexpected_files": len(set(files) - set(command.reference)),
            "leftovers": sum(os.path.basename(path).startswith(".") for path in files)}


def one_round(command, rng, log_dir):
    """Kill, maybe kill the first resume too, resume to the end, check; returns the figures."""
    if os.path.isdir(command.out):
        shutil.rmtree(command.out)
    kills = [kill_at_random(command, rng, log_dir)]
    if rng.random() < 0.5 and complete_photos(command) < command.photos:
        kills.append(kill_at_random(command, rng, log_dir, "--skip-existing"))
    started = time.monotonic()
    child = command.start("--skip-existing", "--json", log_dir=log_dir)
    child.wait()
    resume_seconds = time.monotonic() - started
    with open(os.path.join(log_dir, f"{command.name}.err"), encoding="utf-8") as stream:
        removed = sum(int(count) for count in REMOVED.findall(stream.read()))
    skipped = 0
    with open(os.path.join(log_dir, f"{command.name}.out"), encoding="utf-8") as stream:
        try:
            skipped = json.load(stream)["summary"].get("skipped", 0)
        except (ValueError, KeyError):
            pass
    return {"kills": kills, "resume_exit_code": child.returncode,
            "exit_code_matches": child.returncode == command.reference_code,
            "partials_removed_by_last_resume": removed, "skipped_by_last_resume": skipped,
            "last_resume_seconds": round(resume_seconds, 2), **check(command)}


def run(photo_folder=None, rounds=6, seed=0, model=None) -> dict:
    """Runs the benchmark (see the module docstring) and returns its figures."""
    started = time.monotonic()
    rng = random.Random(seed)
    scratch = tempfile.mkdtemp(prefix="imuge-reliability-")
    try:
        logs = os.path.join(scratch, "logs")
        os.makedirs(logs)
        if photo_folder is None:
            photo_folder = make_photos(os.path.join(scratch, "photos"))
        from imuge_tf.cli import find_inputs

        files, problems = find_inputs([photo_folder])
        if problems or not files:
            raise SystemExit(f"{photo_folder}: no photos ({problems})")
        count = len(files)
        immunize = Command("immunize", photo_folder, count,
                           os.path.join(scratch, "out-immunize"), model, (".png",))
        log(f"reference run: imuge immunize ({count} photos)")
        immunize.make_reference(logs)
        received = make_received(immunize.reference, os.path.join(scratch, "received"))
        verify = Command("verify", received, count, os.path.join(scratch, "out-verify"),
                         model, (".mask.png", ".overlay.png", ".json"))
        log(f"reference run: imuge verify ({count} photos)")
        verify.make_reference(logs)

        commands = {}
        for command in (immunize, verify):
            results = []
            for index in range(rounds):
                log(f"{command.name}: round {index + 1} of {rounds}")
                results.append(one_round(command, rng, logs))
            kills = [kill for result in results for kill in result["kills"]]
            commands[command.name] = {
                "reference_seconds": round(command.reference_seconds, 2),
                "reference_seconds_per_photo": round(command.seconds_per_photo, 3),
                "reference_exit_code": command.reference_code,
                "outputs_per_photo": len(command.suffixes),
                "kills": sum(kill["killed"] for kill in kills),
                "runs_that_finished_before_the_kill": sum(not k["killed"] for k in kills),
                "kills_with_some_outputs_written": sum(
                    0 < kill["outputs_present"] < len(command.reference) for kill in kills),
                "partials_left_by_kills": sum(kill["partials"] for kill in kills),
                "broken_outputs_after_kills": sum(kill["broken"] for kill in kills),
                "incomplete_photos_after_kills": sum(k["incomplete_photos"] for k in kills),
                "resumes": sum(len(r["kills"]) for r in results),
                "partials_removed_by_last_resumes": sum(
                    r["partials_removed_by_last_resume"] for r in results),
                "outputs_checked": sum(r["outputs_checked"] for r in results),
                "broken_outputs": sum(r["broken"] for r in results),
                "unexpected_files": sum(r["unexpected_files"] for r in results),
                "leftovers_found": sum(r["leftovers"] for r in results),
                "exit_code_mismatches": sum(not r["exit_code_matches"] for r in results),
                "rounds": results,
            }
        totals = {key: sum(c[key] for c in commands.values())
                  for key in ("kills", "resumes", "outputs_checked", "broken_outputs",
                              "broken_outputs_after_kills", "incomplete_photos_after_kills",
                              "leftovers_found", "partials_left_by_kills",
                              "exit_code_mismatches")}
        return {"photos": count,
                "photo_source": "scikit-image samples" if photo_folder.startswith(scratch)
                else photo_folder, "rounds": rounds, "seed": seed,
                "model": model or "shipped demo model", **totals,
                "seconds": round(time.monotonic() - started, 1), "commands": commands}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", nargs="?", default=None, metavar="PHOTO_FOLDER",
                        help="photos to immunize (default: 12 small ones from scikit-image)")
    parser.add_argument("--rounds", type=int, default=6,
                        help="kill-and-resume rounds per command (default: 6)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the kill times")
    parser.add_argument("--model", default=None, metavar="PATH",
                        help="model folder (default: the shipped demo model)")
    args = parser.parse_args(argv)
    figures = run(args.photos, rounds=args.rounds, seed=args.seed, model=args.model)
    print(json.dumps({"measured": utc_now(), "machine": machine_facts(), **figures}, indent=2))


if __name__ == "__main__":
    main()
