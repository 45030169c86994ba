"""A hidden thumbnail: the encoder writes a small copy of the photo into it, the decoder reads it.

The paper asks the encoder to learn where and how to hide the information the decoder needs.
At a CPU budget it does not: trained decoders inpaint, and score the same on never-immunized
photos (no "Imuge effect": BENCHMARKS.md, `ablation`). This lever
(`model.hidden_thumbnail_step` > 0) hides the information by construction, with quantization
index modulation (QIM):

- the photo is cut into `block` x `block` cells; the message of a cell is the mean colour
  (R, G, B) of the cell half an image away (the half-shift of `HalfShift`), so content that is
  pasted over stays described somewhere it was not;
- the encoder's output is moved, cell by cell and channel by channel, so that the cell's mean
  in 8-bit levels lies on the lattice `step * (k + m)`, where `m` in [MARGIN, 1 - MARGIN] is
  the message: a shift of at most `step / 2` levels, spread as whole levels over the cell's
  pixels so that the saved 8-bit photo holds it exactly (a constant shift would be rounded the
  same way on every pixel of a flat cell, and the mean would miss the lattice by up to 0.5);
- reading is `frac(mean / step)`: the thumbnail of the whole photo, at 1 / `block` of its size,
  from the received pixels alone. A cell whose message lies in a tampered area is unusable;
  the rest are exact to about 256 / step / (2 x block^2) levels on a losslessly saved photo.

It is fragile by design: JPEG, resizing or blurring move the means by more than `step` and the
read thumbnail becomes noise. `thumbnail_reliability` tells the two apart without any side
information, by comparing the thumbnail with the received photo where both are untampered,
and `hidden_prefill` falls back to the classical fill where the thumbnail cannot be trusted.

All pure tensor ops (pooling, rounding, modulo, roll, nearest resize), so the encoder with the
hiding layer still exports to SavedModel and TFLite builtins.
"""

import keras
import numpy as np

DEFAULT_STEP = 6.0  # 8-bit levels between lattice points: costs step^2 / 12 in MSE
DEFAULT_BLOCK = 2
# The message never comes closer than MARGIN (of a step) to a lattice point, so that a black
# cell read with a little noise does not wrap around to white.
MARGIN = 0.05
# Mean absolute difference (in [0, 1] units) between the read thumbnail and the received
# photo's own cell means, over cells where both are untampered: rounding error only on a
# losslessly saved immunized photo, that of uniform noise on a JPEG-compressed or
# never-immunized one; the bounds lie between the two, well clear of both. Reliability is 1
# below the first bound, 0 above the second, linear in between.
RELIABLE_BELOW = 0.03
UNRELIABLE_ABOVE = 0.06
RANK_SEED = 20211020


def rank_tile(block: int) -> np.ndarray:
    """A fixed order of the pixels of one cell (0..block^2 - 1): the first r get one more level."""
    return np.random.default_rng(RANK_SEED).permutation(block * block).reshape(
        block, block).astype(np.float32)


def _cells(x, block, pool="mean"):
    if pool == "mean":
        return keras.ops.average_pool(x, block, strides=block, padding="valid")
    return keras.ops.max_pool(x, block, strides=block, padding="valid")


def _to_pixels(cells, block):
    """Repeats each cell value over its block x block pixels (nearest upsampling)."""
    return keras.ops.repeat(keras.ops.repeat(cells, block, axis=1), block, axis=2)


