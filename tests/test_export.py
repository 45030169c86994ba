"""`imuge export`: the camera model (the whole immunization), the TFLite encoder (fp32, fp16,
dynamic range, int8 when it holds), the encoder SavedModel and the export layout, on a small
untrained smoke model.

The smoke model's encoder head is scaled down so that its residual is a few 8-bit levels, as a
trained encoder's is (an untrained one adds ~100 levels, which no quantization test means
anything for). The export runs once, through `imuge export` in this process.
"""

import contextlib
import io
import json
import os
import re
import shutil

import numpy as np
import pytest

from imuge_tf import cli
from imuge_tf import export as ex

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESIDUAL_SCALE = 0.02  # head kernel factor: residual RMS of a few levels
CAMERA = (96, 64)  # width, height of the exported camera model


@pytest.fixture(scope="module")
def small_model(untrained_model_dir, tmp_path_factory):
    """A copy of the untrained smoke model whose encoder adds a residual of a few levels."""
    from imuge_tf.inference import Imuge

    folder = tmp_path_factory.mktemp("small") / "inference"
    shutil.copytree(untrained_model_dir, folder)
    imuge = Imuge.load(str(folder))
    head = imuge.encoder.get_layer("encoder_head")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * RESIDUAL_SCALE, np.zeros_like(bias)])
    imuge.encoder.save(folder / "encoder.keras")
    return str(folder)


@pytest.fixture(scope="module")
def exported(small_model, tmp_path_factory):
    """`imuge export --json` run once: (exit code, JSON report, output folder)."""
    out = tmp_path_factory.mktemp("export") / "deploy"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(["export", "--out", str(out), "--model", small_model, "--json",
                         "--camera-size", f"{CAMERA[0]}x{CAMERA[1]}"])
    return code, json.loads(stdout.getvalue()), str(out)


@pytest.fixture(scope="module")
def imuge(small_model):
    from imuge_tf.inference import Imuge

    return Imuge.load(small_model)


def working_images(imuge, count=4):
    """Bundled photos as the encoder sees them: 1 x S x S x 3 floats."""
    return ex.representative_images(imuge.image_size, count=count)


@pytest.mark.slow
def test_layout_manifest_and_report(exported):
    code, report, out = exported
    assert code == 0 and report["exit_code"] == 0
    manifest = report["manifest"]
    with open(os.path.join(out, ex.MANIFEST)) as handle:
        assert json.load(handle) == json.loads(json.dumps(manifest))
    size = manifest["image_size"]
    encoder = manifest["encoder"]
    assert encoder["input"] == {"name": "image", "shape": [1, size, size, 3],
                                "dtype": "float32", "range": [0.0, 1.0]}
    assert encoder["output"]["name"] == "residual"
    for variant in ("fp32", "fp16"):
        record = encoder["tflite"][variant]
        assert os.path.getsize(os.path.join(out, record["file"])) == record["bytes"]
    # Dynamic-range weights pass the parity gate on the trained model (BENCHMARKS.md); on this
    # random-weight model the gate may withhold them, and then it must say why.
    if "dynamic" in encoder["tflite"]:
        record = encoder["tflite"]["dynamic"]
        assert os.path.getsize(os.path.join(out, record["file"])) == record["bytes"]
    else:
        assert encoder["withheld"]["dynamic"]["reason"]
    # Full int8 is either shipped with its parity or withheld with the reason.
    if "int8" in encoder["tflite"]:
        error = encoder["tflite"]["int8"]["residual_error"]
        assert ex.residual_gate("int8", error)[0]
    else:
        assert encoder["withheld"]["int8"]["reason"]
        assert not os.path.exists(os.path.join(out, "encoder", "encoder_int8.tflite"))
    camera = manifest["camera"]
    width, height = CAMERA
    assert camera["input"] == {"name": "photo", "shape": [1, height, width, 3],
                               "dtype": "uint8"}
    assert camera["output"]["name"] == "immunized" and camera["output"]["dtype"] == "uint8"
    assert os.path.getsize(os.path.join(out, camera["file"])) == camera["bytes"]
    assert camera["parity"]["max_levels"] <= ex.CAMERA_MAX_LEVELS
    for path in ("camera/saved_model/saved_model.pb",
                 "encoder/saved_model/saved_model.pb", "serving/models.config",
                 "serving/batching_parameters.txt", "serving/imuge/1/saved_model.pb",
                 "serving/imuge/1/assets.extra/tf_serving_warmup_requests"):
        assert os.path.isfile(os.path.join(out, path)), path
    # Nothing half-written is left next to the export.
    assert os.listdir(os.path.dirname(out)) == ["deploy"]


