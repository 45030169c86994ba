"""Deployment exports: a TFLite (LiteRT) encoder for cameras, a TF Serving verifier + decoder.

`export_model(imuge, out_dir)` writes the layout that export/README.md documents:

    out_dir/
      manifest.json                what was exported, from which model, and the parity checks
      encoder/
        saved_model/               the encoder as a SavedModel (signature serving_default)
        encoder_fp32.tflite        the encoder for LiteRT, builtin ops only
        encoder_fp16.tflite        float16 weights
        encoder_dynamic.tflite     dynamic-range int8 weights
        encoder_int8.tflite        full int8, only when its parity holds
      serving/
        models.config              TF Serving model config (text proto)
        batching_parameters.txt    TF Serving batching parameters (text proto)
        imuge/1/                   the verifier + decoder SavedModel, with
                                   assets.extra/tf_serving_warmup_requests

The encoder's input is the photo resized to S x S (bilinear with antialiasing), 1 x S x S x 3
float32 in [0, 1]; its output is the residual at that size, 1 x S x S x 3 float32 in [-1, 1].
A camera upsamples the residual to the photo's full resolution and adds it there (as
`Imuge.immunize` does), so the full-resolution photo never passes through the network.

The serving SavedModel does everything `Imuge.verify` and `Imuge.recover` do, in stock TF ops
(no py_function), so that TF Serving can run it: decoding, resizing to the working size, the
verifier, the verdict thresholds of imuge.json, Otsu's threshold and the 4 x 4 opening, the
decoder with its push-pull pre-fill, and PNG encoding of the mask and the recovered photo at
the received size.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import numpy as np

ENCODER_VARIANTS = ("fp32", "fp16", "dynamic", "int8")
REQUIRED_VARIANTS = ("fp32", "fp16")
SERVING_NAME = "imuge"
SERVING_VERSION = 1
SERVING_BASE_PATH = "/models/imuge"  # where the docker command of export/README.md mounts it
MANIFEST = "manifest.json"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")

# Parity gates, applied to each TFLite variant against the Keras encoder on the check photos.
# fp32 must match to float rounding (a larger error means a broken conversion, not quantizing).
# A quantized variant may move the residual (a trained one is ~3-4 levels RMS) by a few 8-bit
# levels but must not erase it; what decides is the end-to-end parity: the Keras verifier's
# F1 and the recovery PSNR on photos it immunized within 0.01 / 0.2 dB of the Keras encoder's.
FP32_MAX_LEVELS = 0.05
QUANTIZED_MAX_LEVELS = 8.0
QUANTIZED_RMS_SHARE = 0.5  # error RMS at most this share of the residual's own RMS
# The camera model's immunized photo against `Imuge.immunize` on the same photo, in levels on
# every pixel (the block mark picks its lattice points with exact arithmetic, so runtimes
# differ only by the rounding of the final sum).
CAMERA_MAX_LEVELS = 1
CALIBRATION_SAMPLES = 32  # representative images for full int8

# TF Serving text protos, written by export_model and kept as copies in the repository's
# export/ folder (a test checks that they agree).
MODELS_CONFIG = f"""\
# TF Serving model config: tensorflow_model_server --model_config_file=models.config
# base_path is the folder that holds the numbered versions (imuge/1/, imuge/2/, ...), as
# mounted by the docker command in export/README.md; the newest version is served.
model_config_list {{
  config {{
    name: "{SERVING_NAME}"
    base_path: "{SERVING_BASE_PATH}"
    model_platform: "tensorflow"
    model_version_policy {{
      latest {{
        num_versions: 1
      }}
    }}
  }}
}}
"""

BATCHING_PARAMETERS = """\
# TF Serving batching: tensorflow_model_server --enable_batching
#   --batching_parameters_file=batching_parameters.txt
# Requests are merged into batches of up to 8 photos (the graph resizes every photo to the
# working size first, so photos of different sizes batch together). A request waits at most
# 20 ms for others; 2 threads run batches (one per 1-2 CPU cores is a good start).
max_batch_size { value: 8 }
batch_timeout_micros { value: 20000 }
max_enqueued_batches { value: 64 }
num_batch_threads { value: 2 }
pad_variable_length_inputs: false
"""


class ExportError(RuntimeError):
    """An export that cannot be made, or that would not work: one line that says why."""


# ---------------------------------------------------------------------------------------------
# The encoder


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


def tflite_ops(model) -> list:
    """The sorted op names in a TFLite model (bytes or a path), as the interpreter reports."""
    interpreter = _interpreter(model, num_threads=1)
    # _get_ops_details is the interpreter's only listing of ops (used by its own analyzers).
    return sorted({op["op_name"] for op in interpreter._get_ops_details()})


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


def residual_error(encoder, runner, images) -> dict:
    """How far `runner`'s residuals are from `encoder`'s, in 8-bit levels, on `images`."""
    errors, magnitudes = [], []
    for image in images:
        expected = np.asarray(encoder(image, training=False), np.float64)
        got = np.asarray(runner(image), np.float64)
        errors.append(np.abs(got - expected).ravel() * 255.0)
        magnitudes.append(np.abs(expected).ravel() * 255.0)
    errors, magnitudes = np.concatenate(errors), np.concatenate(magnitudes)
    return {"max_levels": float(errors.max()), "rms_levels": float(np.sqrt(np.mean(errors**2))),
            "p99_levels": float(np.percentile(errors, 99)),
            "residual_rms_levels": float(np.sqrt(np.mean(magnitudes**2)))}


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


def camera_parity(imuge, camera, photos) -> dict:
    """How far the camera model's immunized photos are from `Imuge.immunize` (8-bit levels)."""
    from imuge_tf.io import cover

    height, width = camera.shape[1], camera.shape[2]
    differences = []
    for photo in photos:
        photo = cover(photo, height, width)
        got = camera(photo).astype(np.int16)
        expected = imuge.immunize(photo).astype(np.int16)
        differences.append(np.abs(got - expected).ravel())
    difference = np.concatenate(differences)
    return {"photos": len(photos), "max_levels": int(difference.max()),
            "within_one_level_share": float(np.mean(difference <= 1)),
            "differing_share": float(np.mean(difference > 0)),
            "holds": bool(difference.max() <= CAMERA_MAX_LEVELS)}


