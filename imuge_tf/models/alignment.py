"""Finding the block mark's grid in a photo that was rotated, cropped or resized after immunizing.

The block mark (`models/blockmark.py`) is read block by block on the photo's own 8 x 8 grid, with
keyed lattice offsets that depend on each block's place in a tile of TILE_BLOCKS x TILE_BLOCKS
blocks. A crop moves the grid (by any number of pixels) and the place in the tile; a quarter
turn moves both too; a resize stretches the grid. Read as received, such a photo carries no
mark at all. `MarkAlignment` finds where the grid went, using nothing but the mark and the key:

- **Crops and quarter turns.** For each of the 4 orientations and each of the 64 sub-block
  offsets, the marked coefficients of a central region are turned into unit phasors
  `exp(2 pi i c / step)`; correlating them with the keyed offsets' phasors over the tile is one
  FFT, which scores every place in the tile at once. The best of the 4 x 64 x TILE_BLOCKS^2
  candidates is the orientation and the crop's offset (modulo the tile, TILE_BLOCKS x 8 px).
- **Resizes.** A resize keeps the low frequencies the mark lives in, so sampling the received
  photo back at the original grid brings the mark back. A resize anchors the grid at the
  photo's corner, so an error in the factor moves a region by the error times its distance
  from the corner: the factor is searched on a geometric grid on a small region at the
  top-left corner, then refined to whole original sizes (height, width) on a larger central
  region, where only the exact size reads the mark. The photo is then brought back to that
  size and read as usual.

Both searches are TensorFlow ops (convolution, FFT, crop-and-resize, gathers), part of the
verifier's serving graph; the camera never needs them.
"""

import numpy as np
import tensorflow as tf

from imuge_tf.models.blockmark import BLOCK, TILE_BLOCKS

# Side (pixels) of the central region searched for crops and quarter turns: 64 x 64 blocks,
# enough for a clear peak over the noise of ~4 million candidates, small enough to be fast.
CROP_SEARCH_SIDE = 512
# Scale search: received / original sizes tried, geometrically spaced, on the top-left
# SCALE_COARSE_SIDE original pixels; the best is refined on SCALE_FINE_SIDE central pixels over
# whole original heights within one grid step and the widths that round to the received width.
SCALE_RANGE = (0.3, 0.995)
SCALE_STEP = 0.003
SCALE_COARSE_SIDE = 160
SCALE_FINE_SIDE = 256
SCALE_FINE_CENTRES = ((0.5, 0.5), (0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75))
# Scores are mean agreements with the keyed lattice (1 marked, about 0 unmarked); a candidate
# is taken when its score reaches these (the noise maxima over all candidates stay far below).
# A small photo's region has few blocks and a wide noise: a crop is also taken only
# CROP_NOISE_SIGMAS standard deviations of its score on unmarked content above 0 (the maximum
# of ~4 million candidates' noise lies about 5.3 of them above).
# The central region on which the sharpening of a resized photo is chosen (pipeline).
SHARPEN_SEARCH_SIDE = 512
CROP_FOUND = 0.12
CROP_NOISE_SIGMAS = 7.0
SCALE_FOUND = 0.07
# The scale search scores each candidate as sampled and sharpened (`sharpen`) by these.
SCALE_SHARPENING = (0.0, 2.0)


def sharpen(images, amount):
    """[N, H, W, C] plus `amount` times their detail (minus a 3 x 3 binomial blur): unsharp
    masking, which undoes much of the blur a downscaling filter spreads the mark with."""
    binomial = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0
    channels = images.shape[-1]
    kernel = tf.constant((binomial[:, :, None, None] * np.eye(channels)[None, None])
                         .astype(np.float32))
    padded = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    return images + amount * (images - tf.nn.conv2d(padded, kernel, 1, "VALID"))


def rotate(images, quarter_turns):
    """[1, H, W, C] turned counter-clockwise by `quarter_turns` x 90 degrees (a tensor or int),
    as `numpy.rot90` turns an H x W x C photo."""
    return tf.image.rot90(images[0], tf.math.floormod(quarter_turns, 4))[None]


