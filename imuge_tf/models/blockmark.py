"""The block mark: a keyed watermark in the photo's own 8 x 8 JPEG grid, at native resolution.

The networks run at a working scale; what the verifier reads there cannot say, at the photo's
own pixels, which 8 x 8 blocks were replaced. The block mark can. In every whole 8 x 8 block of
the photo (aligned with the grid a JPEG encoder uses, from the top-left corner) a few
low-frequency luminance DCT coefficients are moved onto a keyed lattice, dither modulation in
the sense of SARI (Lin & Chang): coefficient `c` becomes the nearest `step * n + offset`, with
`offset` in [0, step) drawn per block and per coefficient from the key.

- **Invisible.** The change is at most `step / 2` per coefficient, spread over the block as a
  smooth DCT basis function with no DC part; the same change on R, G and B is pure luminance.
- **Robust to JPEG.** A later JPEG quantizes these coefficients with steps smaller than
  `step / 2` down to quality 75, so the coefficient stays nearest its own lattice point.
- **Local.** Reading needs no side information: `agreement = 1 - 4 |e|`, with `e` the distance
  of the received coefficient from its lattice in steps, is 1 on an immunized block, about 0
  (uniformly spread in [-1, 1]) on content that does not carry the mark: pasted from
  elsewhere, painted over, cloned from another block (whose offsets differ), or a photo never
  immunized at all.
- **Keyed.** The offsets come from SHA-256 of the key, in a tile of `TILE_BLOCKS` x
  `TILE_BLOCKS` blocks repeated over the photo; without the key the lattice is unknown.

- **Data.** Four more coefficients carry bits, one per coefficient (binary dither modulation:
  bit 1 moves the lattice by half a step). The self-embedded reference (`models/reference.py`)
  travels in them. Their lattice is coarser (DATA_STEP) than the mark's, so the bits come back
  after JPEG down to quality 70; the kernel is scaled so that the lattice is again a power of two
  in its own units.

Every function is pure tensor code (reshape, matmul, round, tile), so the camera's TFLite graph,
the TF Serving graph and the Python facade run the same operations.
"""

import hashlib

import keras
import numpy as np

BLOCK = 8
# Zig-zag positions (row, column) of the marked coefficients: the lowest AC frequencies, which
# JPEG quantizes most finely and which survive downscaling best.
DEFAULT_COEFFICIENTS = ((0, 1), (1, 0), (2, 0), (1, 1))
# Lattice spacing in orthonormal DCT units of 8-bit levels: a power of two, so that dividing by
# it is exact (see DYADIC_BITS).
DEFAULT_STEP = 16.0
# The kernel's weights and the offsets are multiples of 2^-DYADIC_BITS. A block's coefficient
# of a photo in whole levels is then a sum of exactly representable products whose partial
# sums stay exact in float32 in any order of summation, so every runtime (TensorFlow, TFLite
# with XNNPACK, a camera's) picks the same lattice point; offsets are odd multiples of
# 2^-(DYADIC_BITS + 1), so no coefficient lies exactly between two lattice points.
DYADIC_BITS = 12
# Zig-zag neighbours of the marked ones, and their lattice spacing in DCT units: a bit is read
# right while a later JPEG moves the coefficient by less than DATA_STEP / 4.
DATA_COEFFICIENTS = ((0, 2), (2, 1), (1, 2), (3, 0))
DATA_STEP = 24.0
# The data kernel is scaled by DATA_LATTICE / DATA_STEP, so that in its units the lattice
# spacing is this power of two and the lattice arithmetic is exact, as for the mark.
DATA_LATTICE = 16.0
TILE_BLOCKS = 128  # the offset tile repeats every 1,024 pixels
PUBLIC_KEY = b"imuge-tf public demo key"
# Base pixels are kept this many levels inside [0, 255] so that the mark is never clipped
# (a saturated highlight would otherwise lose it and read as tampered).
HEADROOM = 3.0
FLAT_COEFFICIENT = 0.5  # `read`: a block whose marked coefficients are all smaller is flat
# `read_resampled`: the attenuations of a resampling filter tried per coefficient.
RESAMPLE_GAINS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6)


