"""The encoder and the camera model as SavedModels, their TFLite (LiteRT) conversion with
builtin ops only, the representative images that calibrate full int8, and runners that call
the converted models as the pipeline calls the Keras encoder or `Imuge.immunize`.
"""

from __future__ import annotations

import os

import numpy as np

from imuge_tf.export.errors import ExportError

ENCODER_VARIANTS = ("fp32", "fp16", "dynamic", "int8")
REQUIRED_VARIANTS = ("fp32", "fp16")
CALIBRATION_SAMPLES = 32  # representative images for full int8


# ---------------------------------------------------------------------------------------------
# The working-scale encoder


def _encoder_archive(encoder, image_size: int):
    """A keras ExportArchive of the encoder: serving_default, image 1xSxSx3 -> residual."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(encoder)

    def encode(image):
        return {"residual": encoder(image, training=False)}

    archive.add_endpoint(
        "serving_default", encode,
        input_signature=[tf.TensorSpec([1, image_size, image_size, 3], tf.float32,
                                       name="image")])
    return archive


def save_encoder(encoder, image_size: int, path: str) -> str:
    """Writes the encoder as a SavedModel (the source of every TFLite conversion)."""
    _encoder_archive(encoder, image_size).write_out(path, verbose=False)
    return path


def representative_images(image_size: int, count: int = CALIBRATION_SAMPLES, photos=None):
    """Working-size float images for int8 calibration: the bundled photos, whole and cropped,
    flipped, as the encoder sees them (1 x S x S x 3 in [0, 1])."""
    import tensorflow as tf

    from imuge_tf.samples import sample_photos

    photos = list(photos) if photos is not None else sample_photos()
    rng = np.random.default_rng(0)
    images = []
    for index in range(count):
        photo = photos[index % len(photos)]
        height, width = photo.shape[:2]
        if index >= len(photos):  # a random crop of 40-100 % of the shorter side
            side = int(min(height, width) * rng.uniform(0.4, 1.0))
            top = rng.integers(0, height - side + 1)
            left = rng.integers(0, width - side + 1)
            photo = photo[top:top + side, left:left + side]
            if rng.random() < 0.5:
                photo = photo[:, ::-1]
        x = tf.convert_to_tensor(np.ascontiguousarray(photo)[None], tf.float32) / 255.0
        images.append(np.asarray(tf.image.resize(x, (image_size, image_size),
                                                 method="bilinear", antialias=True)))
    return images


def convert_saved_model(saved_model_dir: str, variant: str, representative=None) -> bytes:
    """A TFLite flatbuffer of the SavedModel's serving_default, builtin ops only.

    `variant`: "fp32", "fp16" (float16 weights), "dynamic" (int8 weights, float activations)
    or "int8" (int8 weights and activations, float32 input and output; needs `representative`,
    a list of input arrays). An op without a TFLite builtin kernel raises ExportError: the
    converter is not allowed to fall back to Flex (TF) ops, which cameras do not have.
    """
    import tensorflow as tf

    if variant not in ENCODER_VARIANTS:
        raise ValueError(f"unknown variant '{variant}'; expected one of {ENCODER_VARIANTS}")
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=["serving_default"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "int8":
        if not representative:
            raise ValueError("full int8 needs representative images")
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.representative_dataset = lambda: ([image] for image in representative)
    try:
        return converter.convert()
    except Exception as error:  # noqa: BLE001 - the converter raises several error types
        raise ExportError(f"TFLite conversion ({variant}) failed with builtin ops only: "
                          f"{_conversion_problem(str(error))}") from error


def _conversion_problem(text: str) -> str:
    """The converter's reason in one line: the ops that have no builtin kernel, if named."""
    import re

    select = re.search(r"TF Select ops: ([^\n]+)", text)
    if select:
        return (f"ops without a TFLite builtin kernel: {select.group(1).strip()} (Flex / TF "
                "Select ops are not allowed: cameras run builtin ops only)")
    named = sorted(set(re.findall(r"'(tf\.\w+)' op is neither a custom op nor a flex op",
                                  text)))
    if named:
        return f"ops without a TFLite builtin kernel: {', '.join(named)}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"


