"""The inference pipeline, defined once as graph code: immunize, verify (analyse), recover.

`InferencePipeline` holds the three networks and every inference setting, and its methods are
pure TensorFlow on float 8-bit levels, [1, H, W, 3] at the photo's own size and aspect ratio.
The Python facade (`imuge_tf.inference.Imuge`) is NumPy I/O around them; the TF Serving model
and the camera's TFLite model (`imuge_tf.export`) are exports of the same methods, so the three
cannot drift apart.

- **Working scale.** The networks see the photo at a working size whose long side is
  `image_size` and whose short side follows the aspect ratio (a multiple of 16, as the U-Nets
  need); `working_view` brings a photo there with box averaging by a whole factor and then
  bilinear resampling by less than 4x, ops that TFLite has as builtins.
- **Immunize.** The encoder's residual, upsampled bilinearly (smooth: no cells or tiles) and
  scaled by `residual_gain`, is added at full resolution; then the block mark
  (`models/blockmark.py`) is written into the photo's own 8 x 8 grid and the result rounded.
  The encoder's fixed layers are left out (`learned_residual`): the carrier pattern and the
  hidden thumbnail's lattice (`models/carrier.py`, `models/hiding.py`) live in cells of 2
  working pixels, which at full size are visible cells of width / 64 px (BENCHMARKS.md,
  `native_quality`, measured both); recovery fills the hole without the thumbnail.
- **Analyse.** Where the block mark is present (at least MARK_PRESENT of the blocks carry it),
  the tamper map is the mark's absence at native resolution, block by block, plus the cells
  whose content disagrees with their own records (content binding). Where it is not, the
  grid is searched for a quarter turn and a crop, then for a resize (`models/alignment.py`),
  and the photo is read on the grid found; the maps come back in the received frame. Where no
  keyed mark is found, the photo is not immunized: the learned verifier's map is reported as
  the probability, but it knows no key and makes no verdict. The verdict follows from the
  share of the photo flagged.
- **Recover.** The photo's self-embedded reference (`models/reference.py`: cell means written
  by `immunize` into the data coefficients of the blocks, two keyed copies about half the photo
  away, their placement found again after a crop) is read from the blocks outside the
  verifier's mask and, where it decoded, refined by
  the reference refiner (`models/refiner.py`) and put inside the mask grown by RECOVERY_MARGIN
  working pixels. Where no record decoded, the decoder at the working scale (push-pull
  pre-fill, learned correction) fills in.

The module is over 500 lines because it is the one graph the exports trace: the analysis's
cases (mark in place, realigned after a turn or crop, brought back after a resize, no mark)
and recovery read the same block grid with the thresholds below and fill the same result, so
split apart each piece would reach back into the others' settings.
"""

import tensorflow as tf

from imuge_tf.models import alignment
from imuge_tf.models.blockmark import BLOCK, TILE_BLOCKS, BlockMark
from imuge_tf.models.carrier import CarrierEmbedding
from imuge_tf.models.hiding import ThumbnailHiding
from imuge_tf.models.reference import SelfReference