def residual_gate(variant: str, error: dict) -> tuple[bool, str]:
    """Whether a variant's residual error is acceptable, and why not."""
    largest = error["max_levels"]
    if variant == "fp32":
        ok = largest <= FP32_MAX_LEVELS
        return ok, "" if ok else (f"fp32 residual differs by {largest:.3g} levels (max; "
                                  f"> {FP32_MAX_LEVELS}): a broken conversion")
    limit = QUANTIZED_RMS_SHARE * error["residual_rms_levels"]
    ok = largest <= QUANTIZED_MAX_LEVELS and error["rms_levels"] <= limit
    return ok, "" if ok else (
        f"residual error max {largest:.2f} / RMS {error['rms_levels']:.2f} levels "
        f"exceeds {QUANTIZED_MAX_LEVELS:g} / {limit:.2f} ({QUANTIZED_RMS_SHARE:.0%} of the "
        f"residual's own {error['residual_rms_levels']:.2f} levels RMS)")


# ---------------------------------------------------------------------------------------------
# The verifier + decoder for TF Serving: decoding and PNG encoding around the pipeline


# What `analyse` found of the photo's geometry (VerifyResult's rotation, crop origin, scale).
GEOMETRY_OUTPUTS = {"quarter_turns": "int32", "origin_y": "int32", "origin_x": "int32",
                    "scale": "float32"}


def _geometry_signature():
    import tensorflow as tf

    return {name: tf.as_dtype(dtype) for name, dtype in GEOMETRY_OUTPUTS.items()}


