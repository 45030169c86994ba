"""The self-embedded reference: a coarse copy of the photo, carried in the photo, for recovery.

Recovery needs to know what was inside the tampered area. The immunized photo carries that
knowledge in the data coefficients of its 8 x 8 blocks (`models/blockmark.py`), which come back
after JPEG down to quality 70, so recovery works on shared photos, not only on lossless files.

- **Record.** Every CELL x CELL cell of the photo (from the top-left corner) has a record of
  RECORD_BITS bits: the luminance means of its four 16 x 16 quarters and its two chroma means
  (JPEG's YCbCr), each quantized to VALUE_BITS bits, and two parity bits. The means are
  computed from the photo's whole levels with integer weights, exactly in float32, so that a
  camera's TFLite graph and TensorFlow write the same bits.
- **Two copies, elsewhere.** A cell's 16 blocks carry 64 bits: two slots of one record each. Slot
  k of the cell at (r, c) holds the record of the cell at (r, c) + shift_k (cyclic over the grid
  of cells); the shifts are about half the photo away (keyed), so that the record of a
  tampered object lies where the object is not. A record is lost only where both of its copies
  are tampered.
- **Keyed.** The bits are XOR-ed with a keyed stream, and the shifts depend on the key: without
  it the bits are noise.
- **Erasures, not errors.** Reading uses what the verifier knows: a copy counts only if its 8
  host blocks lie outside the tamper mask, carry the block mark (a wrong key or a pasted area
  reads as unmarked) and its parity bits check. The counted copies are summed as soft bits.
  Cells without a counted copy are filled from decoded neighbours a few cells deep; beyond that
  the cell is reported as not decoded.
- **Reconstruction.** The decoded means are interpolated bilinearly to full resolution and
  converted to RGB: the low frequencies of the lost content, which a learned decoder then
  refines with the surrounding context.

Everything is TensorFlow builtins (convolution, depth-to-space, slicing, floor-mod), so the
camera graph writes the record itself.
"""

import numpy as np
import tensorflow as tf

from imuge_tf.models.blockmark import BLOCK, TILE_BLOCKS, keyed_generator, tiled_over_blocks

CELL = 32  # pixels: one record
QUARTER = CELL // 2  # the luminance means are of 16 x 16 quarters
BLOCKS_PER_CELL = CELL // BLOCK
VALUE_BITS = 5  # each mean quantized to 32 levels of 8
VALUE_STEP = 256.0 / 2**VALUE_BITS
VALUES = 6  # four luminance means, Cb, Cr
PARITY_BITS = 2
RECORD_BITS = VALUES * VALUE_BITS + PARITY_BITS
SLOTS = 2
# A slot's copy counts where the block mark's mean agreement over its host blocks reaches this:
# below what marked content keeps after JPEG 75, above what unmarked content reaches in all but
# rare slots, whose chance records the parity then mostly refuses (a random record passes the
# PARITY_BITS checks 1 time in 2^PARITY_BITS).
HOST_AGREEMENT = 0.3
FILL_CELLS = 3  # cells without a copy are interpolated from decoded cells this close
# `mismatch`: a received cell agrees with a record while each of its values is within this many
# quantization steps (the record's rounding, JPEG down to quality 70 and the immunization's
# own change stay within one).
MISMATCH_STEPS = 2
# `locate` (a cropped photo's original grid): originals up to this many times the crop along
# each side, a sample of this many hosts along each side, and the matches needed.
# A copy agrees with a cell within LOCATE_STEPS quantization steps per value; the grid as
# received is taken where LOCATE_PLAIN_SHARE of the counted copies agree (all but a few, on
# untouched content; a wrong grid agrees only in flat areas).
LOCATE_MAX_GROWTH = 2
LOCATE_SAMPLES_PER_SIDE = 8
LOCATE_STEPS = 1
LOCATE_PLAIN_SHARE = 0.7
LOCATE_MIN_MATCHES = 8.0
LOCATE_MIN_SHARE = 0.1
SHIFT_DENOMINATOR = 256  # keyed shifts are multiples of 1/256 of the grid: exact arithmetic

# JPEG's RGB -> YCbCr weights in 1/256: the means of a quarter are whole-number sums below
# 2^24 (exact in float32) divided by a power of two.
_YCC_WEIGHTS = np.array([[77, -43, 128], [150, -85, -107], [29, 128, -21]], np.float32)