VERDICTS = ("intact", "tampered", "not_immunized")
FLAG_PROBABILITY = 0.5
# `recover` redraws the verifier's mask grown by this many working-size pixels: a tampered
# pixel the mask misses keeps pasted content, while a redrawn untampered one costs little.
RECOVERY_MARGIN = 4
# Block mark read-out: the agreement of a block with the keyed lattice, averaged over its 3 x 3
# neighbourhood, maps linearly to a tamper probability from 1 at MARK_ABSENT to 0 at
# MARK_PRESENT_LEVEL: the first above the usual chance agreement of unmarked content, the
# second below what marked content keeps through the JPEG qualities the verdicts must survive
# (BENCHMARKS.md, `verdicts`, checks the outcome).
MARK_WINDOW = 3
MARK_ABSENT = 0.12
MARK_PRESENT_LEVEL = 0.42
MARK_OPENING = 2  # blocks: removes isolated flagged blocks from the mask's core
# For the verdict, a flagged area under WIDE_OPENING_BELOW of the photo must hold a square of
# VERDICT_OPENING blocks a side: strong JPEG can leave a few scattered blocks of a high-contrast
# edge unreadable (a cross of 5 blocks, not a 3 x 3 square), while a tamper worth reporting
# covers squares of them or a larger share.
VERDICT_OPENING = 3
WIDE_OPENING_BELOW = 0.01
# The neighbourhood mean that makes detection reliable also pulls the blocks at a tamper's edge
# towards their marked neighbours; the mask takes back, next to flagged blocks, those that are
# flat (painted over) or whose own agreement is below this (under what a marked block keeps
# after JPEG, above the chance agreement of most unmarked blocks).
MARK_OWN_ABSENT = 0.4
# Content binding (`_content`): cells whose records disagree must form a CONTENT_OPENING x
# CONTENT_OPENING square of cells, and count only CONTENT_MARGIN blocks away from the mark's
# own flags.
CONTENT_OPENING = 2
CONTENT_MARGIN = 4
# Share of blocks that must carry the mark for the mark to be the evidence (well above the
# share that carries it by chance in a photo that was never immunized), and how far above
# chance the photo's mean agreement must be.
MARK_PRESENT = 0.05
MARK_SIGNIFICANCE = 6.0
# Verdict thresholds (shares of flagged pixels) when the mark is the evidence: an untouched
# immunized photo flags none, a never-immunized one all of it.
MARK_THRESHOLDS = {"intact_max_fraction": 0.002, "not_immunized_min_fraction": 0.9}
DEFAULT_RESIDUAL_GAIN = 1.0
# A resized photo brought back to its original grid: the median block agreement of a photo as
# saved (the levels above are for it), the wider window that averages its noisier blocks, and
# the opening (blocks) that a flagged area must survive.
RESAMPLED_STRENGTH = 1.4
RESAMPLED_WINDOW = 7
RESAMPLED_OPENING = 4
RESAMPLED_MIN_WEIGHT = 0.1
RESAMPLED_SHARPENING = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0)
# Its verdict: resampling leaves a few textured areas unreadable, so tampers under 1 % of a
# resized photo are not reported.
RESAMPLED_THRESHOLDS = {"intact_max_fraction": 0.01, "not_immunized_min_fraction": 0.9}


def pipeline_function(method, input_signature):
    """`method` of the pipeline as a tf.function over `input_signature`, without AutoGraph.

    The pipeline is written with explicit `tf.cond` / `tf.while_loop` and Python control flow
    only over Python values, so AutoGraph has nothing to convert; left on, it re-parses and
    rewrites the source of every function the trace reaches, a large part of the first call
    that BENCHMARKS.md `cli_startup` times. The facade builds its graphs with this function; the
    serving graph and the camera model get the same from `keras.export.ExportArchive`, which
    traces its endpoints without AutoGraph too.
    """
    return tf.function(method, input_signature=input_signature, autograph=False)


def learned_residual(encoder):
    """The encoder's learned residual: the model up to its fixed carrier (`CarrierEmbedding`)
    or hidden-thumbnail (`ThumbnailHiding`) layer, sharing its weights; the encoder itself
    when it has neither."""
    import keras

    layers = getattr(encoder, "layers", None) or []
    carriers = [layer for layer in layers if isinstance(layer, CarrierEmbedding)]
    hidings = [layer for layer in layers if isinstance(layer, ThumbnailHiding)]
    if carriers:
        output = carriers[-1].input
    elif hidings:
        output = hidings[-1].input[1]
    else:
        return encoder
    return keras.Model(encoder.inputs, output, name=f"{encoder.name}_learned")


def working_size(height, width, long_side):
    """(h, w): long side `long_side`, the short side following the aspect ratio, both
    multiples of 16 (at least 16). Works on Python ints and on scalar tensors."""
    if isinstance(height, int) and isinstance(width, int):
        scale = long_side / max(height, width)
        return (max(16, int(round(height * scale / 16.0)) * 16),
                max(16, int(round(width * scale / 16.0)) * 16))
    height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    scale = float(long_side) / tf.maximum(height_f, width_f)

    def side(length):
        return tf.maximum(16, tf.cast(tf.round(length * scale / 16.0), tf.int32) * 16)

    return side(height_f), side(width_f)


