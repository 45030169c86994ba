"""The verifier + decoder for TF Serving: `InferencePipeline.analyse` and `recover`, the graph
code `Imuge.verify` and `Imuge.recover` run, between decoding the request's image bytes and
PNG encoding of the answer, in stock TF ops only (no py_function), so that TF Serving can run
it.
"""

from __future__ import annotations

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
        # tf.io.decode_image decodes JPEG with libjpeg's fast integer IDCT, whose pixels differ
        # from Pillow's (and so from a local `imuge verify`'s) by enough to disturb the block
        # mark. The accurate IDCT gives Pillow's pixels exactly.
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
            # zlib level 1: on a large photo the default level takes several times as long
            # for a file only a little smaller (BENCHMARKS.md, `native_quality`, times both).
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