def _quarter_kernel() -> np.ndarray:
    """[16, 16, 3, 3] sums of R, G, B with the YCbCr weights over a quarter."""
    return np.broadcast_to(_YCC_WEIGHTS, (QUARTER, QUARTER, 3, 3)).astype(np.float32)


def _shifted(grid, rows, columns):
    """grid [1, R, C, k] -> out[r, c] = grid[(r + rows) mod R, (c + columns) mod C], with
    slices and concatenations (TFLite has no roll)."""
    grid = tf.concat([grid[:, rows:], grid[:, :rows]], axis=1)
    return tf.concat([grid[:, :, columns:], grid[:, :, :columns]], axis=2)


def _spread(count):
    """Up to LOCATE_SAMPLES_PER_SIDE indices spread evenly over range(count)."""
    samples = tf.minimum(count, LOCATE_SAMPLES_PER_SIDE)
    return tf.cast(tf.round(tf.linspace(0.0, tf.cast(tf.maximum(count - 1, 0), tf.float32),
                                        samples)), tf.int32)


def _normalized_fill(values, weights, steps):
    """Fills cells whose weight is 0 with the weighted mean of their 3 x 3 neighbours,
    `steps` times; returns (values, weights > 0)."""
    for _ in range(steps):
        total = tf.nn.avg_pool2d(values * weights, 3, 1, "SAME")
        count = tf.nn.avg_pool2d(weights, 3, 1, "SAME")
        filled = total / tf.maximum(count, 1e-6)
        values = tf.where(weights > 0, values, filled)
        weights = tf.maximum(weights, tf.cast(count > 0, tf.float32))
    return values, weights


