"""JPEG compression for the attack layer: a differentiable libjpeg model and the real codec.

`simulate_jpeg` follows the path an image takes through libjpeg (the library behind Pillow and
`tf.image`) with its default settings: 8-bit input, JFIF full-range RGB -> YCbCr, 4:2:0 chroma
subsampling by 2x2 averaging, edge replication up to whole 16x16 macroblocks, level shift, 8x8
DCT, the standard quantization tables scaled by `jpeg_quality_scaling`, rounding, then the
decoder: dequantization, inverse DCT, "fancy" (triangular) chroma upsampling, YCbCr -> RGB and
8-bit output. Every rounding step is straight-through: exact in the forward pass, identity in
the backward pass, so gradients reach the input images.

`real_jpeg` runs the real codec (`tf.image.adjust_jpeg_quality`) and has no gradient;
`straight_through_jpeg` returns the real codec's output with `simulate_jpeg`'s gradient.
"""

import numbers

import numpy as np
import tensorflow as tf

__all__ = ["real_jpeg", "simulate_jpeg", "straight_through_jpeg", "quantization_tables"]

# Tolerance on the [0, 1] range of input images checked at call time.
_RANGE_TOLERANCE = 1e-3

# ITU-T T.81 Annex K tables (the ones libjpeg scales by quality), in natural (row-major) order.
_LUMINANCE_TABLE = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.int32,
)
_CHROMINANCE_TABLE = np.array(
    [
        [17, 18, 24, 47, 99, 99, 99, 99],
        [18, 21, 26, 66, 99, 99, 99, 99],
        [24, 26, 56, 99, 99, 99, 99, 99],
        [47, 66, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
    ],
    dtype=np.int32,
)


def _dct_matrix() -> np.ndarray:
    """The orthonormal 8-point DCT-II basis, rows = frequencies (JPEG's FDCT is this, in 2-D)."""
    n = np.arange(8)
    basis = np.cos((2 * n[None, :] + 1) * n[:, None] * np.pi / 16)
    scale = np.full(8, np.sqrt(2 / 8))
    scale[0] = np.sqrt(1 / 8)
    return (scale[:, None] * basis).astype(np.float32)


_DCT = _dct_matrix()


@tf.custom_gradient
def _ste(x, rounded):
    """Exactly `rounded` in the forward pass, the identity gradient to `x` in the backward pass.

    (x + stop_gradient(rounded - x) would be off by an ulp here and there in float32.)
    """

    def gradient(upstream):
        return upstream, tf.zeros_like(rounded)

    return tf.identity(rounded), gradient


def _ste_round(x):
    """Round half away from zero, as libjpeg's quantizer does (tf.round rounds half to even)."""
    return _ste(x, tf.sign(x) * tf.floor(tf.abs(x) + 0.5))


def _ste_floor(x):
    return _ste(x, tf.floor(x))


def _ste_round_clip(x):
    """Round to the nearest integer and clamp to [0, 255], like libjpeg's range-limit tables."""
    return _ste(x, tf.clip_by_value(tf.floor(x + 0.5), 0.0, 255.0))


def quantization_tables(quality):
    """libjpeg's baseline tables for JPEG quality factors.

    Args:
        quality: int32 tensor of any shape [...] with values in 1..100.

    Returns:
        (luminance, chrominance): float32 tensors of shape [..., 8, 8].
    """
    quality = tf.cast(quality, tf.int32)
    # jpeg_quality_scaling: below 50 the scale grows as 5000/q, above it falls linearly.
    scale = tf.where(quality < 50, 5000 // tf.maximum(quality, 1), 200 - 2 * quality)
    scale = scale[..., None, None]

    def scaled(table):
        # jpeg_add_quant_table with force_baseline: integer rounding, then clamp to 1..255.
        values = (tf.constant(table) * scale + 50) // 100
        return tf.cast(tf.clip_by_value(values, 1, 255), tf.float32)

    return scaled(_LUMINANCE_TABLE), scaled(_CHROMINANCE_TABLE)


def _check_images(images):
    """Converts to float32 and checks the rank statically (the value range is asserted later)."""
    images = tf.convert_to_tensor(images)
    if not images.dtype.is_floating:
        raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype.name}")
    images = tf.cast(images, tf.float32)
    rank = images.shape.rank
    if rank is not None and rank != 4:
        raise ValueError(f"images must have rank 4 (NHWC), got rank {rank}")
    if images.shape[-1] is not None and images.shape[-1] != 3:
        raise ValueError(f"images must have 3 channels (RGB), got {images.shape[-1]}")
    return images


def _quality_vector(quality, batch_size):
    """Validates quality factors and returns them as an int32 [B] tensor.

    Python and NumPy values are checked immediately (ValueError); tensors with
    tf.debugging assertions, which also run inside tf.function.
    """
    if isinstance(quality, (numbers.Number, np.ndarray, np.generic, list, tuple)):
        values = np.asarray(quality)
        if values.ndim > 1:
            raise ValueError(f"quality must be a scalar or a vector, got shape {values.shape}")
        if values.size == 0 or not np.all(np.isfinite(values)):
            raise ValueError(f"quality must be finite JPEG quality factors, got {quality!r}")
        if np.any(values < 1) or np.any(values > 100):
            raise ValueError(f"JPEG quality must be in 1..100, got {quality!r}")
        quality = tf.constant(np.round(values).astype(np.int32))
    else:
        quality = tf.convert_to_tensor(quality)
        if quality.shape.rank is not None and quality.shape.rank > 1:
            raise ValueError(f"quality must be a scalar or a [N] vector, got shape {quality.shape}")
        if quality.dtype.is_floating:
            quality = tf.round(quality)
        quality = tf.cast(quality, tf.int32)
        tf.debugging.assert_greater_equal(quality, 1, message="JPEG quality must be >= 1")
        tf.debugging.assert_less_equal(quality, 100, message="JPEG quality must be <= 100")
    if quality.shape.rank == 1:
        tf.debugging.assert_equal(
            tf.shape(quality)[0],
            batch_size,
            message="quality vector length must equal the batch size",
        )
        return quality
    return tf.fill([batch_size], quality)


def _assert_unit_range(images):
    tf.debugging.assert_greater_equal(
        images, -_RANGE_TOLERANCE, message="images must be in [0, 1] (found values below 0)"
    )
    tf.debugging.assert_less_equal(
        images, 1.0 + _RANGE_TOLERANCE, message="images must be in [0, 1] (found values above 1)"
    )


def _replicate_pad(x, height, width):
    """Pads axes 1 and 2 of x to (height, width) by repeating the last row and column."""
    rows = tf.minimum(tf.range(height), tf.shape(x)[1] - 1)
    cols = tf.minimum(tf.range(width), tf.shape(x)[2] - 1)
    return tf.gather(tf.gather(x, rows, axis=1), cols, axis=2)


def _rgb_to_ycbcr(rgb):
    """JFIF full-range conversion of 0..255 RGB, rounded like libjpeg's fixed-point tables."""
    r, g, b = tf.unstack(rgb, axis=-1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128.0
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128.0
    return _ste_floor(y + 0.5), _ste_floor(tf.stack([cb, cr], axis=-1) + 0.5)


def _ycbcr_to_rgb(y, chroma):
    """Inverse JFIF conversion; the chroma terms are rounded before adding Y, as in libjpeg."""
    cb = chroma[..., 0] - 128.0
    cr = chroma[..., 1] - 128.0
    r = y + _ste_floor(1.402 * cr + 0.5)
    g = y + _ste_floor(-0.344136 * cb - 0.714136 * cr + 0.5)
    b = y + _ste_floor(1.772 * cb + 0.5)
    rgb = tf.stack([r, g, b], axis=-1)
    return _ste(rgb, tf.clip_by_value(rgb, 0.0, 255.0))


def _downsample_2x2(chroma):
    """libjpeg's h2v2 downsampling: sum of a 2x2 cell plus a bias alternating 1, 2, then >> 2."""
    shape = tf.shape(chroma)
    cells = tf.reshape(chroma, [shape[0], shape[1] // 2, 2, shape[2] // 2, 2, 2])
    sums = tf.reduce_sum(cells, axis=[2, 4])
    # The alternating bias keeps the integer average from drifting down.
    bias = 1.0 + tf.cast(tf.range(shape[2] // 2) % 2, tf.float32)
    return _ste_floor((sums + bias[None, None, :, None]) / 4.0)


def _fancy_upsample_2x2(chroma):
    """libjpeg's h2v2 "fancy" upsampling: a separable triangle filter (3/4, 1/4) with edge
    replication and libjpeg's rounding biases (8 on even, 7 on odd output columns)."""
    shape = tf.shape(chroma)
    batch, rows, cols = shape[0], shape[1], shape[2]
    above = tf.concat([chroma[:, :1], chroma[:, :-1]], axis=1)
    below = tf.concat([chroma[:, 1:], chroma[:, -1:]], axis=1)
    # Column sums in units of 1/4, interleaved: output row 2i leans on row i-1, 2i+1 on i+1.
    colsum = tf.stack([3.0 * chroma + above, 3.0 * chroma + below], axis=2)
    colsum = tf.reshape(colsum, [batch, 2 * rows, cols, 2])
    left = tf.concat([colsum[:, :, :1], colsum[:, :, :-1]], axis=2)
    right = tf.concat([colsum[:, :, 1:], colsum[:, :, -1:]], axis=2)
    sums = tf.stack([3.0 * colsum + left + 8.0, 3.0 * colsum + right + 7.0], axis=3)
    sums = tf.reshape(sums, [batch, 2 * rows, 2 * cols, 2])
    return _ste_floor(sums / 16.0)


def _block_codec(plane, table):
    """DCT, quantization, dequantization and inverse DCT of 8x8 blocks.

    Args:
        plane: [B, H, W, C] level-shifted samples, H and W multiples of 8.
        table: [B, 8, 8] quantization table per sample.
    """
    shape = tf.shape(plane)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    blocks = tf.reshape(plane, [batch, height // 8, 8, width // 8, 8, channels])
    dct = tf.constant(_DCT)
    coefficients = tf.einsum("uh,bihjwc,vw->bijcuv", dct, blocks, dct)
    # Rank 4 for the per-sample table: CPU kernels do not broadcast beyond rank 5.
    blocks_shape = tf.shape(coefficients)
    coefficients = tf.reshape(coefficients, [batch, -1, 8, 8])
    table = table[:, None]
    dequantized = _ste_round(coefficients / table) * table
    dequantized = tf.reshape(dequantized, blocks_shape)
    pixels = tf.einsum("uh,bijcuv,vw->bihjwc", dct, dequantized, dct)
    return tf.reshape(pixels, shape)


def simulate_jpeg(images, quality):
    """Differentiable JPEG compression and decompression modelled on libjpeg (4:2:0).

    Args:
        images: float32 [B, H, W, 3] in [0, 1]; any H and W.
        quality: JPEG quality factor 1..100, a Python/NumPy scalar or an int [B] tensor with
            one factor per sample.

    Returns:
        float32 [B, H, W, 3] in [0, 1], on the 8-bit grid, like a decoded JPEG file.

    Raises:
        ValueError: wrong rank or channel count, or a Python/NumPy quality outside 1..100.
        tf.errors.InvalidArgumentError: a tensor quality outside 1..100, or image values outside
            [0, 1] (beyond a 1e-3 tolerance).
    """
    images = _check_images(images)
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    quality = _quality_vector(quality, batch)
    _assert_unit_range(images)

    # The encoder sees 8-bit samples; pad to whole 16x16 macroblocks by edge replication.
    pixels = _ste_round_clip(images * 255.0)
    padded_height = (height + 15) // 16 * 16
    padded_width = (width + 15) // 16 * 16
    pixels = _replicate_pad(pixels, padded_height, padded_width)

    luma, chroma = _rgb_to_ycbcr(pixels)
    chroma = _downsample_2x2(chroma)
    luma_table, chroma_table = quantization_tables(quality)

    luma = _block_codec(luma[..., None] - 128.0, luma_table)
    luma = _ste_round_clip(luma[..., 0] + 128.0)
    chroma = _ste_round_clip(_block_codec(chroma - 128.0, chroma_table) + 128.0)

    # The decoder upsamples only the real chroma samples, replicating at the image edge.
    chroma = chroma[:, : (height + 1) // 2, : (width + 1) // 2]
    chroma = _fancy_upsample_2x2(chroma)[:, :height, :width]
    rgb = _ycbcr_to_rgb(luma[:, :height, :width], chroma)
    # A multiplication, not a division: graph optimization rewrites x / c as x * (1 / c), and
    # eager and traced results should agree bit for bit.
    result = rgb * (1.0 / 255.0)
    result.set_shape(images.shape)
    return result


def real_jpeg(images, quality):
    """The real codec (libjpeg, TF's encoder and accurate decoder) per sample; no gradient.

    Args:
        images: float32 [B, H, W, 3] in [0, 1].
        quality: JPEG quality factor 1..100, scalar or int [B] tensor.

    Returns:
        float32 [B, H, W, 3] in [0, 1].
    """
    images = _check_images(images)
    quality = _quality_vector(quality, tf.shape(images)[0])
    _assert_unit_range(images)
    # Round to 8 bits ourselves: convert_image_dtype would truncate x * 255.5 instead.
    pixels = tf.cast(tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0), tf.uint8)

    def encode_decode(args):
        image, factor = args
        # The encoder of adjust_jpeg_quality, but decoded with the accurate inverse DCT as
        # Pillow and most viewers do: the fast IDCT's own error would otherwise be trained on
        # as if it were the codec's (BENCHMARKS.md, "JPEG fidelity and attack-layer cost").
        encoded = tf.raw_ops.EncodeJpegVariableQuality(images=image, quality=factor)
        return tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")

    decoded = tf.map_fn(
        encode_decode,
        (tf.stop_gradient(pixels), quality),
        fn_output_signature=tf.TensorSpec(images.shape[1:], tf.uint8),
    )
    result = tf.cast(decoded, tf.float32) * (1.0 / 255.0)
    result.set_shape(images.shape)
    return tf.stop_gradient(result)


def straight_through_jpeg(images, quality):
    """Real JPEG in the forward pass, `simulate_jpeg`'s gradient in the backward pass.

    Same arguments and result as `real_jpeg`.
    """
    return _ste(simulate_jpeg(images, quality), real_jpeg(images, quality))
