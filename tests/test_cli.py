"""The `imuge` command, run as a user runs it: `python -m imuge_tf.cli ...` in a subprocess
(those tests are marked slow), and in-process through `cli.main` where no new process is needed.

The model is a real Imuge folder (encoder.keras, verifier.keras, decoder.keras, imuge.json)
loaded by the real `Imuge.load`, but with hand-set 1x1-convolution networks instead of trained
ones, so that verdicts are known in advance: the encoder adds a constant residual of about
+2.5 levels, the verifier flags saturated red pixels only, the decoder paints mid-grey. A
trained smoke model would give arbitrary verdicts.

Each subprocess that loads a model costs a TensorFlow import, so the exit codes that need no
new subprocess are checked in-process.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

import fake_photos
import numpy as np
import pytest
from PIL import Image

from imuge_tf import cli
from imuge_tf.cli import batch as cli_batch
from imuge_tf.cli import parser as cli_parser
from imuge_tf.cli import quiet
from imuge_tf.cli.model_commands import DEMO_MARKER
from imuge_tf.pipeline import RECOVERY_MARGIN

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
SIZE = 64  # photos on disk
WORKING = 32  # the fake model's image_size
RED_SQUARE = (slice(16, 48), slice(16, 48))


def imuge(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "imuge_tf.cli", *map(str, args)],
                          capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def calm_photo(seed=0):
    return fake_photos.calm_photo(SIZE, SIZE, seed)


def with_red_square(image):
    return fake_photos.with_red_square(image, RED_SQUARE)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    import keras

    folder = tmp_path_factory.mktemp("model")

    def one_by_one(inputs, channels, kernel, bias, activation, name):
        layer = keras.layers.Conv2D(channels, 1, activation=activation, name=name)
        outputs = layer(inputs)
        layer.set_weights([np.asarray(kernel, np.float32).reshape(1, 1, -1, channels),
                           np.asarray(bias, np.float32)])
        return outputs

    image = keras.Input((WORKING, WORKING, 3), name="image")
    residual = one_by_one(image, 3, np.zeros((3, 3)), [0.01] * 3, "tanh", "residual")
    keras.Model(image, residual).save(folder / "encoder.keras")
    # p = sigmoid(20 (r - g - b) - 10): about 1 for pure red, about 0 for the calm photos.
    probability = one_by_one(image, 1, [20.0, -20.0, -20.0], [-10.0], "sigmoid", "tamper")
    keras.Model(image, probability).save(folder / "verifier.keras")
    rectified = keras.Input((WORKING, WORKING, 3), name="rectified")
    mask = keras.Input((WORKING, WORKING, 1), name="mask")
    joined = keras.layers.Concatenate(name="joined")([rectified, mask])
    recovered = one_by_one(joined, 3, np.zeros((4, 3)), [0.0] * 3, "sigmoid", "recovered")
    keras.Model([rectified, mask], recovered).save(folder / "decoder.keras")
    (folder / "imuge.json").write_text(json.dumps(
        {"format_version": 1, "image_size": WORKING, "step": 0,
         "config": {"model": {"image_size": WORKING}}}))
    return folder


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """Good photos in three formats (one in a subfolder), a corrupt and an empty file."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    Image.fromarray(calm_photo(0)).save(root / "calm.png")
    Image.fromarray(calm_photo(1)).save(root / "second.bmp")
    Image.fromarray(calm_photo(2)).save(root / "sub" / "third.tiff")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))
    (root / "empty.png").write_bytes(b"")
    return root


@pytest.fixture(scope="session")
def immunized(photos, tmp_path_factory, model_dir):
    """`imuge immunize` on the whole folder, with --json: (result, out folder)."""
    out = tmp_path_factory.mktemp("immunized")
    result = imuge("immunize", photos, "--out", out, "--model", model_dir, "--json")
    return result, out