def _interpreter(model, num_threads=None):
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(model, (bytes, bytearray)):
        interpreter = Interpreter(model_content=bytes(model), num_threads=num_threads)
    else:
        interpreter = Interpreter(model_path=os.fspath(model), num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


class TFLiteEncoder:
    """A TFLite encoder that can stand in for the Keras one (`Imuge(encoder=...)`).

    Called on a batch of N x S x S x 3 float images, it runs the interpreter once per image
    (the TFLite model has a fixed batch of 1) and returns the residuals as a numpy array.
    Not thread-safe (one interpreter).
    """

    def __init__(self, model, num_threads=None):
        self.interpreter = _interpreter(model, num_threads=num_threads)
        details = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(details) != 1 or len(outputs) != 1:
            raise ExportError("an encoder TFLite model has one input and one output")
        self.input = details[0]
        self.output = outputs[0]
        self.shape = tuple(int(v) for v in self.input["shape"])

    def __call__(self, images, training=False):
        del training
        images = np.asarray(images, np.float32)
        if images.ndim == 3:
            images = images[None]
        if images.shape[1:] != self.shape[1:]:
            raise ValueError(f"the TFLite encoder takes N x {self.shape[1]} x {self.shape[2]} "
                             f"x 3 images, got {images.shape}")
        residuals = []
        for image in images:
            self.interpreter.set_tensor(self.input["index"], image[None])
            self.interpreter.invoke()
            residuals.append(self.interpreter.get_tensor(self.output["index"])[0].copy())
        return np.stack(residuals)


# ---------------------------------------------------------------------------------------------
# The camera: the whole immunization in one TFLite graph


def parse_camera_size(text: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' -> (width, height), or a ValueError that says what is wrong."""
    parts = str(text).lower().split("x")
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        raise ValueError(f"camera size must be WIDTHxHEIGHT in pixels (e.g. 4000x3000), "
                         f"got '{text}'")
    width, height = int(parts[0]), int(parts[1])
    from imuge_tf.inference import MIN_SIDE
    from imuge_tf.io import DEFAULT_MAX_PIXELS

    if min(width, height) < MIN_SIDE or width * height > DEFAULT_MAX_PIXELS:
        raise ValueError(f"camera size {width}x{height} is outside {MIN_SIDE} px per side to "
                         f"{DEFAULT_MAX_PIXELS // 1_000_000} MP")
    return width, height


def save_camera_model(imuge, width: int, height: int, path: str) -> str:
    """The camera SavedModel: photo 1 x H x W x 3 uint8 -> immunized photo, same form; the
    graph is `InferencePipeline.immunize`, the one the facade runs."""
    import keras
    import tensorflow as tf

    pipeline = imuge.pipeline
    archive = keras.export.ExportArchive()
    archive.track(imuge.encoder)

    def immunize(photo):
        immunized = pipeline.immunize(tf.cast(photo, tf.float32))
        return {"immunized": tf.cast(immunized, tf.uint8)}

    archive.add_endpoint("serving_default", immunize, input_signature=[
        tf.TensorSpec([1, height, width, 3], tf.uint8, name="photo")])
    archive.write_out(path, verbose=False)
    return path


class TFLiteCamera:
    """Runs a camera TFLite model on uint8 H x W x 3 photos of its size. Not thread-safe."""

    def __init__(self, model, num_threads=None):
        self.interpreter = _interpreter(model, num_threads=num_threads)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.shape = tuple(int(v) for v in self.input["shape"])

    def __call__(self, photo) -> np.ndarray:
        photo = np.asarray(photo, np.uint8)
        if photo.shape != self.shape[1:]:
            raise ValueError(f"this camera model takes {self.shape[2]}x{self.shape[1]} photos, "
                             f"got {photo.shape[1]}x{photo.shape[0]}")
        self.interpreter.set_tensor(self.input["index"], photo[None])
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])[0].copy()