class SelfReference:
    """The self-embedded reference of one key: `payload` for the camera, `read` for recovery."""

    def __init__(self, key=None):
        generator = keyed_generator(key, b"imuge-tf self reference")
        # The whitening stream per host block and data coefficient, tiled like the offsets.
        self.whitening = generator.integers(
            0, 2, (TILE_BLOCKS, TILE_BLOCKS, SLOTS * RECORD_BITS // BLOCKS_PER_CELL**2)
        ).astype(np.float32)
        # Slot 0 about half the photo away in both directions, slot 1 about half the height
        # away and a little across: a compact tamper of up to half the height and width never
        # covers its own records.
        halves = generator.integers(SHIFT_DENOMINATOR * 2 // 5, SHIFT_DENOMINATOR * 3 // 5, 3)
        across = generator.integers(0, SHIFT_DENOMINATOR // 10)
        self.shift_fractions = ((int(halves[0]), int(halves[1])), (int(halves[2]), int(across)))
        weights = np.zeros((RECORD_BITS, VALUES), np.float32)
        for value in range(VALUES):
            for bit in range(VALUE_BITS):
                weights[value * VALUE_BITS + bit, value] = 2.0**bit
        self.value_weights = weights  # bits -> quantized values
        parity = np.zeros((VALUES * VALUE_BITS, PARITY_BITS), np.float32)
        half = VALUES * VALUE_BITS // PARITY_BITS
        for group in range(PARITY_BITS):
            parity[group * half:(group + 1) * half, group] = 1.0
        self.parity_weights = parity

    # ---------------------------------------------------------------------------- geometry
    blocks_per_cell = BLOCKS_PER_CELL

    @staticmethod
    def cells(height, width):
        """Rows and columns of whole cells of a photo."""
        return height // CELL, width // CELL

    def shifts(self, rows, columns):
        """The two slots' shifts over a grid of rows x columns cells."""
        rows_f = tf.cast(rows, tf.float32)
        columns_f = tf.cast(columns, tf.float32)
        shifts = []
        for row_fraction, column_fraction in self.shift_fractions:
            row = tf.cast(tf.floor(rows_f * row_fraction / SHIFT_DENOMINATOR), tf.int32)
            column = tf.cast(tf.floor(columns_f * column_fraction / SHIFT_DENOMINATOR),
                             tf.int32)
            shifts.append((row, column))
        return shifts

    def _whitening(self, rows, columns, place=None):
        """[1, rows, columns, 4] keyed bits over the host blocks (`place`: the tile position
        of the first, for a cropped photo)."""
        return tiled_over_blocks(self.whitening, rows, columns, place)

    # ------------------------------------------------------------------------------ record
    def means(self, photo):
        """[1, H, W, 3] whole levels -> quarter luminance means [1, 2R, 2C, 1] and cell chroma
        means [1, R, C, 2], in levels (exact: sums of whole numbers below 2^24)."""
        height, width = tf.shape(photo)[1], tf.shape(photo)[2]
        rows, columns = self.cells(height, width)
        photo = photo[:, :rows * CELL, :columns * CELL]
        sums = tf.nn.conv2d(photo, tf.constant(_quarter_kernel()), QUARTER, "VALID")
        quarters = sums / float(QUARTER * QUARTER * 256)  # a power of two: exact
        luminance = quarters[..., :1]
        # Chroma: whole-level quarter means first, so that the cell mean is an exact sum.
        chroma = tf.floor(quarters[..., 1:]) + 128.0
        chroma = tf.nn.avg_pool2d(chroma, 2, 2, "VALID")
        return luminance, chroma

    def record(self, photo):
        """[1, H, W, 3] whole levels -> [1, R, C, RECORD_BITS] 0/1 records of its cells."""
        luminance, chroma = self.means(photo)
        quarters = tf.nn.space_to_depth(luminance, 2)  # [1, R, C, 4]
        values = tf.concat([quarters, chroma], axis=-1)
        quantized = tf.clip_by_value(tf.floor(values / VALUE_STEP), 0.0, 2**VALUE_BITS - 1)
        bits = [tf.math.floormod(tf.floor(quantized / 2.0**bit), 2.0)
                for bit in range(VALUE_BITS)]
        # [value, bit] order, as value_weights reads them.
        bits = tf.reshape(tf.stack(bits, axis=-1),
                          tf.concat([tf.shape(values)[:3], [VALUES * VALUE_BITS]], 0))
        return tf.concat([bits, self._parity(bits)], axis=-1)

    def payload(self, photo):
        """[1, H, W, 3] whole levels -> (bits [1, H // 8, W // 8, 4], present [.., 1]): what
        each whole block's data coefficients carry, and where (the blocks of whole cells)."""
        height, width = tf.shape(photo)[1], tf.shape(photo)[2]
        rows, columns = self.cells(height, width)
        record = self.record(photo)
        slots = [_shifted(record, row, column) for row, column in self.shifts(rows, columns)]
        hosted = tf.nn.depth_to_space(tf.concat(slots, axis=-1), BLOCKS_PER_CELL)
        host_rows, host_columns = rows * BLOCKS_PER_CELL, columns * BLOCKS_PER_CELL
        hosted = tf.math.floormod(hosted + self._whitening(host_rows, host_columns), 2.0)
        block_rows, block_columns = height // BLOCK, width // BLOCK
        padding = [[0, 0], [0, block_rows - host_rows], [0, block_columns - host_columns],
                   [0, 0]]
        present = tf.pad(tf.ones_like(hosted[..., :1]), padding)
        return tf.pad(hosted, padding), present

    # -------------------------------------------------------------------------------- read
    def read(self, soft_bits, host_valid, agreement, photo, place=None):
        """Decodes the reference of a received photo.

        Args:
            soft_bits: [1, H // 8, W // 8, 4] the data coefficients' soft bits
                (`BlockMark.read_data`).
            host_valid: [1, H // 8, W // 8, 1] 1 where a block lies outside the tamper mask.
            agreement: [1, H // 8, W // 8, 1] the block mark's agreement per block.
            photo: [1, H, W, 3] the received photo (levels), cut so that its first pixel
                starts a cell.
            place: the tile position of its first block (None: (0, 0), as immunized).

        Returns:
            (reference [1, H, W, 3] levels, decoded [1, H, W, 1] 1 where the reference
            holds a decoded record, copies [1, R, C, 1] how many copies of each cell counted,
            records [1, R, C, RECORD_BITS] the decoded bits).
        """
        height, width = tf.shape(photo)[1], tf.shape(photo)[2]
        total = 0.0
        weight = 0.0
        for bits, counts in self._copies(soft_bits, host_valid, agreement, photo, place):
            total = total + bits * counts
            weight = weight + counts
        hard = tf.cast(total < 0.0, tf.float32)
        decoded = tf.cast(weight > 0, tf.float32)
        return self._reconstruct(self.values(hard), decoded, height, width) + (weight, hard)

    def _hosted(self, soft_bits, host_valid, agreement, height, width, place=None):
        """Per slot, (soft bits [1, R, C, RECORD_BITS], counts [1, R, C, 1]) of the copy each
        cell hosts; counts is 1 where the copy counts (`read`)."""
        rows, columns = self.cells(height, width)
        host_rows, host_columns = rows * BLOCKS_PER_CELL, columns * BLOCKS_PER_CELL
        signs = 1.0 - 2.0 * self._whitening(host_rows, host_columns, place)
        soft = tf.nn.space_to_depth(soft_bits[:, :host_rows, :host_columns] * signs,
                                    BLOCKS_PER_CELL)
        valid = tf.nn.space_to_depth(host_valid[:, :host_rows, :host_columns], BLOCKS_PER_CELL)
        marked = tf.nn.space_to_depth(agreement[:, :host_rows, :host_columns], BLOCKS_PER_CELL)
        half = BLOCKS_PER_CELL * BLOCKS_PER_CELL // SLOTS
        hosted = []
        for slot in range(SLOTS):
            bits = soft[..., slot * RECORD_BITS:(slot + 1) * RECORD_BITS]
            hosts = slice(slot * half, (slot + 1) * half)
            counts = (tf.reduce_min(valid[..., hosts], axis=-1, keepdims=True)
                      * tf.cast(tf.reduce_mean(marked[..., hosts], axis=-1, keepdims=True)
                                >= HOST_AGREEMENT, tf.float32))
            hosted.append((bits, counts * self._parity_checks(bits)))
        return hosted

    def _copies(self, soft_bits, host_valid, agreement, photo, place=None):
        """Per slot, (soft bits [1, R, C, RECORD_BITS], counts [1, R, C, 1]) of each cell's
        copy, at the cell it describes on the original grid (`locate`); counts is 1 where the
        copy counts (`read`), 0 everywhere if the grid was not found."""
        height, width = tf.shape(photo)[1], tf.shape(photo)[2]
        rows, columns = self.cells(height, width)
        hosted = self._hosted(soft_bits, host_valid, agreement, height, width, place)
        grid, found = self.locate(hosted, photo, place)
        copies = []
        for slot, (bits, counts) in enumerate(hosted):
            host_rows = self._along(tf.range(rows), grid[0], grid[2], slot, 0, rows, -1)
            host_columns = self._along(tf.range(columns), grid[1], grid[3], slot, 1, columns,
                                       -1)
            inside = (tf.cast(host_rows >= 0, tf.float32)[:, None]
                      * tf.cast(host_columns >= 0, tf.float32)[None, :])
            take_rows, take_columns = tf.maximum(host_rows, 0), tf.maximum(host_columns, 0)
            moved_bits = tf.gather(tf.gather(bits, take_rows, axis=1), take_columns, axis=2)
            moved_counts = tf.gather(tf.gather(counts, take_rows, axis=1), take_columns, axis=2)
            moved_counts = moved_counts * inside[None, :, :, None] * tf.cast(found, tf.float32)
            copies.append((moved_bits, moved_counts))
        return copies

    def _along(self, cells, original, offset, slot, axis, received, direction):
        """Received index, along one axis, of the cell `direction` (+1) slot `slot`'s copy
        hosted at `cells` describes, or (-1) of the host of the copy describing `cells`, for
        an original grid of `original` cells of which the crop starts at `offset` (broadcast
        together); -1 where that cell lies outside the crop."""
        fraction = self.shift_fractions[slot][axis]
        shift = (original * fraction) // SHIFT_DENOMINATOR
        moved = tf.math.floormod(cells + offset + direction * shift,
                                 tf.maximum(original, 1)) - offset
        return tf.where((moved >= 0) & (moved < received), moved, -1)

    def locate(self, hosted, photo, place=None):
        """The original grid of cells of a received photo, which a crop hides: ([rows,
        columns, row offset, column offset], found).

        First the grid as received (not cropped, or cropped at the bottom and right by less
        than a cell). Else every hypothesis (original rows and columns from the photo's up to
        LOCATE_MAX_GROWTH times it, offsets congruent to `place` modulo the tile, the crop
        inside the original) moves a sample of counted copies to the cells they describe; the
        one under which most copies agree with their cell as received (every value within
        LOCATE_STEPS) wins, if enough do."""
        height, width = tf.shape(photo)[1], tf.shape(photo)[2]
        rows, columns = self.cells(height, width)
        first = (0, 0) if place is None else tuple(
            tf.cast(value, tf.int32) // BLOCKS_PER_CELL for value in place)
        received = self._indices(self.record(photo))[0]  # [R, C, 6]
        sample_rows, sample_columns = (_spread(rows), _spread(columns))
        as_received = (tf.stack([rows, first[0]])[None], tf.stack([columns, first[1]])[None])
        matches, counted = self._matches(hosted, received, sample_rows, sample_columns,
                                         *as_received)
        plain = matches[0, 0] >= tf.maximum(1.0, LOCATE_PLAIN_SHARE * counted[0, 0])

        def search():
            tile_cells = TILE_BLOCKS // BLOCKS_PER_CELL
            row_hypotheses = self._axis_hypotheses(rows, first[0], tile_cells)
            column_hypotheses = self._axis_hypotheses(columns, first[1], tile_cells)
            scores, _ = self._matches(hosted, received, sample_rows, sample_columns,
                                      row_hypotheses, column_hypotheses)
            best = tf.argmax(tf.reshape(scores, [-1]), output_type=tf.int32)
            count = tf.shape(column_hypotheses)[0]
            pick_row, pick_column = best // count, best % count
            sampled = tf.cast(tf.size(sample_rows) * tf.size(sample_columns), tf.float32)
            found = tf.reduce_max(scores) >= tf.maximum(LOCATE_MIN_MATCHES,
                                                        LOCATE_MIN_SHARE * sampled)
            grid = tf.stack([row_hypotheses[pick_row, 0], column_hypotheses[pick_column, 0],
                             row_hypotheses[pick_row, 1], column_hypotheses[pick_column, 1]])
            return grid, found

        return tf.cond(plain, lambda: (tf.stack([rows, columns, first[0], first[1]]),
                                       tf.constant(True)), search)

    def _matches(self, hosted, received, sample_rows, sample_columns, row_hypotheses,
                 column_hypotheses):
        """([Hr, Hc] copies that agree with the cell they describe (`mismatch`'s test, with
        LOCATE_STEPS), [Hr, Hc] copies counted) over the sampled hosts, per (row, column)
        hypothesis."""
        rows, columns = tf.shape(received)[0], tf.shape(received)[1]
        matches = 0.0
        counted = 0.0
        for slot, (bits, counts) in enumerate(hosted):
            values = tf.gather(tf.gather(self._indices(tf.cast(bits < 0.0, tf.float32))[0],
                                         sample_rows), sample_columns, axis=1)  # [sr, sc, 6]
            weight = tf.gather(tf.gather(counts[0, :, :, 0], sample_rows), sample_columns,
                               axis=1)
            target_rows = self._along(sample_rows[None], row_hypotheses[:, :1],
                                      row_hypotheses[:, 1:], slot, 0, rows, 1)
            target_columns = self._along(sample_columns[None], column_hypotheses[:, :1],
                                         column_hypotheses[:, 1:], slot, 1, columns, 1)
            described = tf.gather(received, tf.maximum(target_rows, 0))  # [Hr, sr, C, 6]
            described = tf.gather(described, tf.maximum(target_columns, 0), axis=2)
            described = tf.transpose(described, [0, 2, 1, 3, 4])  # [Hr, Hc, sr, sc, 6]
            inside = (tf.cast(target_rows >= 0, tf.float32)[:, None, :, None]
                      * tf.cast(target_columns >= 0, tf.float32)[None, :, None, :])
            inside = inside * weight[None, None]
            far = tf.reduce_max(tf.abs(described - values[None, None]), axis=-1)
            agree = tf.cast(far <= LOCATE_STEPS, tf.float32)
            matches = matches + tf.reduce_sum(agree * inside, axis=[2, 3])
            counted = counted + tf.reduce_sum(inside, axis=[2, 3])
        return matches, counted

    @staticmethod
    def _axis_hypotheses(received, first, tile_cells):
        """[N, 2] (original cells, offset) along one axis: originals of `received` up to
        LOCATE_MAX_GROWTH times it; offsets `first` + k tiles that leave the crop inside."""
        originals = tf.range(received, LOCATE_MAX_GROWTH * received + 1)
        steps = tf.range(0, LOCATE_MAX_GROWTH * received // tile_cells + 2)
        original = tf.repeat(originals, tf.size(steps))
        offset = first + tf.tile(steps, [tf.size(originals)]) * tile_cells
        keep = offset + received <= original
        return tf.boolean_mask(tf.stack([original, offset], axis=1), keep)

    def mismatch(self, soft_bits, host_valid, agreement, photo, place=None):
        """[1, R, C, 1]: 1 where a cell's content is not what its record was made from: every
        copy of the record that counts (`read`) has a value more than MISMATCH_STEPS
        quantization steps away from the cell as received, and one copy at least counts.

        This binds the block mark to the content: blocks spliced in from another photo
        immunized with the same key carry a valid mark, but not this photo's records. A copy
        hosted in such blocks describes another photo; the other copy, hosted elsewhere,
        still agrees, so the cell it describes is not flagged."""
        received = self._indices(self.record(photo))
        agreeing = 0.0
        counted = 0.0
        for bits, counts in self._copies(soft_bits, host_valid, agreement, photo, place):
            indices = self._indices(tf.cast(bits < 0.0, tf.float32))
            far = tf.reduce_max(tf.abs(indices - received), axis=-1, keepdims=True)
            agreeing = agreeing + counts * tf.cast(far <= MISMATCH_STEPS, tf.float32)
            counted = counted + counts
        return tf.cast(tf.logical_and(counted > 0, agreeing == 0), tf.float32)

    def _indices(self, bits):
        """[.., RECORD_BITS] 0/1 -> [.., 6] the quantized values (0 .. 2^VALUE_BITS - 1)."""
        return tf.matmul(bits, tf.constant(self.value_weights))

    def values(self, bits):
        """[.., RECORD_BITS] 0/1 records -> [.., 6] their values in levels (quantization
        cell centres)."""
        return (tf.matmul(bits, tf.constant(self.value_weights)) + 0.5) * VALUE_STEP

    def expected(self, photo):
        """[B, H, W, 3] whole levels -> [B, H, W, 3]: the reference read back from an
        untouched copy of this photo (every record decoded)."""
        height, width = tf.shape(photo)[1], tf.shape(photo)[2]
        values = self.values(self.record(photo))
        return self._reconstruct(values, tf.ones_like(values[..., :1]), height, width)[0]

    def _parity(self, value_bits):
        """[.., VALUES * VALUE_BITS] 0/1 -> [.., PARITY_BITS] their parity bits."""
        return tf.math.floormod(tf.matmul(value_bits, tf.constant(self.parity_weights)), 2.0)

    def _parity_checks(self, soft):
        """[.., RECORD_BITS] soft bits -> [.., 1] 1 where both parity bits agree."""
        hard = tf.cast(soft < 0.0, tf.float32)
        parity = self._parity(hard[..., :VALUES * VALUE_BITS])
        agree = tf.cast(tf.equal(parity, hard[..., VALUES * VALUE_BITS:]), tf.float32)
        return tf.reduce_min(agree, axis=-1, keepdims=True)

    def _reconstruct(self, values, decoded, height, width):
        """Cell values [1, R, C, 6] -> (RGB levels [1, H, W, 3], decoded [1, H, W, 1])."""
        rows, columns = self.cells(height, width)
        luminance = tf.nn.depth_to_space(values[..., :4], 2)
        chroma = values[..., 4:]
        luminance, _ = _normalized_fill(
            luminance, tf.image.resize(decoded, tf.stack([2 * rows, 2 * columns]),
                                       method="nearest"), 2 * FILL_CELLS)
        chroma, decoded = _normalized_fill(chroma, decoded, FILL_CELLS)
        size = tf.stack([rows * CELL, columns * CELL])
        luminance = tf.image.resize(luminance, size, method="bilinear")
        chroma = tf.image.resize(chroma, size, method="bilinear") - 128.0
        red = luminance + 1.402 * chroma[..., 1:]
        green = luminance - 0.344136 * chroma[..., :1] - 0.714136 * chroma[..., 1:]
        blue = luminance + 1.772 * chroma[..., :1]
        rgb = tf.clip_by_value(tf.concat([red, green, blue], axis=-1), 0.0, 255.0)
        covered = tf.image.resize(decoded, size, method="nearest")
        padding = [[0, 0], [0, height - rows * CELL], [0, width - columns * CELL], [0, 0]]
        # Edge strips narrower than a cell take the nearest cell's values.
        return (tf.pad(rgb, padding, mode="SYMMETRIC"),
                tf.pad(covered, padding, mode="SYMMETRIC"))