def _box_pool(images, factor):
    """[1, H, W, C] -> [1, H // f, W // f, C]: the mean of each f x f box (the last partial
    row and column of boxes is dropped). Rank-4 reshapes only, for TFLite."""
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    channels = images.shape[-1]
    rows, columns = height // factor, width // factor
    x = images[0, : rows * factor, : columns * factor]
    x = tf.reduce_mean(tf.reshape(x, [rows, factor, columns * factor, channels]), axis=1)
    x = tf.reduce_mean(tf.reshape(x, [rows, columns, factor, channels]), axis=2)
    return x[None]


def working_view(images, size):
    """[1, H, W, C] -> [1, h, w, C] at `size`: box average by the largest whole factor that
    leaves at least twice the target size, then bilinear resampling (half-pixel centres)."""
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    factor = tf.maximum(1, tf.minimum(height // (2 * size[0]), width // (2 * size[1])))
    pooled = _box_pool(images, factor)
    return tf.image.resize(pooled, tf.stack(size), method="bilinear", antialias=False)


def full_view(images, height, width, method="bilinear"):
    """[1, h, w, C] brought up to [1, H, W, C] (bilinear: smooth, no cells)."""
    return tf.image.resize(images, tf.stack([height, width]), method=method, antialias=False)


def opening(masks, kernel_size):
    """Binary opening of [1, H, W, 1] 0/1 masks with a k x k square (erode, then dilate)."""
    k = int(kernel_size)
    if k <= 1:
        return masks
    # Erosion: 1 at p where the whole square starting at p is 1 (its top-left corner at p).
    padded = tf.pad(masks, [[0, 0], [0, k - 1], [0, k - 1], [0, 0]])
    eroded = -tf.nn.max_pool2d(-padded, k, 1, "VALID")
    padded = tf.pad(eroded, [[0, 0], [k - 1, 0], [k - 1, 0], [0, 0]])
    return tf.nn.max_pool2d(padded, k, 1, "VALID")


def grow_mask(masks, margin):
    """[1, h, w, 1] 0/1 masks grown by `margin` pixels (a square max filter)."""
    if margin <= 0:
        return masks
    return tf.nn.max_pool2d(masks, 2 * margin + 1, strides=1, padding="SAME")


def _thresholds(thresholds):
    """The verdict thresholds of `analyse`'s dict: [intact_max, not_immunized_min]."""
    return tf.constant([thresholds["intact_max_fraction"],
                        thresholds["not_immunized_min_fraction"]], tf.float32)


def _geometry(turns, origin_y, origin_x, scale, height, width):
    """The geometry entries of `analyse`'s dict."""
    return {"quarter_turns": tf.cast(turns, tf.int32),
            "origin": tf.cast(tf.stack([origin_y, origin_x]), tf.int32),
            "scale": tf.cast(scale, tf.float32),
            "original_size": tf.cast(tf.stack([height, width]), tf.int32)}


class InferencePipeline:
    """The networks and settings of one model, and the graph code that uses them.

    Args:
        encoder, verifier, decoder: the Keras networks (working scale).
        image_size: long side of the working scale.
        decoder_prefill: as the model was trained.
        residual_gain: scale of the encoder's residual at full resolution.
        key: the block mark's key (None: the public demo key).
        network_thresholds: verdict thresholds of the learned verifier (imuge.json).
        mark_step, mark_coefficients: the block mark's lattice (models/blockmark.py).
        refiner: the reference refiner (models/refiner.py), or None to use the decoded
            reference as it is.
    """

    def __init__(self, encoder, verifier, decoder, *, image_size, decoder_prefill=False,
                 residual_gain=DEFAULT_RESIDUAL_GAIN, key=None, network_thresholds=None,
                 mark_step=None, mark_coefficients=None, refiner=None):
        from imuge_tf.models import blockmark

        self.encoder = learned_residual(encoder)
        self.verifier = verifier
        self.decoder = decoder
        self.refiner = refiner
        self.image_size = int(image_size)
        self.decoder_prefill = bool(decoder_prefill)
        self.residual_gain = float(residual_gain)
        self.mark = BlockMark(
            key, step=mark_step or blockmark.DEFAULT_STEP,
            coefficients=mark_coefficients or blockmark.DEFAULT_COEFFICIENTS)
        self.reference = SelfReference(key)
        self.alignment = alignment.MarkAlignment(self.mark)
        self.network_thresholds = dict(network_thresholds or {})

    # ------------------------------------------------------------------------------ pieces
    def working_size(self, height, width):
        return working_size(height, width, self.image_size)

    def working(self, levels):
        """[1, H, W, 3] levels -> the networks' input, [1, h, w, 3] in [0, 1]."""
        height, width = tf.shape(levels)[1], tf.shape(levels)[2]
        return working_view(levels / 255.0, self.working_size(height, width))

    # ---------------------------------------------------------------------------- immunize
    def immunize(self, levels):
        """[1, H, W, 3] float 8-bit levels -> the immunized photo, same size, whole levels."""
        height, width = tf.shape(levels)[1], tf.shape(levels)[2]
        residual = self.encoder(self.working(levels), training=False)
        residual = full_view(residual, height, width) * (255.0 * self.residual_gain)
        bits, present = self.reference.payload(levels)
        return self.mark.embed(levels, residual, bits, present)

    # ----------------------------------------------------------------------------- analyse
    def mark_probability(self, levels):
        """[1, H // 8, W // 8, 1]: the tamper probability of each whole block from the mark."""
        return self._mark_evidence(levels)[1]

    def _mark_evidence(self, levels):
        """(whether each block on its own looks unmarked, its tamper probability from its
        neighbourhood)."""
        return self._evidence(*self.mark.read(levels))

    @staticmethod
    def _evidence(agreement, flat, window=MARK_WINDOW, strength=1.0, weight=None):
        """`_mark_evidence` from the mark's read-out (`BlockMark.read`). A resampled photo's
        mark is weaker (`strength`: its agreement relative to a photo as saved) and noisier
        per block: its levels scale with the strength and a wider `window` averages, each
        block by its `weight` (`BlockMark.read_resampled`); a window with almost no weight
        is not evidence of a tamper."""
        unmarked = tf.maximum(flat, tf.cast(agreement < MARK_OWN_ABSENT * strength, tf.float32))
        if weight is None:
            smooth = tf.nn.avg_pool2d(agreement, window, 1, "SAME")  # excludes the padding
        else:
            total = tf.nn.avg_pool2d(agreement * weight, window, 1, "SAME")
            mass = tf.nn.avg_pool2d(weight, window, 1, "SAME")
            smooth = tf.where(mass >= RESAMPLED_MIN_WEIGHT, total / tf.maximum(mass, 1e-6),
                              MARK_PRESENT_LEVEL * strength)
            unmarked = unmarked * tf.cast(weight > 0.0, tf.float32)
        probability = tf.clip_by_value((MARK_PRESENT_LEVEL * strength - smooth)
                                       / ((MARK_PRESENT_LEVEL - MARK_ABSENT) * strength),
                                       0.0, 1.0)
        return unmarked, probability

    def is_immunized(self, levels):
        """Whether the photo as it is carries the block mark (a scalar bool)."""
        agreement, flat = self.mark.read(levels)
        return self._mark_present(self._evidence(agreement, flat)[1], agreement)

    @staticmethod
    def _mark_present(blocks, agreement):
        """Whether the photo carries the block mark: the share of blocks whose tamper
        probability is low reaches MARK_PRESENT, and the mean agreement over the photo stands
        MARK_SIGNIFICANCE standard deviations above what unmarked content gives by chance (a
        block's agreement has variance 1/12 there). The second part matters on small photos,
        where a few blocks match the lattice by chance."""
        share = tf.reduce_mean(tf.cast(blocks < FLAG_PROBABILITY, tf.float32))
        count = tf.cast(tf.size(agreement), tf.float32)
        chance = tf.sqrt(1.0 / (12.0 * tf.maximum(count, 1.0)))
        return tf.logical_and(share >= MARK_PRESENT,
                              tf.reduce_mean(agreement) >= MARK_SIGNIFICANCE * chance)

    def _blocks_to_pixels(self, blocks, height, width, top=0, left=0):
        """Block map [1, rows, cols, 1] -> [1, H, W, 1], each block over its 8 x 8 pixels and
        the partial blocks at the edges (`top` rows and `left` columns before the first whole
        block, the rest after the last) like their neighbours."""
        rows, columns = tf.shape(blocks)[1], tf.shape(blocks)[2]
        pixels = tf.image.resize(blocks, tf.stack([rows * BLOCK, columns * BLOCK]),
                                 method="nearest")
        return tf.pad(pixels, [[0, 0], [top, height - top - rows * BLOCK],
                               [left, width - left - columns * BLOCK], [0, 0]],
                      mode="SYMMETRIC")

    def _verdict(self, flagged, found, thresholds):
        intact_max, not_immunized_min = thresholds
        return tf.where(flagged >= not_immunized_min, 2,
                        tf.where(flagged < intact_max, 0, tf.where(found, 1, 0)))

    def analyse(self, levels):
        """[1, H, W, 3] levels -> dict of the verdict (index into VERDICTS), the probability
        and mask at [H, W], the share flagged, the threshold used, the evidence (1: the block
        mark, 0: none found; the learned verifier's map is then the probability) and the
        geometry found: quarter turns, origin (the received photo's first pixel in the upright
        original, modulo the mark's tile), scale (received / original) and original size."""
        height, width = tf.shape(levels)[1], tf.shape(levels)[2]
        agreement, flat = self.mark.read(levels)
        unmarked, blocks = self._evidence(agreement, flat)
        as_received = self._mark_present(blocks, agreement)
        return tf.cond(
            as_received,
            lambda: {**self._from_mark(unmarked, blocks, height, width,
                                       content=self._content(levels, agreement, blocks)),
                     **_geometry(0, 0, 0, 1.0, height, width)},
            lambda: self._realigned(levels))

    def _content(self, levels, agreement, blocks, place=None):
        """[1, rows, cols, 1] blocks of the cells whose content is not what their records
        were made from (`SelfReference.mismatch`), read from the hosts the mark vouches for.
        `levels` starts a block whose tile position is `place` (None: (0, 0)); it is cut to
        the next cell. Cells flagged alone are left out: a splice covers several, while a
        record read wrong (both copies, after strong JPEG) is one."""
        rows, columns = tf.shape(blocks)[1], tf.shape(blocks)[2]
        per_cell = self.reference.blocks_per_cell
        place = (0, 0) if place is None else place
        extra = [tf.math.floormod(-tf.cast(value, tf.int32), per_cell) for value in place]
        cut_place = tuple(tf.math.floormod(tf.cast(value, tf.int32) + more, TILE_BLOCKS)
                          for value, more in zip(place, extra))

        def mismatched():
            flagged = tf.cast(blocks > FLAG_PROBABILITY, tf.float32)
            hosts = (1.0 - tf.nn.max_pool2d(flagged, 3, 1, "SAME"))[:, extra[0]:, extra[1]:]
            cut = levels[:, extra[0] * BLOCK:, extra[1] * BLOCK:]
            cells = self.reference.mismatch(self.mark.read_data(cut, cut_place), hosts,
                                            agreement[:, extra[0]:, extra[1]:], cut,
                                            cut_place)
            cells = opening(cells, CONTENT_OPENING)
            cell_blocks = tf.image.resize(cells, tf.shape(cells)[1:3] * per_cell,
                                          method="nearest")
            return tf.pad(cell_blocks, [
                [0, 0], [extra[0], rows - extra[0] - tf.shape(cell_blocks)[1]],
                [extra[1], columns - extra[1] - tf.shape(cell_blocks)[2]], [0, 0]])

        # A photo smaller than one cell has no records to compare.
        return tf.cond(tf.minimum(rows - extra[0], columns - extra[1]) >= per_cell,
                       mismatched, lambda: tf.zeros_like(blocks))

    def _realigned(self, levels):
        """`analyse` of a photo whose grid is not where it was immunized: turned and cropped,
        else resized, else not immunized with this key at all."""
        found, turns, origin_y, origin_x = self.alignment.search_crop(levels)
        return tf.cond(found,
                       lambda: self._from_crop(levels, turns, origin_y, origin_x),
                       lambda: self._resized(levels))

    def _from_crop(self, levels, turns, origin_y, origin_x):
        upright = alignment.rotate(levels, -turns)
        skip_y, skip_x = tf.math.floormod(-origin_y, BLOCK), tf.math.floormod(-origin_x, BLOCK)
        cropped = upright[:, skip_y:, skip_x:]
        place = (tf.math.floormod((origin_y + skip_y) // BLOCK, TILE_BLOCKS),
                 tf.math.floormod((origin_x + skip_x) // BLOCK, TILE_BLOCKS))
        agreement, flat = self.mark.read(cropped, place)
        unmarked, blocks = self._evidence(agreement, flat)
        height, width = tf.shape(upright)[1], tf.shape(upright)[2]
        content = self._content(cropped, agreement, blocks, place)
        found = self._from_mark(unmarked, blocks, height, width, skip_y, skip_x,
                                content=content)
        for name in ("probability", "mask"):
            turned = alignment.rotate(tf.cast(found[name], tf.float32)[None, :, :, None], turns)
            found[name] = tf.cast(turned[0, :, :, 0], found[name].dtype)
        return {**found, **_geometry(turns, origin_y, origin_x, 1.0, height, width)}

    def _resized(self, levels):
        score, original_height, original_width = self.alignment.search_scale(levels)
        return tf.cond(score >= alignment.SCALE_FOUND,
                       lambda: self._from_scale(levels, original_height, original_width),
                       lambda: self._from_network(levels))

    def _from_scale(self, levels, original_height, original_width):
        height, width = tf.shape(levels)[1], tf.shape(levels)[2]
        original = self._sharpened(full_view(levels, original_height, original_width,
                                             method="bicubic"))
        flat = self.mark.read(original)[1]
        agreement, weight = self.mark.read_resampled(original)
        # The median of the blocks read (robust to a tamper of less than half the photo)
        # against a photo as saved.
        ordered = tf.sort(tf.boolean_mask(tf.reshape(agreement, [-1]),
                                          tf.reshape(weight, [-1]) > 0.0))
        median = tf.cond(tf.size(ordered) > 0, lambda: ordered[tf.size(ordered) // 2],
                         lambda: tf.constant(0.0))
        strength = tf.clip_by_value(median / RESAMPLED_STRENGTH, 0.05, 1.0)
        unmarked, blocks = self._evidence(agreement, flat, RESAMPLED_WINDOW, strength, weight)
        found = self._from_mark(unmarked, blocks, original_height, original_width,
                                opening_blocks=RESAMPLED_OPENING,
                                thresholds=RESAMPLED_THRESHOLDS, open_always=True)
        size = tf.stack([height, width])
        found["probability"] = tf.image.resize(found["probability"][None, :, :, None], size)[
            0, :, :, 0]
        found["mask"] = tf.image.resize(tf.cast(found["mask"], tf.float32)[None, :, :, None],
                                        size, method="nearest")[0, :, :, 0] > 0.5
        scale = tf.cast(height, tf.float32) / tf.cast(original_height, tf.float32)
        return {**found, **_geometry(0, 0, 0, scale, original_height, original_width)}

    def _sharpened(self, levels):
        """A resampled photo brought back to its size, sharpened (unsharp masking with a 3 x 3
        binomial blur) by the amount of RESAMPLED_SHARPENING under which the mark reads best
        on a central region: a downscaling filter blurs the mark's coefficients into their
        neighbours, and sharpening undoes much of it."""
        height, width = tf.shape(levels)[1], tf.shape(levels)[2]
        side = alignment.SHARPEN_SEARCH_SIDE
        top = tf.maximum(0, (height - side) // 2) // BLOCK * BLOCK
        left = tf.maximum(0, (width - side) // 2) // BLOCK * BLOCK
        region = levels[:, top:top + side, left:left + side]
        place = (top // BLOCK, left // BLOCK)
        scores = tf.stack([tf.reduce_mean(self.mark.read(alignment.sharpen(region, amount),
                                                         place)[0])
                           for amount in RESAMPLED_SHARPENING])
        amount = tf.gather(tf.constant(RESAMPLED_SHARPENING, tf.float32), tf.argmax(scores))
        return alignment.sharpen(levels, amount)

    def _from_mark(self, unmarked, blocks, height, width, top=0, left=0,
                   opening_blocks=VERDICT_OPENING, thresholds=None, content=None,
                   open_always=False):
        """The verdict and maps from the mark's block probabilities; `content` ([1, rows,
        cols, 1]) adds the cells found spliced (`_content`) where the mark flags nothing
        near (next to a flagged area the mark's own edge is finer than a cell)."""
        thresholds = thresholds or MARK_THRESHOLDS
        flags = tf.cast(blocks > FLAG_PROBABILITY, tf.float32)
        # The opening holds back areas too small to matter on this photo (a few blocks that
        # strong JPEG left unreadable); flags over a larger share of it count as they are
        # (a small photo's tamper: its neighbourhood mean flags only the tamper's core).
        opened = opening(flags, opening_blocks)
        if not open_always:
            opened = tf.cond(tf.reduce_mean(flags) >= WIDE_OPENING_BELOW, lambda: flags,
                             lambda: opened)
        flagged_blocks = opened
        if content is not None:
            content = content * (1.0 - grow_mask(flagged_blocks, CONTENT_MARGIN))
            flagged_blocks = tf.maximum(flagged_blocks, content)
        flagged = tf.reduce_mean(flagged_blocks)
        core = opening(flagged_blocks, MARK_OPENING)
        # A tamper only a few blocks across may be thinner than the opening: then its flags
        # are the core.
        core = tf.cond(tf.reduce_any(core > 0.5), lambda: core, lambda: flagged_blocks)
        edge = grow_mask(core, 1) * unmarked
        refined = tf.maximum(core, edge)
        verdict = self._verdict(flagged, tf.reduce_any(refined > 0.5),
                                (thresholds["intact_max_fraction"],
                                 thresholds["not_immunized_min_fraction"]))
        refined = tf.where(verdict == 2, tf.ones_like(refined),
                           tf.where(verdict == 0, tf.zeros_like(refined), refined))
        probability = self._blocks_to_pixels(blocks, height, width, top, left)
        mask = self._blocks_to_pixels(refined, height, width, top, left)
        return {"verdict": tf.cast(verdict, tf.int32), "probability": probability[0, :, :, 0],
                "mask": mask[0, :, :, 0] > 0.5, "flagged_fraction": flagged,
                "threshold": tf.constant(FLAG_PROBABILITY, tf.float32),
                "thresholds": _thresholds(thresholds),
                "evidence": tf.constant(1, tf.int32)}

    def _from_network(self, levels):
        """No keyed mark under any geometry: the photo is `not_immunized` (with this key).
        The learned verifier knows no key, so its map cannot make a verdict (a public pattern
        or another photo's residual would fool it); it is reported as the probability."""
        height, width = tf.shape(levels)[1], tf.shape(levels)[2]
        probability = self.verifier(self.working(levels), training=False)
        flagged = tf.reduce_mean(tf.cast(probability > FLAG_PROBABILITY, tf.float32))
        full_probability = tf.clip_by_value(full_view(probability, height, width), 0.0, 1.0)
        return {"verdict": tf.constant(2, tf.int32),
                "probability": full_probability[0, :, :, 0],
                "mask": tf.ones([height, width], tf.bool), "flagged_fraction": flagged,
                "threshold": tf.constant(FLAG_PROBABILITY, tf.float32),
                "thresholds": _thresholds({**MARK_THRESHOLDS, **self.network_thresholds}),
                "evidence": tf.constant(0, tf.int32),
                **_geometry(0, 0, 0, 1.0, height, width)}

    # ----------------------------------------------------------------------------- recover
    def decoder_mask(self, mask):
        """[1, H, W, 1] 0/1 -> the decoder's [1, h, w, 1] mask: a working pixel with any
        tampered content is tampered (the decoder must not trust mixed content)."""
        height, width = tf.shape(mask)[1], tf.shape(mask)[2]
        small = working_view(mask, self.working_size(height, width))
        return tf.cast(small > 0.05, tf.float32)

    def recovery_mask(self, mask):
        """[1, H, W, 1] 0/1 -> the area recovery redraws: the mask grown by RECOVERY_MARGIN
        working pixels."""
        height, width = tf.shape(mask)[1], tf.shape(mask)[2]
        grown = grow_mask(self.decoder_mask(mask), RECOVERY_MARGIN)
        return tf.maximum(mask, tf.cast(full_view(grown, height, width) >= 0.5, tf.float32))

    def recover(self, levels, mask, tampered=None, quarter_turns=0, origin=None):
        """[1, H, W, 3] levels and a [1, H, W, 1] 0/1 mask -> the photo with the content
        inside the mask reconstructed (whole levels; pixels outside the mask unchanged).

        `tampered` ([1, H, W, 1], default `mask`) is what the verifier found: the reference is
        read from the blocks outside it, while `mask` (`recovery_mask` of it) is redrawn.
        `quarter_turns` and `origin` ([2], the crop's origin): how `analyse` found the photo
        turned and cropped; it is recovered upright (where its reference lies) and turned
        back."""
        tampered = mask if tampered is None else tampered
        upright = [alignment.rotate(x, -quarter_turns) for x in (levels, mask, tampered)]
        return alignment.rotate(self._recover_upright(*upright, origin), quarter_turns)

    def _recover_upright(self, levels, mask, tampered, origin):
        from imuge_tf.models.imuge import recover_working_size

        height, width = tf.shape(levels)[1], tf.shape(levels)[2]
        network = recover_working_size(self.decoder, self.working(levels),
                                       self.decoder_mask(mask), prefill=self.decoder_prefill)
        network = tf.clip_by_value(full_view(network, height, width), 0.0, 1.0) * 255.0
        reference, decoded = self.read_reference(levels, tampered, origin)[:2]
        if self.refiner is not None:
            from imuge_tf.models.refiner import refine

            reference = refine(self.refiner, levels, mask, reference)
        recovered = tf.round(tf.where(decoded > 0.5, reference, network))
        return tf.where(mask > 0.5, recovered, levels)

    def read_reference(self, levels, mask, origin=None):
        """The self-embedded reference of a received photo, read from the blocks outside
        `mask` ([1, H, W, 1] 0/1): (reference [1, H, W, 3] levels, decoded [1, H, W, 1],
        copies per cell [1, R, C, 1], records); see `SelfReference.read`. `origin` ([2]): the
        crop's origin found by `analyse` (None: (0, 0)). The photo is cut to the cell grid;
        the edge strips are filled like the photo's edges."""
        origin = tf.zeros([2], tf.int32) if origin is None else tf.cast(origin, tf.int32)
        cell = self.reference.blocks_per_cell * BLOCK
        skip = tf.math.floormod(-origin, cell)
        cut, cut_mask = levels[:, skip[0]:, skip[1]:], mask[:, skip[0]:, skip[1]:]
        place = tuple(tf.math.floormod((origin[axis] + skip[axis]) // BLOCK, TILE_BLOCKS)
                      for axis in (0, 1))
        agreement, valid = self._host_validity(cut, cut_mask, place)
        reference, decoded, copies, records = self.reference.read(
            self.mark.read_data(cut, place), valid, agreement, cut, place)
        padding = [[0, 0], [skip[0], 0], [skip[1], 0], [0, 0]]
        return (tf.pad(reference, padding, mode="SYMMETRIC"), tf.pad(decoded, padding),
                copies, records)

    def _host_validity(self, levels, mask, place=None):
        """(the mark's agreement, 1 where a block may host records): outside `mask` grown by
        a block, and only if the photo carries the mark at all."""
        agreement, flat = self.mark.read(levels, place)
        # A photo that does not carry the mark carries no reference either: the few blocks
        # that match the lattice by chance must not be read as records.
        present = tf.cast(self._mark_present(self._evidence(agreement, flat)[1], agreement),
                          tf.float32)
        # A block next to a tampered one may hold part of the tamper that the mask missed.
        blocked = tf.nn.max_pool2d(tf.nn.max_pool2d(mask, BLOCK, BLOCK, "VALID"), 3, 1, "SAME")
        return agreement, (1.0 - blocked) * present