@pytest.mark.slow
def test_help_is_fast_and_documents_exit_codes():
    result = imuge("--help")
    assert result.returncode == 0
    for line in ("0    success", "1    verify: at least one photo is tampered",
                 "3    verify: at least one photo is not immunized"):
        assert line in result.stdout
    for command in ("immunize", "verify", "recover", "tamper", "evaluate", "demo", "train"):
        assert command in result.stdout
    # Neither parsing nor a command's --help imports TensorFlow or Keras.
    for code in ("cli.build_parser().parse_args(['verify', 'x'])",
                 "cli.main(['verify', '--help'])"):
        probe = subprocess.run(
            [sys.executable, "-c", "import contextlib, io, sys; from imuge_tf import cli\n"
             "with contextlib.redirect_stdout(io.StringIO()), "
             f"contextlib.suppress(SystemExit): {code}\n"
             "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"],
            capture_output=True, text=True, env=ENV, timeout=120)
        assert probe.stdout.strip() == "[]", (code, probe.stderr)


def _help(parser):
    return parser.format_help()


def test_every_command_has_a_short_complete_help():
    parser = cli.build_parser()
    top = _help(parser)
    assert top.count("0    success") == 1 and "130  interrupted" in top
    commands = cli_parser.subcommands(parser)
    assert set(commands) == {"train", "immunize", "verify", "recover", "tamper", "evaluate",
                             "demo", "export", "serve"}
    listed = {action.dest: action.help for action in parser._subparsers._group_actions[0]
              ._choices_actions}
    for name, command in commands.items():
        # A one-line description, in the command list and atop its own help.
        assert listed[name] and "\n" not in listed[name], name
        assert command.description == listed[name] and len(command.description) <= 76, name
        text = _help(command)
        # The exit codes are in `imuge --help` only; each command points there in one line.
        assert "0    success" not in text and "130" not in text, name
        assert text.rstrip().endswith("exit codes: see `imuge --help`"), name
        for action in command._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
    train = cli.build_train_parser()
    assert {a.dest for a in train._actions} == {a.dest for a in commands["train"]._actions}
    assert all(action.help for action in train._actions)


def test_verbose_is_accepted_before_and_after_the_command():
    parser = cli.build_parser()
    assert parser.parse_args(["verify", "x"]).verbose is False
    assert parser.parse_args(["--verbose", "verify", "x"]).verbose is True
    assert parser.parse_args(["verify", "x", "--verbose"]).verbose is True
    assert cli.build_train_parser().parse_args(["--verbose"]).verbose is True


def test_held_back_stderr_is_dropped_on_success_and_replayed_on_failure(capfd):
    with quiet.stderr_held_back():
        os.write(2, b"I0000 cudart_stub.cc: start-up noise\n")
    assert capfd.readouterr().err == ""
    with pytest.raises(ImportError), quiet.stderr_held_back():
        os.write(2, b"the reason the import failed\n")
        raise ImportError("no tensorflow")
    assert capfd.readouterr().err == "the reason the import failed\n"
    os.write(2, b"after\n")  # file descriptor 2 is back where it was
    assert capfd.readouterr().err == "after\n"


TOOL_LINE = re.compile(r"^(warning|error): ")


