"""Interrupted and failed batches: outputs written as a unit, leftovers removed, --skip-existing.

The model is test_cli's hand-set one (verdicts known in advance: saturated red is tampered).
Most runs are in-process through `cli.main`; one batch is a real subprocess killed with SIGKILL
(marked slow).
"""

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import test_cli
from PIL import Image

from imuge_tf import cli
from imuge_tf import io as imuge_io
from imuge_tf.cli import batch as cli_batch
from imuge_tf.io import atomic

model_dir = test_cli.model_dir  # the same fixture
BATCH = 8


def main(*args):
    return cli.main([str(arg) for arg in args])


def leftovers(folder):
    return sorted(name for name in os.listdir(folder) if name.startswith("."))


def contents(folder):
    """Every file under `folder` (relative path -> bytes), hidden ones included."""
    return {os.path.relpath(os.path.join(root, name), folder):
            open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(folder) for name in names}


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def fail_placing(monkeypatch, suffix):
    """Makes moving any file ending in `suffix` into place fail with ENOSPC, as a full disk
    would (link and replace are the two ways outputs are placed)."""
    real_link, real_replace = os.link, os.replace

    def guarded(real):
        def call(source, destination, *args, **kwargs):
            if os.fspath(destination).endswith(suffix):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(source, destination, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "link", guarded(real_link))
    monkeypatch.setattr(os, "replace", guarded(real_replace))


def no_model(*args):
    raise AssertionError("the model was loaded although every photo was skipped")


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch")
    for index in range(BATCH):
        Image.fromarray(test_cli.calm_photo(index)).save(folder / f"photo{index}.png")
    return folder


@pytest.fixture(scope="module")
def reference(batch, model_dir, tmp_path_factory):
    """What one uninterrupted `imuge immunize` writes for the batch: relative path -> bytes."""
    out = tmp_path_factory.mktemp("reference")
    assert main("immunize", batch, "--out", out, "--model", model_dir) == 0
    return contents(out)


@pytest.fixture(scope="module")
def shared_imuge(model_dir):
    from imuge_tf.inference import Imuge

    return Imuge.load(str(model_dir))


@pytest.fixture
def one_model(shared_imuge, monkeypatch):
    """Every command of a test gets the same loaded model: tracing verify's graphs costs far
    more than these tiny photos, once per Imuge (the loading itself is test_cli's subject)."""
    monkeypatch.setattr(cli_batch, "load_model", lambda args: shared_imuge)


@pytest.fixture
def received(reference, tmp_path):
    """An immunized photo as it was sent (intact.png) and with a red square (tampered.png)."""
    folder = tmp_path / "received"
    folder.mkdir()
    protected = np.asarray(Image.open(io.BytesIO(reference["photo0.png"])))
    Image.fromarray(protected).save(folder / "intact.png")
    Image.fromarray(test_cli.with_red_square(protected)).save(folder / "tampered.png")
    return folder