@pytest.mark.slow
def test_existing_export_needs_force_and_foreign_folders_are_kept(exported, small_model,
                                                                  tmp_path, capsys):
    _, _, out = exported
    code = cli.main(["export", "--out", out, "--model", small_model])
    assert code == 2 and "--force" in capsys.readouterr().err
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.png").write_bytes(b"precious")
    code = cli.main(["export", "--out", str(foreign), "--model", small_model, "--force"])
    assert code == 2 and "holds no earlier export" in capsys.readouterr().err
    assert (foreign / "holiday.png").read_bytes() == b"precious"


@pytest.mark.slow
def test_tflite_contract_and_builtin_ops(exported, imuge):
    _, report, out = exported
    size = imuge.image_size
    for variant, record in report["manifest"]["encoder"]["tflite"].items():
        path = os.path.join(out, record["file"])
        runner = ex.TFLiteEncoder(path)
        assert runner.shape == (1, size, size, 3)
        assert runner.input["dtype"] == np.float32 and runner.output["dtype"] == np.float32
        signatures = runner.interpreter.get_signature_list()
        assert signatures == {"serving_default": {"inputs": ["image"],
                                                  "outputs": ["residual"]}}
        ops = ex.tflite_ops(path)
        assert record["ops"] == ops
        assert "CONV_2D" in ops
        assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], variant


@pytest.mark.slow
def test_tflite_residuals_match_keras(exported, imuge):
    _, report, out = exported
    tflite = report["manifest"]["encoder"]["tflite"]
    images = working_images(imuge)
    expected = np.concatenate([np.asarray(imuge.pipeline.encoder(x, training=False))
                               for x in images])
    # A residual of a few levels, so "a few levels" of error would be visible.
    assert 1.0 < np.sqrt(np.mean((expected * 255) ** 2)) < 20.0
    for variant, tolerance in (("fp32", 3e-5), ("fp16", 2 / 255), ("dynamic", 4 / 255)):
        runner = ex.TFLiteEncoder(os.path.join(out, tflite[variant]["file"]))
        got = np.concatenate([runner(x) for x in images])
        error = np.abs(got - expected)
        assert error.max() <= tolerance, (variant, error.max() * 255)
        assert tflite[variant]["residual_error"]["max_levels"] <= tolerance * 255


@pytest.mark.slow
def test_camera_model_immunizes_like_the_facade(exported, imuge, photos):
    from imuge_tf.io import cover

    _, report, out = exported
    path = os.path.join(out, report["manifest"]["camera"]["file"])
    camera = ex.TFLiteCamera(path)
    width, height = CAMERA
    assert camera.shape == (1, height, width, 3)
    assert camera.input["dtype"] == np.uint8 and camera.output["dtype"] == np.uint8
    assert camera.interpreter.get_signature_list() == {
        "serving_default": {"inputs": ["photo"], "outputs": ["immunized"]}}
    assert not [op for op in ex.tflite_ops(path) if op.startswith("Flex") or op == "CUSTOM"]
    photo = cover(photos["coffee"], height, width)
    by_facade = imuge.immunize(photo).astype(np.int16)
    by_camera = camera(photo).astype(np.int16)
    assert by_camera.shape == photo.shape
    assert np.abs(by_camera - by_facade).max() <= 1
    # The immunization really is there: the photo changed.
    assert np.mean(by_camera != photo) > 0.3
    # The camera SavedModel (what the TFLite file was converted from) is the same graph: at
    # most the final rounding of a float sum differs.
    import tensorflow as tf

    saved = tf.saved_model.load(os.path.join(out, "camera", "saved_model"))
    by_saved = saved.signatures["serving_default"](photo=tf.constant(photo[None]))
    by_saved = by_saved["immunized"].numpy()[0].astype(np.int16)
    assert np.abs(by_saved - by_facade).max() <= 1
    assert np.mean(by_saved == by_facade) > 0.999
    with pytest.raises(ValueError, match="96x64"):
        camera(photos["coffee"])