@pytest.mark.slow
def test_commands_print_no_tensorflow_start_up_lines(photos, model_dir, tmp_path):
    """As a user's shell runs it (no TF_CPP_MIN_LOG_LEVEL, GPUs looked for): only the tool's
    own lines on stderr, unless --verbose."""
    env = {k: v for k, v in ENV.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",
                                                   "CUDA_VISIBLE_DEVICES")}
    command = [sys.executable, "-m", "imuge_tf.cli", "verify", str(photos / "calm.png"),
               "--model", str(model_dir)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == cli.EXIT_NOT_IMMUNIZED, result.stderr
    assert result.stderr.splitlines(), "the demo-key warning is the tool's own: it stays"
    assert all(TOOL_LINE.match(line) for line in result.stderr.splitlines()), result.stderr
    verbose = subprocess.run([*command, "--verbose"], capture_output=True, text=True,
                             env=env, timeout=300)
    assert verbose.returncode == cli.EXIT_NOT_IMMUNIZED
    assert verbose.stdout == result.stdout
    # TensorFlow writes its own lines there; which ones depends on the machine, but it
    # says at least where it looked for a GPU or how its logging starts.
    assert not all(TOOL_LINE.match(line) for line in verbose.stderr.splitlines()), (
        verbose.stderr)


@pytest.mark.slow
def test_immunize_folder_skips_bad_files(immunized, photos, model_dir):
    result, out = immunized
    assert result.returncode == 2, result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 2, result.stderr
    assert any("corrupt.jpg" in line for line in errors)
    assert any("empty.png" in line and "empty file" in line for line in errors)
    assert "Traceback" not in result.stderr

    report = json.loads(result.stdout)
    assert report["command"] == "immunize" and report["exit_code"] == 2
    assert report["summary"]["failed"] == 2
    status = {os.path.basename(r["input"]): r["status"] for r in report["files"]}
    assert status == {"calm.png": "ok", "second.bmp": "ok", "third.tiff": "ok",
                      "corrupt.jpg": "failed", "empty.png": "failed"}

    written = sorted(os.path.relpath(os.path.join(d, f), out)
                     for d, _, files in os.walk(out) for f in files)
    assert written == ["calm.png", "second.png", os.path.join("sub", "third.png")]
    # The file holds exactly what the Python API makes: the fake encoder's tanh(0.01) = 2.55
    # levels everywhere, plus the block mark's few levels of zero mean.
    from imuge_tf.inference import Imuge

    original = np.asarray(Image.open(photos / "calm.png"))
    protected = np.asarray(Image.open(out / "calm.png"))
    np.testing.assert_array_equal(protected, Imuge.load(str(model_dir)).immunize(original))
    assert 2.0 <= np.mean(protected.astype(np.int16) - original) <= 3.0


@pytest.mark.slow
def test_existing_outputs_and_lossy_formats_are_refused(immunized, photos, model_dir):
    _, out = immunized
    before = (out / "calm.png").read_bytes()
    start = time.monotonic()
    result = imuge("immunize", photos / "calm.png", photos / "second.bmp", "--out", out,
                   "--model", model_dir)
    assert result.returncode == 2
    errors = error_lines(result.stderr)
    assert len(errors) == 2 and all("already exists" in line for line in errors)
    assert "immunized 0 of 2 file(s)" in result.stdout
    assert (out / "calm.png").read_bytes() == before
    # Refused before any model is loaded: no TensorFlow import.
    assert time.monotonic() - start < 8

    lossy = out.parent / "lossy"
    result = imuge("immunize", photos / "calm.png", "--out", lossy, "--format", "jpg",
                   "--model", model_dir)
    assert result.returncode == 2
    assert "lossy" in result.stderr and "immunization" in result.stderr
    assert not lossy.exists()

    # An output may never replace an input, not even with --force.
    result = imuge("immunize", photos / "calm.png", "--out", photos, "--force",
                   "--model", model_dir)
    assert result.returncode == 2 and "would overwrite an input" in result.stderr


@pytest.mark.slow
def test_missing_model_and_inputs_are_one_line_errors(photos, tmp_path):
    result = imuge("verify", photos / "calm.png", "--model", tmp_path / "nowhere", "--json")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(error_lines(result.stderr)) == 1 and "nowhere" in result.stderr
    assert json.loads(result.stdout)["exit_code"] == 2

    result = imuge("verify", tmp_path / "missing.png")
    assert result.returncode == 2 and "no such file or folder" in result.stderr
    assert imuge("verify").returncode == 2  # argparse: INPUT is required


@pytest.mark.slow
def test_verify_finds_tampered_and_not_immunized(immunized, model_dir, tmp_path):
    _, out = immunized
    received = tmp_path / "received"
    received.mkdir()
    protected = np.asarray(Image.open(out / "calm.png"))
    Image.fromarray(protected).save(received / "intact.png")
    Image.fromarray(with_red_square(protected)).save(received / "tampered.png")
    Image.fromarray(np.full((SIZE, SIZE, 3), (255, 0, 0), np.uint8)).save(
        received / "red.png")
    results = tmp_path / "results"

    result = imuge("verify", received, "--out", results, "--model", model_dir, "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    verdicts = {os.path.basename(r["input"]): r["verdict"] for r in report["files"]}
    assert verdicts == {"intact.png": "intact", "tampered.png": "tampered",
                        "red.png": "not_immunized"}
    assert report["summary"]["tampered"] == 1

    for name in ("intact", "tampered", "red"):
        for suffix in (".mask.png", ".overlay.png", ".json"):
            assert (results / f"{name}{suffix}").is_file()
    mask = np.asarray(Image.open(results / "tampered.mask.png")) > 127
    truth = np.zeros((SIZE, SIZE), bool)
    truth[RED_SQUARE] = True
    assert (mask & truth).sum() / (mask | truth).sum() > 0.8
    assert not np.asarray(Image.open(results / "intact.mask.png")).any()
    saved = json.loads((results / "tampered.json").read_text())
    assert saved["verdict"] == "tampered" and saved["input"].endswith("tampered.png")

    # In-process (the same code path as the command): the other exit codes.
    assert cli.main(["verify", str(received / "intact.png"), "--model", str(model_dir)]) == 0
    assert cli.main(["verify", str(received / "intact.png"), str(received / "red.png"),
                     "--model", str(model_dir)]) == 3
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    assert cli.main(["verify", str(received / "tampered.png"), str(broken),
                     "--model", str(model_dir)]) == 2


def test_verify_exit_code_rules():
    assert cli.verify_exit_code(["intact", "intact"], 0) == 0
    assert cli.verify_exit_code(["intact", "tampered", "not_immunized"], 0) == 1
    assert cli.verify_exit_code(["not_immunized", "intact"], 0) == 3
    assert cli.verify_exit_code(["tampered"], 1) == 2
    assert cli.verify_exit_code([], 0) == 2


@pytest.fixture(scope="session")
def protected(photos, model_dir, tmp_path_factory):
    """calm.png immunized in-process by `imuge immunize` (uint8 array)."""
    out = tmp_path_factory.mktemp("protected")
    assert cli.main(["immunize", str(photos / "calm.png"), "--out", str(out),
                     "--model", str(model_dir)]) == 0
    return np.asarray(Image.open(out / "calm.png"))


def test_recover_restores_only_the_tampered_area(protected, model_dir, tmp_path, capsys):
    tampered = with_red_square(protected)
    Image.fromarray(tampered).save(tmp_path / "tampered.png")
    Image.fromarray(protected).save(tmp_path / "intact.png")
    code = cli.main(["recover", str(tmp_path / "tampered.png"), str(tmp_path / "intact.png"),
                     "--out", str(tmp_path / "rec"), "--model", str(model_dir), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert {r["verdict"] for r in report["files"]} == {"tampered", "intact"}
    recovered = np.asarray(Image.open(tmp_path / "rec" / "tampered.recovered.png"))
    # The verifier's mask grown by RECOVERY_MARGIN working-size pixels is redrawn (with the
    # fake decoder's mid-grey), plus up to one more working pixel of resampling; nothing else.
    grown = RECOVERY_MARGIN * SIZE // WORKING
    inner = recovered[16 - grown:48 + grown, 16 - grown:48 + grown].astype(int)
    assert np.abs(inner - 128).max() <= 1
    outside = np.ones((SIZE, SIZE), bool)
    reach = grown + SIZE // WORKING
    outside[16 - reach:48 + reach, 16 - reach:48 + reach] = False
    np.testing.assert_array_equal(recovered[outside], tampered[outside])
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "rec" / "intact.recovered.png")), protected)


def test_lossy_output_when_allowed(photos, model_dir, tmp_path):
    code = cli.main(["immunize", str(photos / "calm.png"), "--out", str(tmp_path),
                     "--format", "jpg", "--allow-lossy", "--model", str(model_dir)])
    assert code == 0
    assert Image.open(tmp_path / "calm.jpg").format == "JPEG"


def test_tamper_writes_every_kind(tmp_path, capsys):
    # A textured photo: on a smooth one, the removal tamper's inpainting is nearly exact.
    original = np.random.default_rng(4).integers(0, 256, (SIZE, 80, 3), dtype=np.uint8)
    Image.fromarray(original).save(tmp_path / "calm.png")
    out = tmp_path / "tampers"
    code = cli.main(["tamper", str(tmp_path / "calm.png"), "--out", str(out), "--kind", "all",
                     "--seed", "5", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    kinds = [entry["kind"] for entry in report["files"][0]["outputs"]]
    assert kinds == list(cli.TAMPER_KINDS)
    # The tampered photos alone in --out; the true masks next to it, in tampers-masks.
    masks = tmp_path / "tampers-masks"
    assert report["summary"]["masks"] == str(masks)
    assert sorted(os.listdir(out)) == sorted(f"calm.{kind}.png" for kind in kinds)
    assert sorted(os.listdir(masks)) == sorted(f"calm.{kind}.true-mask.png" for kind in kinds)
    mask = np.asarray(Image.open(masks / "calm.donor.true-mask.png")) > 127
    assert 0.03 < mask.mean() < 0.5
    assert report["files"][0]["tampered_fraction"] == pytest.approx(mask.mean())
    for kind in kinds:
        tampered = np.asarray(Image.open(out / f"calm.{kind}.png"))
        same_mask = np.asarray(Image.open(masks / f"calm.{kind}.true-mask.png")) > 127
        np.testing.assert_array_equal(same_mask, mask)
        np.testing.assert_array_equal(tampered[~mask], original[~mask])
        assert np.abs(tampered[mask].astype(int) - original[mask]).mean() > 10, kind

    assert cli.main(["tamper", str(tmp_path / "calm.png"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_tamper_takes_folders_and_keeps_masks_out_of_them(tmp_path, capsys):
    photos = tmp_path / "protected"
    (photos / "sub").mkdir(parents=True)
    for index, name in enumerate(("a.png", "b.png", "sub/c.png")):
        Image.fromarray(calm_photo(index)).save(photos / name)
    out, masks = tmp_path / "tampered", tmp_path / "truth"
    code = cli.main(["tamper", str(photos), "--out", str(out), "--masks", str(masks),
                     "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["summary"]["files"] == 3
    assert sorted(os.path.relpath(os.path.join(d, f), out) for d, _, files in os.walk(out)
                  for f in files) == ["a.donor.png", "b.donor.png",
                                      os.path.join("sub", "c.donor.png")]
    assert (masks / "sub" / "c.donor.true-mask.png").is_file()
    # Each photo its own tamper (the case depends on the photo's name), the same on a rerun.
    first = [np.asarray(Image.open(masks / f"{n}.donor.true-mask.png")) for n in ("a", "b")]
    assert not np.array_equal(*first)
    again = tmp_path / "again"
    assert cli.main(["tamper", str(photos / "a.png"), "--out", str(again)]) == 0
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "again-masks" / "a.donor.true-mask.png")), first[0])
    capsys.readouterr()
    # Masks inside the tampered-photo folder would be read by `imuge verify OUT`: refused.
    assert cli.main(["tamper", str(photos), "--out", str(out), "--masks",
                     str(out / "masks"), "--force"]) == 2
    assert "inside --out" in capsys.readouterr().err


def test_tamper_kinds_match_the_attack_layer():
    from imuge_tf.attacks.tamper import TAMPERS

    assert tuple(TAMPERS) == cli.TAMPER_KINDS


def test_evaluate_and_demo_are_wired(photos, model_dir, tmp_path, monkeypatch, capsys):
    from imuge_tf import evaluation

    calls = {}

    def fake_evaluation(imuge, paths, out_dir, *, limit=None, seed=0, quick=False,
                        size=None, progress=True):
        calls["evaluate"] = (imuge.image_size, sorted(map(os.path.basename, paths)), out_dir,
                             limit, seed, quick, size, progress)
        return {"photos": len(paths), "f1": float("nan")}

    monkeypatch.setattr(evaluation, "run_evaluation", fake_evaluation)
    monkeypatch.setattr(evaluation, "format_table", lambda summary: "TABLE\n")
    code = cli.main(["evaluate", "--data", str(photos), "--out", str(tmp_path / "ev"),
                     "--limit", "2", "--quick", "--seed", "7", "--model", str(model_dir),
                     "--size", "48", "--json"])
    assert code == 0
    assert calls["evaluate"] == (WORKING, ["calm.png", "corrupt.jpg", "empty.png",
                                           "second.bmp", "third.tiff"],
                                 str(tmp_path / "ev"), 2, 7, True, 48, False)
    assert json.loads(capsys.readouterr().out)["summary"] == {"photos": 5, "f1": None}
    assert cli.main(["evaluate", "--data", str(tmp_path / "none"), "--out", "x"]) == 2

    from imuge_tf import demo

    monkeypatch.setattr(demo, "run_demo",
                        lambda imuge, out_dir, *, progress=True: {"psnr": 40.0})
    folder = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(folder), "--model", str(model_dir)]) == 0
    assert "psnr: 40" in capsys.readouterr().out
    assert (folder / DEMO_MARKER).is_file()  # the folder is marked as the demo's own
    # Its own earlier output is overwritten; a folder holding anything else needs --force.
    assert cli.main(["demo", "--out", str(folder), "--model", str(model_dir)]) == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "holiday.png").write_bytes(b"someone's file")
    capsys.readouterr()
    assert cli.main(["demo", "--out", str(other), "--model", str(model_dir)]) == 2
    assert "--force" in capsys.readouterr().err
    assert sorted(os.listdir(other)) == ["holiday.png"]  # refused before writing anything
    assert cli.main(["demo", "--out", str(other), "--model", str(model_dir), "--force"]) == 0


def test_failures_inside_a_file_and_bugs(photos, tmp_path, monkeypatch, capsys):
    class Broken:
        image_size = WORKING

        def verify(self, image):
            raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli_batch, "load_model", lambda path: Broken())
    code = cli.main(["verify", str(photos / "calm.png"), str(photos / "second.bmp")])
    assert code == 2
    errors = error_lines(capsys.readouterr().err)
    assert errors == [f"error: {photos / name}: failed (RuntimeError: boom)"
                      for name in ("calm.png", "second.bmp")]

    def crash(path):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli_batch, "load_model", crash)
    assert cli.main(["verify", str(photos / "calm.png")]) == cli.EXIT_BUG
    stderr = capsys.readouterr().err
    assert "Traceback" in stderr and "error: internal error (RuntimeError: a bug)" in stderr


def test_inputs_mirror_folders_and_skip_the_output_folder(tmp_path):
    for name in ("a.png", "sub/b.JPG", "sub/.hidden.png", ".cache/c.png", "out/old.png",
                 "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    files, problems = cli.find_inputs([tmp_path, tmp_path / "a.png", tmp_path / "nope.png"],
                                      exclude=tmp_path / "out")
    assert [(os.path.relpath(p, tmp_path), n) for p, n in files] == [
        ("a.png", "a"), (os.path.join("sub", "b.JPG"), os.path.join("sub", "b"))]
    assert problems == [(tmp_path / "nope.png", f"{tmp_path / 'nope.png'}: no such file or "
                                                "folder")]