def test_skip_existing_skips_complete_photos_and_redoes_missing_ones(
        batch, reference, model_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert main("immunize", batch, "--out", out, "--model", model_dir) == 0
    kept = {name: os.stat(out / name) for name in reference if name != "photo3.png"}
    os.remove(out / "photo3.png")
    stale = atomic._temporary_path(out / "photo3.png", pid=dead_pid())
    running = atomic._temporary_path(out / "photo5.png")  # this process's, still running
    for path in (stale, running):
        with open(path, "wb") as stream:
            stream.write(b"half a PNG")
    capsys.readouterr()

    code = main("immunize", batch, "--out", out, "--model", model_dir, "--skip-existing",
                "--json")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    status = {os.path.basename(r["input"]): r["status"] for r in report["files"]}
    assert status == {f"photo{i}.png": "ok" if i == 3 else "skipped" for i in range(BATCH)}
    assert report["summary"]["skipped"] == BATCH - 1 and report["summary"]["failed"] == 0
    assert report["summary"]["removed_temporary_files"] == 1
    assert f"removed 1 temporary file(s) left by interrupted runs in {out}" in captured.err
    assert os.path.exists(running) and not os.path.exists(stale)
    os.remove(running)
    assert contents(out) == reference
    for name, before in kept.items():  # skipped photos are not rewritten
        after = os.stat(out / name)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    # Nothing left to do: no model is loaded, and the summary says why nothing was written.
    monkeypatch.setattr(cli_batch, "load_model", no_model)
    assert main("immunize", batch, "--out", out, "--skip-existing") == 0
    assert (f"immunized 0 of {BATCH} file(s) into {out} ({BATCH} skipped: their outputs "
            "exist)") in capsys.readouterr().out


def test_skip_existing_and_force_exclude_each_other(batch, tmp_path, capsys):
    for command in (["immunize", batch], ["verify", batch], ["recover", batch],
                    ["tamper", batch / "photo0.png"]):
        with pytest.raises(SystemExit) as stopped:
            main(*command, "--out", tmp_path, "--force", "--skip-existing")
        assert stopped.value.code == cli.EXIT_BAD_INPUT
        assert "not allowed with argument --force" in capsys.readouterr().err
    assert main("verify", batch, "--skip-existing") == cli.EXIT_BAD_INPUT
    assert "--skip-existing needs --out" in capsys.readouterr().err


def test_resumed_verify_keeps_the_exit_code(received, model_dir, one_model, tmp_path,
                                            capsys, monkeypatch):
    results = tmp_path / "results"
    # The first run was interrupted after the tampered photo.
    assert main("verify", received / "tampered.png", "--out", results,
                "--model", model_dir) == cli.EXIT_TAMPERED
    capsys.readouterr()
    code = main("verify", received, "--out", results, "--model", model_dir, "--skip-existing",
                "--json")
    report = json.loads(capsys.readouterr().out)
    assert code == report["exit_code"] == cli.EXIT_TAMPERED
    records = {os.path.basename(r["input"]): r for r in report["files"]}
    assert records["tampered.png"]["status"] == "skipped"
    assert records["tampered.png"]["verdict"] == "tampered"
    assert records["tampered.png"]["outputs"]["json"] == str(results / "tampered.json")
    assert (records["intact.png"]["status"], records["intact.png"]["verdict"]) == ("ok",
                                                                                  "intact")
    assert {key: report["summary"][key] for key in ("intact", "tampered", "skipped")} == {
        "intact": 1, "tampered": 1, "skipped": 1}

    # Everything there already: the verdicts all come from the reports, without a model.
    with monkeypatch.context() as patch:
        patch.setattr(cli_batch, "load_model", no_model)
        code = main("verify", received, "--out", results, "--skip-existing")
    assert code == cli.EXIT_TAMPERED
    out = capsys.readouterr().out
    assert ("verified 0 of 2 file(s), 2 skipped (verdicts from their reports): 1 intact, "
            "1 tampered, 0 not immunized, 0 failed") in out
    assert f"{received / 'tampered.png'}: tampered (" in out

    # Incomplete outputs (an overlay missing, a broken mask left by something else) and an
    # unreadable report: both photos are verified again and all their outputs replaced.
    os.remove(results / "intact.overlay.png")
    (results / "intact.mask.png").write_bytes(b"not a PNG")
    (results / "tampered.json").write_text("{cut short")
    code = main("verify", received, "--out", results, "--model", model_dir, "--skip-existing",
                "--json")
    report = json.loads(capsys.readouterr().out)
    assert code == cli.EXIT_TAMPERED
    assert [r["status"] for r in report["files"]] == ["ok", "ok"]
    assert not imuge_io.read_image(results / "intact.mask.png").any()
    assert imuge_io.read_image(results / "intact.overlay.png").shape == (64, 64, 3)
    assert json.loads((results / "tampered.json").read_text())["verdict"] == "tampered"
    assert leftovers(results) == []


def test_full_disk_during_verify_leaves_none_of_that_photos_outputs(
        received, model_dir, one_model, tmp_path, capsys, monkeypatch):
    results = tmp_path / "results"
    # The disk is full (simulated) when intact.png's report, its third output, is placed.
    with monkeypatch.context() as patch:
        fail_placing(patch, "intact.json")
        code = main("verify", received, "--out", results, "--model", model_dir)
    captured = capsys.readouterr()
    assert code == cli.EXIT_BAD_INPUT
    assert test_cli.error_lines(captured.err) == [
        f"error: {results / 'intact.json'}: cannot write (No space left on device)"]
    assert sorted(os.listdir(results)) == ["tampered.json", "tampered.mask.png",
                                           "tampered.overlay.png"]
    # The retry needs no --force: there is nothing of intact.png to overwrite.
    assert main("verify", received / "intact.png", "--out", results,
                "--model", model_dir) == cli.EXIT_OK
    assert len(os.listdir(results)) == 6


def test_tamper_and_recover_skip_existing(received, model_dir, one_model, tmp_path, capsys):
    photo = received / "intact.png"
    out, masks = tmp_path / "tampers", tmp_path / "tampers-masks"
    assert main("tamper", photo, "--out", out, "--kind", "donor", "--seed", "3") == 0
    donor = os.stat(out / "intact.donor.png")
    # Only one kind of the six is there: the photo is redone as a whole, that one replaced.
    assert main("tamper", photo, "--out", out, "--kind", "all", "--seed", "3",
                "--skip-existing") == 0
    assert len(os.listdir(out)) == len(os.listdir(masks)) == len(cli.TAMPER_KINDS)
    again = os.stat(out / "intact.donor.png")
    assert again.st_ino != donor.st_ino
    capsys.readouterr()
    assert main("tamper", photo, "--out", out, "--kind", "all", "--skip-existing",
                "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files"][0]["status"] == "skipped"
    assert [entry["kind"] for entry in report["files"][0]["outputs"]] == list(cli.TAMPER_KINDS)
    assert os.stat(out / "intact.donor.png").st_ino == again.st_ino
    # A missing true mask is an incomplete photo too: redone.
    os.remove(masks / "intact.clone.true-mask.png")
    assert main("tamper", photo, "--out", out, "--kind", "all", "--seed", "3",
                "--skip-existing") == 0
    assert (masks / "intact.clone.true-mask.png").is_file()
    assert os.stat(out / "intact.donor.png").st_ino != again.st_ino

    restored = tmp_path / "restored"
    assert main("recover", received, "--out", restored, "--model", model_dir) == 0
    os.remove(restored / "intact.recovered.png")
    capsys.readouterr()
    assert main("recover", received, "--out", restored, "--model", model_dir,
                "--skip-existing", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert {os.path.basename(r["input"]): r["status"] for r in report["files"]} == {
        "intact.png": "ok", "tampered.png": "skipped"}
    assert len(os.listdir(restored)) == 2


# The batch below runs `imuge immunize` in a child whose fsync sleeps a little, so that the
# SIGKILL lands while an output is between its temporary file and its place (where the kill
# leaves a temporary file behind); the child is otherwise the real command.
SLOWED_IMMUNIZE = """
import os, sys, time
from imuge_tf import cli
real_fsync = os.fsync
def fsync(handle):
    time.sleep(0.25)
    real_fsync(handle)
os.fsync = fsync
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_batch_killed_with_sigkill_resumes_to_the_uninterrupted_outputs(
        batch, reference, model_dir, tmp_path):
    out = tmp_path / "out"
    log = open(tmp_path / "stderr.txt", "wb")
    child = subprocess.Popen(
        [sys.executable, "-c", SLOWED_IMMUNIZE, "immunize", str(batch), "--out", str(out),
         "--model", str(model_dir)], env=test_cli.ENV, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 240
    while True:
        names = os.listdir(out) if out.is_dir() else []
        if (sum(not name.startswith(".") for name in names) >= 2
                and any(name.endswith(".partial") for name in names)):
            break
        assert child.poll() is None, (tmp_path / "stderr.txt").read_text()
        assert time.monotonic() < deadline, "the batch wrote nothing"
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=60) == -signal.SIGKILL
    log.close()
    left = leftovers(out)
    assert left and all(name.endswith(".partial") for name in left)
    present = sorted(name for name in os.listdir(out) if not name.startswith("."))
    assert 2 <= len(present) < BATCH
    for name in present:  # whatever was placed before the kill is whole
        assert contents(out)[name] == reference[name]

    result = test_cli.imuge("immunize", batch, "--out", out, "--model", model_dir,
                            "--skip-existing", "--json")
    assert result.returncode == 0, result.stderr
    assert (f"removed {len(left)} temporary file(s) left by interrupted runs in {out}"
            in result.stderr)
    report = json.loads(result.stdout)
    status = {os.path.basename(r["input"]): r["status"] for r in report["files"]}
    assert status == {name: "skipped" if name in present else "ok" for name in reference}
    assert contents(out) == reference  # identical to the uninterrupted run, nothing else
    for name in reference:
        assert imuge_io.read_image(out / name).shape == (64, 64, 3)
