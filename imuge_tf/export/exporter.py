"""`export_model`: every export of a model, checked, written into one folder as a unit."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

from imuge_tf.export.conversion import (
    ENCODER_VARIANTS,
    REQUIRED_VARIANTS,
    TFLiteCamera,
    TFLiteEncoder,
    convert_saved_model,
    representative_images,
    save_camera_model,
    save_encoder,
)
from imuge_tf.export.errors import ExportError
from imuge_tf.export.inspection import nonstock_ops, tflite_ops
from imuge_tf.export.parity import CAMERA_MAX_LEVELS, camera_parity, residual_error, residual_gate
from imuge_tf.export.serving_files import (
    BATCHING_PARAMETERS,
    MODELS_CONFIG,
    SERVING_NAME,
    SERVING_VERSION,
    write_warmup_requests,
)
from imuge_tf.export.serving_graph import save_serving_model

MANIFEST = "manifest.json"


def check_out_dir(out_dir: str, force: bool) -> None:
    """Raises ExportError for an `out_dir` that export_model must not write into: a file,
    a folder that holds something other than an export, or an export without `force`."""
    if not os.path.exists(out_dir):
        return
    if not os.path.isdir(out_dir):
        raise ExportError(f"{out_dir} exists and is not a folder")
    entries = os.listdir(out_dir)
    if not entries:
        return
    if MANIFEST not in entries:
        # Never replace a folder that an export did not make: it may hold anything.
        raise ExportError(f"{out_dir} is not empty and holds no earlier export "
                          f"({MANIFEST}); choose a new or empty folder")
    if not force:
        raise ExportError(f"{out_dir} already holds an export; use --force to replace it")


def encoder_variants(int8: bool = True) -> tuple:
    """The encoder's TFLite variants an export tries, in order: all of them, or without full
    int8 (`int8=False`: its calibration is the slow part; the dynamic range variant needs
    none)."""
    return tuple(variant for variant in ENCODER_VARIANTS if int8 or variant != "int8")


def export_model(imuge, out_dir: str, *, force: bool = False, int8: bool = True,
                 camera_size=None, check_photos=None, progress=None) -> dict:
    """Writes every export of `imuge` under `out_dir` (the layout of the package docstring).

    The working-scale encoder's TFLite variants are checked against the Keras encoder on
    `check_photos` (default: the photos bundled with scikit-image); a variant whose residual
    error fails its gate is not written (fp32 failing is an ExportError); `int8=False` skips
    full int8. With `camera_size` (width, height) the camera model, the whole immunization in
    one graph, is written too and its output checked against `Imuge.immunize` on the same
    photos (within CAMERA_MAX_LEVELS, or an ExportError). The export is built in a temporary
    folder next to `out_dir` and moved into place at the end, so `out_dir` never holds half
    an export.
    """
    from imuge_tf.samples import sample_photos

    say = progress or (lambda message: None)
    out_dir = os.path.abspath(os.fspath(out_dir))
    check_out_dir(out_dir, force)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.partial-", dir=parent)
    try:
        size = imuge.image_size
        photos = list(check_photos) if check_photos is not None else sample_photos()
        manifest = {
            "format_version": 2,
            "source": imuge.source,
            "image_size": size,
            "step": imuge.metadata.get("step"),
            "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "verdict_thresholds": dict(imuge.thresholds),
            "decoder_prefill": imuge.decoder_prefill,
            "residual_gain": imuge.residual_gain,
            "encoder": {"input": {"name": "image", "shape": [1, size, size, 3],
                                  "dtype": "float32", "range": [0.0, 1.0]},
                        "output": {"name": "residual", "shape": [1, size, size, 3],
                                   "dtype": "float32", "range": [-1.0, 1.0]},
                        "saved_model": "encoder/saved_model", "tflite": {}, "withheld": {}},
            "serving": {"model_dir": f"serving/{SERVING_NAME}",
                        "version_dir": f"serving/{SERVING_NAME}/{SERVING_VERSION}",
                        "signatures": ["serving_default", "verify_tensor"]},
        }

        say("encoder: SavedModel")
        encoder_dir = os.path.join(work, "encoder")
        # The network as the pipeline runs it (without a hidden thumbnail's lattice).
        encoder = imuge.pipeline.encoder
        saved = save_encoder(encoder, size, os.path.join(encoder_dir, "saved_model"))
        calibration = representative_images(size, photos=photos)
        checks = calibration[:len(photos)]
        for variant in encoder_variants(int8):
            say(f"encoder: TFLite {variant}")
            try:
                model = convert_saved_model(saved, variant,
                                            calibration if variant == "int8" else None)
            except ExportError as error:
                if variant in REQUIRED_VARIANTS:
                    raise
                manifest["encoder"]["withheld"][variant] = {"reason": str(error)}
                continue
            error = residual_error(encoder, TFLiteEncoder(model), checks)
            ok, reason = residual_gate(variant, error)
            if not ok:
                if variant == "fp32":
                    raise ExportError(f"TFLite fp32 encoder does not match Keras: {reason}")
                manifest["encoder"]["withheld"][variant] = {"reason": reason,
                                                            "residual_error": error}
                continue
            filename = f"encoder_{variant}.tflite"
            with open(os.path.join(encoder_dir, filename), "wb") as handle:
                handle.write(model)
            manifest["encoder"]["tflite"][variant] = {
                "file": f"encoder/{filename}", "bytes": len(model), "ops": tflite_ops(model),
                "residual_error": error}

        if camera_size is not None:
            width, height = camera_size
            say(f"camera: the whole immunization at {width}x{height}")
            camera_dir = os.path.join(work, "camera")
            saved_camera = save_camera_model(imuge, width, height,
                                             os.path.join(camera_dir, "saved_model"))
            model = convert_saved_model(saved_camera, "fp32")
            parity = camera_parity(imuge, TFLiteCamera(model), photos)
            if not parity.pop("holds"):
                raise ExportError(
                    f"the camera model's immunized photos differ from Imuge.immunize by up to "
                    f"{parity['max_levels']} levels (at most {CAMERA_MAX_LEVELS} allowed)")
            filename = f"camera_{width}x{height}.tflite"
            with open(os.path.join(camera_dir, filename), "wb") as handle:
                handle.write(model)
            manifest["camera"] = {
                "file": f"camera/{filename}", "saved_model": "camera/saved_model",
                "bytes": len(model), "ops": tflite_ops(model), "parity": parity,
                "input": {"name": "photo", "shape": [1, height, width, 3], "dtype": "uint8"},
                "output": {"name": "immunized", "shape": [1, height, width, 3],
                           "dtype": "uint8"}}

        say("serving: verifier + decoder SavedModel")
        serving_dir = os.path.join(work, "serving")
        version_dir = os.path.join(serving_dir, SERVING_NAME, str(SERVING_VERSION))
        save_serving_model(imuge, version_dir)
        bad = nonstock_ops(version_dir)
        if bad:
            raise ExportError(f"the serving SavedModel uses ops TF Serving lacks: {bad}")
        write_warmup_requests(version_dir, size)
        with open(os.path.join(serving_dir, "models.config"), "w") as handle:
            handle.write(MODELS_CONFIG)
        with open(os.path.join(serving_dir, "batching_parameters.txt"), "w") as handle:
            handle.write(BATCHING_PARAMETERS)
        with open(os.path.join(work, MANIFEST), "w") as handle:
            json.dump(manifest, handle, indent=2)

        if os.path.exists(out_dir):
            # Checked above: empty, or an earlier export replaced with force.
            shutil.rmtree(out_dir)
        os.replace(work, out_dir)
        os.chmod(out_dir, 0o755 & ~_umask())
    finally:
        if os.path.exists(work):
            shutil.rmtree(work, ignore_errors=True)
    return manifest


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