class MarkAlignment:
    """The grid searches of one block mark (`BlockMark`)."""

    def __init__(self, mark):
        self.mark = mark
        # The keyed offsets as phasors, transformed once: [k, TILE, TILE] complex.
        phase = 2.0 * np.pi * np.moveaxis(mark.tile, -1, 0) / mark.step
        self._tile_spectrum = np.fft.fft2(np.exp(-1j * phase)).astype(np.complex64)
        self.scales = np.exp(np.arange(np.log(SCALE_RANGE[0]), np.log(SCALE_RANGE[1]),
                                       SCALE_STEP)).astype(np.float32)

    # ------------------------------------------------------------------- crops and turns
    def search_crop(self, levels):
        """[1, H, W, 3] levels -> (found, quarter turns, origin_y, origin_x).

        The received photo is the original turned counter-clockwise by `quarter turns` x 90
        degrees and then cropped; after turning it back, its pixel (0, 0) is the original's
        (origin_y, origin_x), modulo TILE_BLOCKS x 8 pixels. `found`: whether the best
        candidate's score clears CROP_FOUND and the noise of a region this size."""
        found = [self._search_orientation(rotate(levels, -turns)) for turns in range(4)]
        scores = tf.stack([score for score, _, _, _ in found])
        best = tf.argmax(scores, output_type=tf.int32)
        origin_y = tf.gather(tf.stack([y for _, y, _, _ in found]), best)
        origin_x = tf.gather(tf.stack([x for _, _, x, _ in found]), best)
        noise = tf.gather(tf.stack([noise for _, _, _, noise in found]), best)
        score = tf.reduce_max(scores)
        return (tf.logical_and(score >= CROP_FOUND, score >= CROP_NOISE_SIGMAS * noise), best,
                origin_y, origin_x)

    def _search_orientation(self, levels):
        """(score, origin_y, origin_x, noise) of the best crop offset of an upright photo;
        noise: the standard deviation of a score on unmarked content (a phasor's real part
        has variance 1/2)."""
        height, width = tf.shape(levels)[1], tf.shape(levels)[2]
        side_y = tf.maximum(BLOCK, tf.minimum(CROP_SEARCH_SIDE, (height - BLOCK) // BLOCK * BLOCK))
        side_x = tf.maximum(BLOCK, tf.minimum(CROP_SEARCH_SIDE, (width - BLOCK) // BLOCK * BLOCK))
        top, left = (height - side_y - BLOCK) // 2, (width - side_x - BLOCK) // 2
        region = levels[:, top:top + side_y + BLOCK - 1, left:left + side_x + BLOCK - 1]
        # Every block's coefficients at every one of the 64 sub-block offsets: one stride-1
        # convolution, regrouped as [offset (a, b), coefficient, block row, block column].
        coefficients = tf.nn.conv2d(region, tf.constant(self.mark.kernel), 1, "VALID")
        rows, columns = side_y // BLOCK, side_x // BLOCK
        count = coefficients.shape[-1]
        grouped = tf.reshape(coefficients[0], [rows, BLOCK, columns, BLOCK, count])
        grouped = tf.reshape(tf.transpose(grouped, [1, 3, 4, 0, 2]),
                             [BLOCK * BLOCK, count, rows, columns])
        phase = 2.0 * np.pi * grouped / self.mark.step
        phasors = tf.complex(tf.cos(phase), -tf.sin(phase))  # conjugated, see below
        phasors = tf.pad(phasors, [[0, 0], [0, 0], [0, TILE_BLOCKS - rows],
                                   [0, TILE_BLOCKS - columns]])
        # correlation[t] = sum_u z[u] conj(w[u + t]): the inverse FFT of
        # conj(FFT(conj z)) * FFT(conj w), every place t in the tile at once.
        spectrum = tf.math.conj(tf.signal.fft2d(phasors)) * tf.constant(self._tile_spectrum)
        correlation = tf.math.real(tf.signal.ifft2d(spectrum))
        scores = tf.reduce_sum(correlation, axis=1) / tf.cast(count * rows * columns, tf.float32)
        flat = tf.reshape(scores, [-1])
        best = tf.argmax(flat, output_type=tf.int32)
        offset, place = best // (TILE_BLOCKS * TILE_BLOCKS), best % (TILE_BLOCKS * TILE_BLOCKS)
        period = TILE_BLOCKS * BLOCK
        # Region pixel (a, b) starts a block whose place in the tile is (t_y, t_x).
        origin_y = tf.math.floormod(BLOCK * (place // TILE_BLOCKS) - top - offset // BLOCK,
                                    period)
        origin_x = tf.math.floormod(BLOCK * (place % TILE_BLOCKS) - left - offset % BLOCK,
                                    period)
        noise = tf.sqrt(0.5 / tf.cast(count * rows * columns, tf.float32))
        return tf.reduce_max(flat), origin_y, origin_x, noise

    # ------------------------------------------------------------------------------ resizes
    def search_scale(self, levels):
        """[1, h, w, 3] levels of a resized (not cropped, upright) photo -> (score, height,
        width): the original size whose grid the received photo matches best."""
        height, width = tf.shape(levels)[1], tf.shape(levels)[2]
        height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
        scales = tf.constant(self.scales)
        coarse = self._scores(levels, scales, scales, height_f / scales, width_f / scales,
                              SCALE_COARSE_SIDE, centre=None)
        best = tf.gather(scales, tf.argmax(coarse))
        # Whole original heights within a grid step of the best factor, and for each the
        # widths whose resize rounds to the received width.
        centre = height_f / best
        spread = tf.math.ceil(centre * SCALE_STEP) + 1.0
        heights = tf.range(tf.round(centre - spread), tf.round(centre + spread) + 1.0)
        heights = tf.maximum(heights, height_f + 1.0)
        heights = tf.repeat(heights, 3)
        widths = tf.round(width_f * heights / height_f) + tf.tile([-1.0, 0.0, 1.0],
                                                                  [tf.size(heights) // 3])
        # The best of a few regions, so that a tamper over one of them does not hide the mark.
        fine = tf.reduce_max(tf.stack([
            self._scores(levels, height_f / heights, width_f / widths, heights, widths,
                         SCALE_FINE_SIDE, centre) for centre in SCALE_FINE_CENTRES]), axis=0)
        pick = tf.argmax(fine)
        return (tf.reduce_max(fine), tf.cast(tf.gather(heights, pick), tf.int32),
                tf.cast(tf.gather(widths, pick), tf.int32))

    def _scores(self, levels, scale_y, scale_x, original_h, original_w, side, centre):
        """Mean agreement of a side x side region of each candidate original (received /
        original scales and original sizes, [N] each), sampled from `levels`; the region is
        centred at `centre` (fractions of the original height and width) or, if None, at the
        top-left corner."""
        height, width = tf.shape(levels)[1], tf.shape(levels)[2]
        side = int(side)
        blocks = side // BLOCK
        # The region's first row and column in original pixels: central, on the block grid.
        if centre is None:
            top, left = tf.zeros_like(original_h), tf.zeros_like(original_w)
        else:
            top = tf.floor((original_h * centre[0] - side / 2.0) / BLOCK) * BLOCK
            left = tf.floor((original_w * centre[1] - side / 2.0) / BLOCK) * BLOCK
            top = tf.clip_by_value(top, 0.0, tf.maximum(0.0, original_h - side))
            left = tf.clip_by_value(left, 0.0, tf.maximum(0.0, original_w - side))
        # Original pixel i sits at received (i + 0.5) * scale - 0.5 (pixel centres, as Pillow
        # and tf.image.resize resample); +1 for the one-pixel border added below.
        padded = tf.pad(levels, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
        y1 = (top + 0.5) * scale_y + 0.5
        y2 = (top + side - 0.5) * scale_y + 0.5
        x1 = (left + 0.5) * scale_x + 0.5
        x2 = (left + side - 0.5) * scale_x + 0.5
        span_y, span_x = tf.cast(height + 1, tf.float32), tf.cast(width + 1, tf.float32)
        boxes = tf.stack([y1 / span_y, x1 / span_x, y2 / span_y, x2 / span_x], axis=1)
        count = tf.shape(boxes)[0]
        samples = tf.image.crop_and_resize(padded, boxes, tf.zeros([count], tf.int32),
                                           [side, side], method="bilinear")
        return tf.reduce_max(tf.stack([
            self._agreement(sharpen(samples, amount), top, left, blocks)
            for amount in SCALE_SHARPENING]), axis=0)

    def _agreement(self, samples, top, left, blocks):
        """[N] mean agreement of candidate regions [N, side, side, 3] whose first pixels are
        the originals' (top, left)."""
        coefficients = tf.nn.conv2d(samples, tf.constant(self.mark.kernel), BLOCK, "VALID")
        # Each candidate's keyed offsets at its region's place in the tile.
        first_row = tf.cast(top, tf.int32) // BLOCK
        first_column = tf.cast(left, tf.int32) // BLOCK
        steps = tf.range(blocks)
        rows = tf.math.floormod(first_row[:, None] + steps[None], TILE_BLOCKS)
        columns = tf.math.floormod(first_column[:, None] + steps[None], TILE_BLOCKS)
        offsets = tf.gather(tf.constant(self.mark.tile), rows)  # [N, blocks, TILE, k]
        offsets = tf.gather(offsets, columns, axis=2, batch_dims=1)  # [N, blocks, blocks, k]
        phase = (coefficients - offsets) / self.mark.step
        agreement = 1.0 - 4.0 * tf.abs(phase - tf.round(phase))
        return tf.reduce_mean(agreement, axis=[1, 2, 3])