@pytest.mark.slow
def test_encoder_saved_model_matches_keras(exported, imuge):
    import tensorflow as tf

    _, _, out = exported
    loaded = tf.saved_model.load(os.path.join(out, "encoder", "saved_model"))
    serve = loaded.signatures["serving_default"]
    image = working_images(imuge, count=1)[0]
    got = serve(image=tf.constant(image))["residual"].numpy()
    np.testing.assert_allclose(got, imuge.encoder(image, training=False), atol=1e-5)


@pytest.mark.slow
def test_non_builtin_op_fails_loudly(tmp_path):
    import tensorflow as tf

    module = tf.Module()
    module.encode = tf.function(
        lambda image: {"residual": tf.math.cumprod(image, axis=1)},
        input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32, name="image")])
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.encode})
    with pytest.raises(ex.ExportError, match="Cumprod"):
        ex.convert_saved_model(str(tmp_path), "fp32")


def test_parity_gate_rejects_a_residual_eraser():
    ok, _ = ex.residual_gate("fp16", {"max_levels": 1.0, "rms_levels": 0.3,
                                      "residual_rms_levels": 3.0})
    assert ok
    ok, reason = ex.residual_gate("int8", {"max_levels": 30.0, "rms_levels": 7.0,
                                           "residual_rms_levels": 3.0})
    assert not ok and "30.00" in reason
    ok, reason = ex.residual_gate("fp32", {"max_levels": 0.5, "rms_levels": 0.1,
                                           "p99_levels": 0.0, "residual_rms_levels": 3.0})
    assert not ok and "broken conversion" in reason


def test_export_readme_names_only_commands_and_flags_that_exist():
    """export/README.md's `imuge` commands parse, and every flag it names in code is one."""
    from test_docs import named_commands, problems_with

    from imuge_tf.cli import parser as cli_parser

    with open(os.path.join(REPO, "export", "README.md")) as handle:
        text = handle.read()
    commands = named_commands(text)
    assert {tokens[1] for tokens in commands if len(tokens) > 1} >= {"export", "serve", "verify"}
    assert problems_with(commands) == []
    parser = cli.build_parser()
    known = set(parser._option_string_actions)
    for command in cli_parser.subcommands(parser).values():
        known |= set(command._option_string_actions)
    named = set(re.findall(r"`(--[a-z][a-z0-9-]*)", text))
    assert {"--no-int8", "--camera-size", "--max-body-mb"} <= named
    assert named <= known, sorted(named - known)


def test_no_int8_skips_only_full_int8():
    # `imuge export --no-int8` is about full int8's slow calibration; dynamic range needs none.
    assert ex.encoder_variants() == ("fp32", "fp16", "dynamic", "int8")
    assert ex.encoder_variants(int8=False) == ("fp32", "fp16", "dynamic")
    assert set(ex.REQUIRED_VARIANTS) <= set(ex.encoder_variants(int8=False))


def test_camera_parity_gate_counts_pixels_beyond_one_level(imuge, photos):
    class Shifted:
        """A camera that is `offset` levels off the facade on the first `rows` rows."""

        shape = (1, 32, 48, 3)

        def __init__(self, offset, rows):
            self.offset, self.rows = offset, rows

        def __call__(self, photo):
            out = imuge.immunize(photo).astype(np.int16)
            out[:self.rows] += self.offset
            return np.clip(out, 0, 255).astype(np.uint8)

    assert ex.camera_parity(imuge, Shifted(1, 32), [photos["coffee"]])["holds"]
    drifted = ex.camera_parity(imuge, Shifted(2, 1), [photos["coffee"]])
    assert not drifted["holds"] and drifted["max_levels"] == 2


@pytest.mark.slow
def test_repository_copies_of_the_serving_configs(exported):
    _, _, out = exported
    for name in ("models.config", "batching_parameters.txt"):
        with open(os.path.join(REPO, "export", name)) as handle:
            repository = handle.read()
        with open(os.path.join(out, "serving", name)) as handle:
            assert handle.read() == repository, name