def dct_basis(coefficients=DEFAULT_COEFFICIENTS) -> np.ndarray:
    """[64, k]: the orthonormal 8 x 8 DCT-II basis images of `coefficients`, one per column."""
    positions = np.arange(BLOCK)
    scale = np.where(positions == 0, np.sqrt(1.0 / BLOCK), np.sqrt(2.0 / BLOCK))
    cosines = scale[:, None] * np.cos(np.pi * (2 * positions[None, :] + 1)
                                      * positions[:, None] / (2 * BLOCK))  # [freq, pixel]
    columns = [np.outer(cosines[row], cosines[column]).reshape(-1)
               for row, column in coefficients]
    return np.stack(columns, axis=1).astype(np.float32)


def key_bytes(key) -> bytes:
    """The key as bytes: None is the public demo key, a str is UTF-8 encoded."""
    if key is None:
        return PUBLIC_KEY
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, bytes | bytearray) or not key:
        raise ValueError("a key must be a non-empty str or bytes")
    return bytes(key)


def keyed_generator(key, purpose: bytes) -> np.random.Generator:
    """A NumPy generator seeded by SHA-256 of the key, one stream per purpose."""
    digest = hashlib.sha256(purpose + b"\0" + key_bytes(key)).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype=np.uint64))


def offset_tile(key, count: int, step: float = DEFAULT_STEP,
                purpose: bytes = b"imuge-tf block mark") -> np.ndarray:
    """[TILE_BLOCKS, TILE_BLOCKS, count] keyed lattice offsets in [0, step)."""
    generator = keyed_generator(key, purpose)
    uniform = generator.random((TILE_BLOCKS, TILE_BLOCKS, count))
    unit = 2.0**-DYADIC_BITS
    return ((np.floor(uniform * step / unit) + 0.5) * unit).astype(np.float32)


LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # JPEG's: R, G, B -> Y


def _unblocks(blocks, rows, columns, height, width):
    """[B, rows, columns, 64] block pixels -> [B, H, W], zero beyond the whole blocks."""
    shaped = keras.ops.reshape(blocks, (-1, rows, columns, BLOCK, BLOCK))
    shaped = keras.ops.transpose(shaped, (0, 1, 3, 2, 4))
    plane = keras.ops.reshape(shaped, (-1, rows * BLOCK, columns * BLOCK))
    return keras.ops.pad(plane, ((0, 0), (0, height - rows * BLOCK),
                                 (0, width - columns * BLOCK)))


def tiled_over_blocks(tile, rows, columns, place=None):
    """A keyed [TILE_BLOCKS, TILE_BLOCKS, k] tile repeated over rows x columns blocks:
    [1, rows, columns, k]. `place` (row, column): the tile position of the first block, for a
    photo cropped out of a larger one (None: (0, 0))."""
    tiles = keras.ops.convert_to_tensor(tile)
    if place is not None:
        tiles = keras.ops.roll(keras.ops.roll(tiles, -place[0], axis=0), -place[1], axis=1)
    repeats = ((rows + TILE_BLOCKS - 1) // TILE_BLOCKS, (columns + TILE_BLOCKS - 1) // TILE_BLOCKS,
               1)
    return keras.ops.tile(tiles, repeats)[None, :rows, :columns]


def _grid(levels):
    height, width = keras.ops.shape(levels)[1], keras.ops.shape(levels)[2]
    return height, width, height // BLOCK, width // BLOCK