class _ServingGraph:
    """The TF functions of the serving SavedModel: `InferencePipeline.analyse` and `recover`
    (the graph code the facade runs) between decoding the request and encoding the answer."""

    def __init__(self, imuge):
        from imuge_tf.inference import MIN_SIDE
        from imuge_tf.io import DEFAULT_MAX_PIXELS
        from imuge_tf.pipeline import VERDICTS

        self.pipeline = imuge.pipeline
        self.min_side = int(MIN_SIDE)
        self.max_pixels = int(DEFAULT_MAX_PIXELS)
        self.verdicts = tuple(VERDICTS)

    # -- pieces
    def _declared_pixels(self, data):
        """The pixels that the header of `data` declares, read before decoding so that a
        small file declaring a huge image is refused without being decoded: width x height,
        and for a GIF the larger of its screen and the sum of its frames (the GIF decoder
        holds every frame in memory, whichever one it returns). -1 when the bytes are not one
        of the formats tf.io.decode_image decodes (JPEG, PNG, GIF, BMP, WebP) or the size
        cannot be read from the header: those bytes are refused rather than decoded."""
        import tensorflow as tf

        # A GIF's blocks are walked in at most this many steps, each skipping up to
        # `gif_run` sub-blocks.
        gif_max_steps, gif_run = 2048, 256
        unknown, zero = tf.constant(-1, tf.int64), tf.constant(0, tf.int64)
        length = tf.cast(tf.strings.length(data), tf.int64)
        # The first bytes, zero-padded to a fixed size, so that reading a header field is a
        # slice that cannot go out of range (the length checks say which fields exist).
        head = tf.io.decode_raw(tf.strings.substr(data, 0, 32), tf.uint8)
        head = tf.cast(tf.pad(head, [[0, 32 - tf.size(head)]]), tf.int64)

        def starts(magic, at=0):
            return tf.reduce_all(tf.equal(head[at:at + len(magic)], list(magic)))

        def little(at, size):
            return sum(head[at + k] * 256 ** k for k in range(size))

        def big(at, size):
            return sum(head[at + k] * 256 ** (size - 1 - k) for k in range(size))

        def bits(value, shift, mask):
            return tf.bitwise.bitwise_and(tf.bitwise.right_shift(value, shift), mask)

        def area(width, height, readable):
            valid = tf.logical_and(readable, tf.logical_and(width > 0, height > 0))
            return tf.where(valid, width * height, unknown)

        def jpeg():
            # libjpeg's own header reader: the frame header may follow any number of segments.
            shape = tf.io.extract_jpeg_shape(data, output_type=tf.int64)
            return shape[0] * shape[1]

        def png():
            # IHDR, which must be the first chunk: width and height, big-endian, bytes 16-23.
            return area(big(16, 4), big(20, 4),
                        tf.logical_and(length >= 24, starts(b"IHDR", 12)))

        def bmp():
            # Width and height, little-endian int32 at bytes 18 and 22; a negative height
            # means rows stored top-down.
            width, height = little(18, 4), little(22, 4)
            width = tf.where(width >= 2 ** 31, width - 2 ** 32, width)
            height = tf.where(height >= 2 ** 31, height - 2 ** 32, height)
            return area(width, tf.abs(height), length >= 26)

        def webp():
            # RIFF, size, WEBP, then the first chunk's name (bytes 12-15) and from byte 20 its
            # payload. 'VP8 ' (lossy): a key frame's tag and start code 9d 01 2a, then 14-bit
            # width and height (their top 2 bits are a scaling hint the decoder ignores).
            lossy = area(bits(little(26, 2), 0, 0x3FFF), bits(little(28, 2), 0, 0x3FFF),
                         tf.logical_and(tf.equal(bits(head[20], 0, 1), 0),
                                        starts(b"\x9d\x01\x2a", 23)))
            # 'VP8L' (lossless): signature 0x2f, then width - 1 and height - 1, 14 bits each.
            packed = little(21, 4)
            lossless = area(bits(packed, 0, 0x3FFF) + 1, bits(packed, 14, 0x3FFF) + 1,
                            tf.equal(head[20], 0x2F))
            # 'VP8X' (extended): the canvas, width - 1 and height - 1 in 24 bits each, which a
            # still image's frame must fill. An animation is refused: the three-channel
            # decoding here would refuse it anyway, after reading its frames' headers.
            extended = area(little(24, 3) + 1, little(27, 3) + 1,
                            tf.equal(bits(head[20], 1, 1), 0))
            pixels = tf.where(starts(b"VP8 ", 12), lossy,
                              tf.where(starts(b"VP8L", 12), lossless,
                                       tf.where(starts(b"VP8X", 12), extended, unknown)))
            return tf.where(length >= 30, pixels, unknown)

        def gif():
            # The logical screen, the decoded size, is at bytes 6-9. The frames are found by
            # walking the blocks after the global colour table: extensions (0x21, a label,
            # sub-blocks), images (0x2c, a 9-byte descriptor with the frame's width and height
            # at its bytes 4-7, a local colour table, a code size byte, sub-blocks) up to the
            # trailer (0x3b). Sub-blocks are length-prefixed pieces up to a zero length; an
            # encoder writes them all of one size (255 bytes), so a step skips a run of
            # sub-blocks of the size of the first. The walk is a loop of at most
            # `gif_max_steps` steps (a GIF that needs more is refused), which bounds its time.
            screen = little(6, 2) * little(8, 2)
            # The bytes, then a zero byte at position n: where a walk off the end stops.
            stream = tf.concat([tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int64),
                                tf.zeros([1], tf.int64)], 0)
            last = tf.size(stream, out_type=tf.int64) - 1
            run_offsets = tf.range(gif_run, dtype=tf.int64)
            descriptor = tf.range(5, 10, dtype=tf.int64)

            def at(positions):
                return tf.gather(stream, tf.minimum(positions, last))

            def table(flags):
                # A colour table, when the flags' top bit says there is one: 3 x 2^(n + 1).
                return tf.where(bits(flags, 7, 1) > 0,
                                3 * tf.bitwise.left_shift(tf.constant(2, tf.int64),
                                                          bits(flags, 0, 7)), zero)

            def chain(pos, pixels):
                # pos is a sub-block's length byte: skip it and the run of same-size ones
                # after it; a zero length ends the chain, and a block follows.
                size = at(pos)
                same = tf.equal(at(pos + (size + 1) * run_offsets), size)
                run = tf.reduce_sum(tf.math.cumprod(tf.cast(same, tf.int64)))
                ended = tf.equal(size, 0)
                return (tf.where(ended, pos + 1, pos + (size + 1) * run),
                        tf.logical_not(ended), pixels)

            def block(pos, pixels):
                # pos is a block's first byte. The walk ends at the trailer (pos -2) or at
                # anything else that is not a block (pos -1).
                kind = at(pos)
                fields = at(pos + descriptor)  # width (2 bytes), height (2), flags
                image = tf.equal(kind, 0x2C)
                frame = (fields[0] + 256 * fields[1]) * (fields[2] + 256 * fields[3])
                pos = tf.where(image, pos + 11 + table(fields[4]),
                               tf.where(tf.equal(kind, 0x21), pos + 2,
                                        tf.where(tf.equal(kind, 0x3B), -2 + zero,
                                                 -1 + zero)))
                return pos, pos >= 0, pixels + tf.where(image, frame, zero)

            pos, _, pixels = tf.while_loop(
                lambda pos, in_chain, pixels: pos >= 0,
                lambda pos, in_chain, pixels: tf.cond(in_chain, lambda: chain(pos, pixels),
                                                      lambda: block(pos, pixels)),
                (13 + table(head[10]), tf.constant(False), zero),
                maximum_iterations=gif_max_steps)
            return tf.where(tf.equal(pos, -2), tf.maximum(screen, pixels), unknown)

        # The formats in the order tf.io.decode_image tells them apart by their first bytes.
        branch = tf.where(
            starts(b"\xff\xd8\xff"), 1, tf.where(
                starts(b"\x89PNG\r\n\x1a\n"), 2, tf.where(
                    tf.logical_and(length >= 13, starts(b"GIF8")), 3, tf.where(
                        starts(b"BM"), 4, tf.where(
                            tf.logical_and(length > 12, tf.logical_and(
                                starts(b"RIFF"), starts(b"WEBP", 8))), 5, 0)))))
        return tf.switch_case(branch, [lambda: unknown, jpeg, png, gif, bmp, webp])

    def _decode(self, data):
        import tensorflow as tf

        # One check after the other, so that each failure gets its own message.
        empty = tf.debugging.assert_positive(tf.strings.length(data),
                                             message="image is empty: no bytes")
        with tf.control_dependencies([empty]):
            declared = self._declared_pixels(data)
        supported = tf.debugging.assert_non_negative(
            declared, message="unsupported image format: JPEG, PNG, GIF, BMP or WebP with a "
                              "readable header expected")
        with tf.control_dependencies([supported]):
            too_large = tf.debugging.assert_less_equal(
                declared, tf.constant(self.max_pixels, tf.int64),
                message=f"image too large: more than {self.max_pixels} pixels")
        with tf.control_dependencies([too_large]):
            data = tf.identity(data)
        # tf.io.decode_image decodes JPEG with libjpeg's fast integer IDCT, which is up to 6
        # levels away from Pillow's (and so from a local `imuge verify`): enough to disturb
        # the block mark. The accurate IDCT gives Pillow's pixels exactly.
        image = tf.cond(
            tf.io.is_jpeg(data),
            lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_image(data, channels=3, dtype=tf.uint8,
                                       expand_animations=False))
        shape = tf.shape(image)
        check = tf.debugging.assert_greater_equal(
            tf.reduce_min(shape[:2]), self.min_side,
            message=f"image too small: at least {self.min_side} pixels on each side are "
                    "needed")
        with tf.control_dependencies([check]):
            return tf.identity(image)

    def _one(self, levels):
        """[1, H, W, 3] levels -> the analysis and the recovered photo (levels)."""
        import tensorflow as tf

        found = self.pipeline.analyse(levels)
        mask = tf.cast(found["mask"], tf.float32)[None, :, :, None]
        tampered = tf.equal(found["verdict"], 1)
        # Only a tampered photo is changed, and only inside the grown mask (Imuge.recover).
        recovered = tf.cond(
            tampered,
            lambda: self.pipeline.recover(levels, self.pipeline.recovery_mask(mask), mask,
                                          found["quarter_turns"], found["origin"]),
            lambda: levels)
        return found, recovered, found["thresholds"]

    def _common_outputs(self, found, thresholds):
        import tensorflow as tf

        return {
            "verdict": tf.gather(tf.constant(self.verdicts), found["verdict"]),
            "evidence": tf.gather(tf.constant(["verifier", "block_mark"]), found["evidence"]),
            "tampered_fraction": tf.reduce_mean(tf.cast(found["mask"], tf.float32)),
            "flagged_fraction": tf.cast(found["flagged_fraction"], tf.float32),
            "threshold": tf.cast(found["threshold"], tf.float32),
            "intact_max_fraction": thresholds[0],
            "not_immunized_min_fraction": thresholds[1],
            "quarter_turns": found["quarter_turns"],
            "origin_y": found["origin"][0],
            "origin_x": found["origin"][1],
            "scale": found["scale"],
        }

    # -- the signatures
    def serve_bytes(self, images):
        """Encoded images [N] (string) -> verdicts, fractions and PNGs at the received sizes."""
        import tensorflow as tf

        def one(data):
            image = self._decode(data)
            found, recovered, thresholds = self._one(tf.cast(image, tf.float32)[None])
            outputs = self._common_outputs(found, thresholds)
            outputs["height"], outputs["width"] = tf.shape(image)[0], tf.shape(image)[1]
            # zlib level 1: at 12 MP the default level takes seconds for a few % of size.
            outputs["mask_png_bytes"] = tf.io.encode_png(
                tf.cast(found["mask"], tf.uint8)[:, :, None] * 255, compression=1)
            outputs["recovered_png_bytes"] = tf.io.encode_png(
                tf.cast(recovered[0], tf.uint8), compression=1)
            return outputs

        signature = {"verdict": tf.string, "evidence": tf.string,
                     "tampered_fraction": tf.float32, "flagged_fraction": tf.float32,
                     "threshold": tf.float32, "intact_max_fraction": tf.float32,
                     "not_immunized_min_fraction": tf.float32, **_geometry_signature(),
                     "height": tf.int32,
                     "width": tf.int32, "mask_png_bytes": tf.string,
                     "recovered_png_bytes": tf.string}
        return tf.map_fn(one, images, fn_output_signature=signature)

    def verify_tensor(self, images):
        """Float images [N, H, W, 3] in [0, 1] -> probability, mask, verdict and recovered."""
        import tensorflow as tf

        def one(image):
            levels = tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0)[None]
            found, recovered, thresholds = self._one(levels)
            outputs = self._common_outputs(found, thresholds)
            outputs["probability"] = found["probability"][:, :, None]
            outputs["mask"] = tf.cast(found["mask"], tf.float32)[:, :, None]
            outputs["recovered"] = recovered[0] / 255.0
            return outputs

        shape = tf.TensorSpec([None, None, None], tf.float32)
        signature = {"verdict": tf.string, "evidence": tf.string,
                     "tampered_fraction": tf.float32, "flagged_fraction": tf.float32,
                     "threshold": tf.float32, "intact_max_fraction": tf.float32,
                     "not_immunized_min_fraction": tf.float32, **_geometry_signature(),
                     "probability": shape,
                     "mask": shape, "recovered": shape}
        return tf.map_fn(one, images, fn_output_signature=signature)