def _upsample_bilinear(cells, block):
    """Bilinear upsampling by `block` (half-pixel centres, edges clamped) for any, even
    unknown, size: nearest repetition, then a triangle filter of 2 x block - 1 taps."""
    pixels = _to_pixels(cells, block)
    if block == 1:
        return pixels
    taps = np.concatenate([np.arange(1, block + 1), np.arange(block - 1, 0, -1)])
    taps = (taps / taps.sum()).astype(np.float32)
    channels = pixels.shape[-1]
    kernel = np.outer(taps, taps)[:, :, None, None] * np.ones((1, 1, channels, 1), np.float32)
    pad = block - 1
    padded = keras.ops.pad(pixels, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    return keras.ops.depthwise_conv(padded, keras.ops.convert_to_tensor(kernel), padding="valid")


def cell_means(images, block):
    """Mean of each block x block cell, in 8-bit levels, of images in [0, 1]."""
    return _cells(images, block) * 255.0


def half_roll(x):
    """Circular shift by half the height and width: where a cell's message is stored."""
    height, width = keras.ops.shape(x)[1], keras.ops.shape(x)[2]
    return keras.ops.roll(keras.ops.roll(x, height // 2, axis=1), width // 2, axis=2)


def half_unroll(x):
    """The inverse of `half_roll` (the same shift for even sizes)."""
    height, width = keras.ops.shape(x)[1], keras.ops.shape(x)[2]
    return keras.ops.roll(keras.ops.roll(x, -(height // 2), axis=1), -(width // 2), axis=2)


def message_of(images, block):
    """The message each cell carries, in [MARGIN, 1 - MARGIN]: the mean of the cell half an
    image away, in [0, 1]."""
    return MARGIN + (1.0 - 2.0 * MARGIN) * half_roll(_cells(images, block))


def lattice_targets(levels, message, step, block):
    """Target cell means (8-bit levels) for images in 8-bit levels: the nearest lattice point
    `step * (k + message)` that the cell can reach without clipping a pixel, if there is one."""
    means = _cells(levels, block)
    low = -_cells(-levels, block, "max")          # the cell's darkest pixel
    high = _cells(levels, block, "max")           # and brightest
    offset = step * (keras.ops.round((means - step * message) / step) + message) - means
    other = offset - step * keras.ops.sign(offset)
    fits = (offset >= -low) & (offset <= 255.0 - high)
    other_fits = (other <= 255.0 - high) & (other >= -low)
    offset = keras.ops.where(fits, offset, keras.ops.where(other_fits, other, offset))
    return means + offset


def snap_to_lattice(levels, targets, block):
    """Adds whole levels to `levels` (8-bit, integer-valued) so each cell's mean is as close to
    `targets` as whole levels allow (within 0.5 / block^2), spread over the cell's pixels."""
    count = float(block * block)
    needed = keras.ops.round((targets - _cells(levels, block)) * count)  # whole levels per cell
    base = keras.ops.floor(needed / count)
    extra = needed - base * count  # 0..count-1 pixels of the cell get one more level
    height, width = keras.ops.shape(levels)[1], keras.ops.shape(levels)[2]
    ranks = keras.ops.tile(keras.ops.convert_to_tensor(rank_tile(block), dtype=levels.dtype),
                           (height // block, width // block))
    ranks = keras.ops.reshape(ranks, (1, height, width, 1))
    increments = _to_pixels(base, block) + keras.ops.cast(
        ranks < _to_pixels(extra, block), levels.dtype)
    return keras.ops.clip(levels + increments, 0.0, 255.0)


def read_thumbnail(received, step, block):
    """The hidden thumbnail of `received` ([B, H, W, 3] in [0, 1]): [B, H/block, W/block, 3]
    in [0, 1], each cell describing the cell at its own position."""
    means = cell_means(received, block)
    phase = means / step - keras.ops.floor(means / step)
    values = keras.ops.clip((phase - MARGIN) / (1.0 - 2.0 * MARGIN), 0.0, 1.0)
    return half_unroll(values)


def thumbnail_usable(mask, block):
    """[B, H/block, W/block, 1]: 1 where a cell's message is stored in an untampered cell."""
    tampered_cells = _cells(mask, block, "max")
    return 1.0 - half_unroll(tampered_cells)


def thumbnail_reliability(received, mask, step, block):
    """[B, 1, 1, 1] in [0, 1]: whether the received photo still holds a readable thumbnail.

    Compares the thumbnail with the received cell means where both the cell and the cell
    holding its message are untampered (module docstring). 0 when no cell can be compared.
    """
    return _reliability(received, mask, read_thumbnail(received, step, block),
                        thumbnail_usable(mask, block), block)


def _reliability(received, mask, thumbnail, usable, block):
    """`thumbnail_reliability` from the thumbnail and usable cells already read."""
    own = _cells(received, block)
    untampered = (1.0 - _cells(mask, block, "max")) * usable
    difference = keras.ops.mean(keras.ops.abs(thumbnail - own), axis=-1, keepdims=True)
    compared = keras.ops.sum(untampered, axis=(1, 2, 3), keepdims=True)
    error = keras.ops.sum(difference * untampered, axis=(1, 2, 3), keepdims=True) / (
        keras.ops.maximum(compared, 1.0))
    reliability = keras.ops.clip(
        (UNRELIABLE_ABOVE - error) / (UNRELIABLE_ABOVE - RELIABLE_BELOW), 0.0, 1.0)
    return keras.ops.where(compared > 0.0, reliability, keras.ops.zeros_like(reliability))


def hidden_prefill(received, mask, fallback, step, block):
    """The hole of `received` filled from the hidden thumbnail where it is usable and
    reliable, and from `fallback` (the classical fill, same shape as `received`) elsewhere."""
    # No gradient through the read-out: it is piecewise constant in the pixels (floor, max).
    received_value = keras.ops.stop_gradient(received)
    mask_value = keras.ops.stop_gradient(mask)
    thumbnail = read_thumbnail(received_value, step, block)
    usable = thumbnail_usable(mask_value, block)
    trusted = usable * _reliability(received_value, mask_value, thumbnail, usable, block)
    upsampled = _upsample_bilinear(thumbnail, block)
    weight = _to_pixels(trusted, block) * mask
    return fallback * (1.0 - weight) + upsampled * weight


@keras.saving.register_keras_serializable(package="imuge_tf")
class ThumbnailHiding(keras.layers.Layer):
    """[image, residual] -> residual whose immunized image carries the hidden thumbnail.

    The immunized image `clip(image + residual)` is rounded to 8 bits and snapped to the
    lattice (module docstring); the returned residual is that image minus `image`. The
    gradient passes straight through to the input residual (the snap is a fixed function).
    """

    def __init__(self, step=DEFAULT_STEP, block=DEFAULT_BLOCK, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < step <= 64.0:
            raise ValueError(f"hidden thumbnail step must be in (0, 64] grey levels, got {step}")
        if block < 1:
            raise ValueError(f"hidden thumbnail block must be >= 1, got {block}")
        self.step = float(step)
        self.block = int(block)

    def call(self, inputs):
        image, residual = inputs
        immunized = keras.ops.clip(image + residual, 0.0, 1.0)
        levels = keras.ops.round(immunized * 255.0)
        targets = lattice_targets(levels, message_of(image, self.block), self.step, self.block)
        snapped = snap_to_lattice(levels, targets, self.block) / 255.0
        # Straight-through: the value is the snapped image, the gradient that of `residual`.
        return residual + keras.ops.stop_gradient(snapped - image - residual)

    def compute_output_shape(self, input_shape):
        return input_shape[1]

    def get_config(self):
        return {**super().get_config(), "step": self.step, "block": self.block}