class BlockMark:
    """The block mark of one key: `embed` for the camera, `agreement` for the verifier."""

    def __init__(self, key=None, *, coefficients=DEFAULT_COEFFICIENTS, step=DEFAULT_STEP):
        if step <= 0:
            raise ValueError(f"block mark step must be > 0, got {step}")
        self.coefficients = tuple(tuple(int(i) for i in pair) for pair in coefficients)
        if not self.coefficients or any(pair == (0, 0) or not all(0 <= i < BLOCK for i in pair)
                                         for pair in self.coefficients):
            raise ValueError("block mark coefficients must be AC positions (row, column) "
                             f"in 0..{BLOCK - 1}, got {coefficients}")
        self.step = float(step)
        self.basis = dct_basis(self.coefficients)
        # The basis times the luma weights as one 8 x 8 convolution kernel of stride 8: the
        # luminance DCT coefficients of every whole block straight from R, G, B, in one op
        # that every runtime accelerates (a channel sum and a block reshape cost TFLite far
        # more). A change added equally to R, G and B moves the luminance 1:1.
        unit = 2.0**-DYADIC_BITS
        kernel = self.basis.reshape(BLOCK, BLOCK, 1, -1) * LUMA[None, None, :, None]
        self.kernel = (np.round(kernel / unit) * unit).astype(np.float32)
        self.tile = offset_tile(key, len(self.coefficients), self.step)
        self.data_basis = dct_basis(DATA_COEFFICIENTS)
        self.data_gain = DATA_LATTICE / DATA_STEP
        kernel = (self.data_basis.reshape(BLOCK, BLOCK, 1, -1) * LUMA[None, None, :, None]
                  * self.data_gain)
        self.data_kernel = (np.round(kernel / unit) * unit).astype(np.float32)
        self.data_tile = offset_tile(key, len(DATA_COEFFICIENTS), DATA_LATTICE,
                                     purpose=b"imuge-tf block data")

    @property
    def data_bits(self) -> int:
        """Bits carried by each whole block."""
        return len(DATA_COEFFICIENTS)

    def _coefficients(self, levels, kernel=None):
        """[B, H, W, 3] levels -> [B, H // 8, W // 8, k] luminance coefficients of the whole
        blocks (the stride-8 "valid" convolution drops the partial ones)."""
        kernel = self.kernel if kernel is None else kernel
        return keras.ops.conv(levels, keras.ops.convert_to_tensor(kernel), strides=BLOCK,
                              padding="valid")

    def _data_targets(self, photo, base, bits, present):
        """The change of the data coefficients of `base` (in DCT units) that writes `bits`
        ([B, rows, cols, 4] 0/1) into the blocks where `present` is 1; lattice points are
        picked on `photo`, as for the mark."""
        rows, columns = keras.ops.shape(bits)[1], keras.ops.shape(bits)[2]
        offsets = tiled_over_blocks(self.data_tile, rows, columns) + bits * (DATA_LATTICE / 2.0)
        index = keras.ops.round((self._coefficients(photo, self.data_kernel) - offsets)
                                / DATA_LATTICE)
        target = DATA_LATTICE * index + offsets
        change = (target - self._coefficients(base, self.data_kernel)) * present
        return change / self.data_gain

    def embed(self, levels, addition=None, bits=None, present=None):
        """[B, H, W, 3] float 8-bit levels (+ `addition`, e.g. the encoder's residual in
        levels) -> the same with the mark, rounded to 8 bits.

        `bits` ([B, H // 8, W // 8, data_bits] 0/1) are written into the data coefficients of
        the blocks where `present` ([B, H // 8, W // 8, 1]) is 1; the other blocks keep theirs.

        Pixels are first kept HEADROOM levels inside [0, 255]; the change is added equally to
        R, G and B. Blocks cut by the right or bottom edge are left unmarked. Which lattice
        point a coefficient moves to is decided on `levels` alone: whole levels, which every
        runtime transforms alike, so a camera's float arithmetic (a network's residual a
        thousandth of a level off) cannot send a block to a neighbouring lattice point.
        """
        height, width, rows, columns = _grid(levels)
        photo = keras.ops.clip(levels, HEADROOM, 255.0 - HEADROOM)
        base = photo if addition is None else keras.ops.clip(
            levels + addition, HEADROOM, 255.0 - HEADROOM)
        offsets = tiled_over_blocks(self.tile, rows, columns)
        index = keras.ops.round((self._coefficients(photo) - offsets) / self.step)
        target = self.step * index + offsets
        coefficients = self._coefficients(base)
        change = keras.ops.matmul(target - coefficients,
                                  keras.ops.convert_to_tensor(self.basis.T))
        if bits is not None:
            present = keras.ops.ones_like(bits[..., :1]) if present is None else present
            change = change + keras.ops.matmul(
                self._data_targets(photo, base, bits, present),
                keras.ops.convert_to_tensor(self.data_basis.T))
        change = _unblocks(change, rows, columns, height, width)
        return keras.ops.clip(keras.ops.round(base + change[..., None]), 0.0, 255.0)

    def agreement(self, levels):
        """[B, H, W, 3] float 8-bit levels -> [B, H // 8, W // 8, 1]: the mean agreement of each
        whole block's coefficients with the keyed lattice (1 marked, ~0 unmarked)."""
        return self.read(levels)[0]

    def read(self, levels, place=None):
        """(`agreement`, flatness): flatness is 1 where every marked coefficient of the block
        is within FLAT_COEFFICIENT of 0, as on content painted over with one colour (a marked
        block is so only by rare chance, less rarely after strong JPEG).
        `place`: the tile position of the first block (`tiled_over_blocks`)."""
        _, _, rows, columns = _grid(levels)
        coefficients = self._coefficients(levels)
        phase = (coefficients - tiled_over_blocks(self.tile, rows, columns, place)) / self.step
        distance = keras.ops.abs(phase - keras.ops.round(phase))
        agreement = keras.ops.mean(1.0 - 4.0 * distance, axis=-1, keepdims=True)
        largest = keras.ops.max(keras.ops.abs(coefficients), axis=-1, keepdims=True)
        return agreement, keras.ops.cast(largest < FLAT_COEFFICIENT, agreement.dtype)

    def read_resampled(self, levels):
        """`read`'s agreement for a photo brought back to its grid after a resize.

        Resampling filters attenuate the marked coefficients, the higher frequencies more, so
        a large coefficient lands far from its lattice point. Per coefficient, the gain of
        RESAMPLE_GAINS that best fits the whole photo is undone; a block's coefficient whose
        attenuation moved it by more than a quarter step, (1 - gain) |c| > step / 4, is left
        out (textured blocks after a soft filter: their mark is unreadable, not absent).
        Returns (agreement [B, rows, cols, 1] over the coefficients kept, weight [B, rows,
        cols, 1]: the share of them kept)."""
        _, _, rows, columns = _grid(levels)
        coefficients = self._coefficients(levels)
        gains = keras.ops.convert_to_tensor(np.asarray(RESAMPLE_GAINS, np.float32))
        offsets = tiled_over_blocks(self.tile, rows, columns)
        phase = (coefficients[..., None] / gains - offsets[..., None]) / self.step
        agreements = 1.0 - 4.0 * keras.ops.abs(phase - keras.ops.round(phase))  # [..., k, G]
        best = keras.ops.argmax(keras.ops.mean(agreements, axis=(0, 1, 2)), axis=-1)  # [k]
        pick = keras.ops.one_hot(best, len(RESAMPLE_GAINS))
        agreement = keras.ops.sum(agreements * pick, axis=-1)
        gain = keras.ops.sum(gains * pick, axis=-1)
        kept = keras.ops.cast((1.0 - gain) * keras.ops.abs(coefficients) <= self.step / 4.0,
                              agreement.dtype)
        count = keras.ops.sum(kept, axis=-1, keepdims=True)
        mean = keras.ops.sum(agreement * kept, axis=-1, keepdims=True) / keras.ops.maximum(
            count, 1.0)
        return mean, count / float(len(self.coefficients))

    def read_data(self, levels, place=None):
        """[B, H, W, 3] levels -> [B, H // 8, W // 8, data_bits] soft bits in [-1, 1]: +1 reads
        as 0, -1 as 1, and the magnitude is the confidence (about 0 on unmarked content).
        `place`: the tile position of the first block (`tiled_over_blocks`)."""
        _, _, rows, columns = _grid(levels)
        coefficients = self._coefficients(levels, self.data_kernel)
        offsets = tiled_over_blocks(self.data_tile, rows, columns, place)
        phase = (coefficients - offsets) / DATA_LATTICE
        return keras.ops.cos(2.0 * np.pi * phase)