def save_serving_model(imuge, version_dir: str) -> str:
    """Writes the verifier + decoder SavedModel (signatures serving_default, verify_tensor)."""
    import keras
    import tensorflow as tf

    graph = _ServingGraph(imuge)
    archive = keras.export.ExportArchive()
    archive.track(imuge.verifier)
    archive.track(imuge.decoder)
    if imuge.refiner is not None:
        archive.track(imuge.refiner)
    archive.add_endpoint("serving_default", graph.serve_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    archive.add_endpoint(
        "verify_tensor", graph.verify_tensor,
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    archive.write_out(version_dir, verbose=False)
    return version_dir


def warmup_image(image_size: int) -> bytes:
    """A small PNG photo (a bundled one, scaled) for warm-up requests and examples."""
    import io

    from PIL import Image

    from imuge_tf.samples import sample_photo

    photo = Image.fromarray(sample_photo("coffee"))
    photo = photo.resize((image_size + image_size // 2, image_size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    return buffer.getvalue()


def write_warmup_requests(version_dir: str, image_size: int) -> str:
    """TF Serving warm-up: PredictionLog records for both signatures, batches of 1 and 2, so
    that the first real requests do not pay for tracing and memory allocation."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    png = warmup_image(image_size)
    working = np.full((1, image_size, image_size + image_size // 2, 3), 0.5, np.float32)
    requests = [
        ("serving_default", np.array([png], dtype=object)),
        ("serving_default", np.array([png, png], dtype=object)),
        ("verify_tensor", working),
    ]
    path = os.path.join(version_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, value in requests:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=SERVING_NAME, signature_name=signature))
            request.inputs["images"].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


# ---------------------------------------------------------------------------------------------
# Checks of a SavedModel's graph


def graph_ops(saved_model_dir: str) -> set:
    """Every op type in a SavedModel: its graph and every function of its library."""
    from tensorflow.core.protobuf import saved_model_pb2

    model = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as handle:
        model.ParseFromString(handle.read())
    ops = set()
    for meta_graph in model.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops


def nonstock_ops(saved_model_dir: str) -> list:
    """Op types of the SavedModel that stock TensorFlow does not register, or that call back
    into Python (PyFunc and friends, which no model server can run). Empty is good."""
    from tensorflow.python.framework import op_def_registry

    python_ops = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
    # Function calls name library functions, not registered ops; graph_ops lists their
    # bodies too, so skipping the names of library functions loses nothing.
    from tensorflow.core.protobuf import saved_model_pb2

    model = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as handle:
        model.ParseFromString(handle.read())
    functions = {function.signature.name for meta_graph in model.meta_graphs
                 for function in meta_graph.graph_def.library.function}
    return sorted(op for op in graph_ops(saved_model_dir)
                  if op in python_ops or (op not in functions
                                          and op_def_registry.get(op) is None))


# ---------------------------------------------------------------------------------------------
# The whole export


def check_out_dir(out_dir: str, force: bool) -> None:
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


def export_model(imuge, out_dir: str, *, force: bool = False, int8: bool = True,
                 camera_size=None, check_photos=None, progress=None) -> dict:
    """Writes every export of `imuge` under `out_dir` (see the module docstring).

    The working-scale encoder's TFLite variants are checked against the Keras encoder on
    `check_photos` (default: the photos bundled with scikit-image); a variant whose residual
    error fails its gate is not written (fp32 failing is an ExportError). With `camera_size`
    (width, height) the camera model, the whole immunization in one graph, is written too and
    its output checked against `Imuge.immunize` on the same photos (within CAMERA_MAX_LEVELS,
    or an ExportError). The export is built in a temporary folder next to `out_dir` and moved
    into place at the end, so `out_dir` never holds half an export.
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
        variants = ENCODER_VARIANTS if int8 else REQUIRED_VARIANTS
        for variant in variants:
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
