"""A fixed spread-spectrum carrier: a known faint pattern the encoder adds and the verifier reads.

The paper's verifier has to discover, from scratch, what distinguishes the encoder's residual
from ordinary photo content. At a CPU budget it does not (the verifier's loss hardly falls
below a constant predictor's), so the verdict "not immunized" and the localization stay weak.
This lever (`model.carrier_amplitude` > 0) gives both networks a known shared secret:

- the encoder adds `amplitude x pattern` to its learned residual, where the pattern is a fixed
  pseudo-random +-1 texture of `cell` x `cell` pixel cells, tiled with a period of `period`
  pixels; the same sign on R, G and B makes it luminance, which JPEG's chroma subsampling
  keeps (with `protect`, the learned residual cannot cancel it);
- the verifier's stem gets one more input channel per window in `windows`: the local
  correlation of the received image's high-pass luminance with the pattern, divided by the
  amplitude. It is about 1 where the immunization is present and about 0 on pasted content, on
  a never-immunized photo, and on cloned content (the pattern there is out of phase).

Both layers are pure tensor ops (tile, slice, pooling, multiply), so they export to SavedModel
and to TFLite builtins with the networks that own them.
"""

import keras
import numpy as np

# Fixed so that every model built with the same cell and period shares one pattern.
PATTERN_SEED = 20210824
# 2 px cells: most of the carrier survives JPEG while photo texture correlates with them less
# than with larger cells (the measured strengths are in the README, "Levers"); the 24 px
# window separates immunized from plain content, the 8 px one localizes edges.
DEFAULT_AMPLITUDE = 4.0 / 255.0
DEFAULT_CELL = 2
DEFAULT_PERIOD = 64
DEFAULT_WINDOWS = (8, 24)


def carrier_tile(cell: int, period: int, seed: int = PATTERN_SEED) -> np.ndarray:
    """The period x period +-1 tile, made of cell x cell blocks of one random sign each.

    Half the blocks are +1 and half -1 (shuffled), so the pattern has exactly zero mean.
    """
    if cell < 1 or period < 2 * cell or period % cell:
        raise ValueError(f"carrier period ({period}) must be a multiple of the cell ({cell}) "
                         "and hold at least two cells")
    blocks = period // cell
    signs = np.where(np.arange(blocks * blocks) % 2 == 0, 1.0, -1.0)
    np.random.default_rng(seed).shuffle(signs)
    signs = signs.reshape(blocks, blocks)
    return np.kron(signs, np.ones((cell, cell))).astype(np.float32)


def _pattern_like(images, tile):
    """The tile repeated to cover `images` ([B, H, W, C]); shape [1, H, W, 1]."""
    height, width = keras.ops.shape(images)[1], keras.ops.shape(images)[2]
    period = tile.shape[0]
    repeats = ((height + period - 1) // period, (width + period - 1) // period)
    tiled = keras.ops.tile(keras.ops.convert_to_tensor(tile, dtype=images.dtype), repeats)
    return keras.ops.reshape(tiled[:height, :width], (1, height, width, 1))


class _CarrierLayer(keras.layers.Layer):
    def __init__(self, amplitude=DEFAULT_AMPLITUDE, cell=DEFAULT_CELL, period=DEFAULT_PERIOD,
                 **kwargs):
        super().__init__(**kwargs)
        if amplitude <= 0:
            raise ValueError(f"carrier amplitude must be > 0, got {amplitude}")
        self.amplitude = float(amplitude)
        self.cell = int(cell)
        self.period = int(period)
        self.tile = carrier_tile(self.cell, self.period)

    def get_config(self):
        return {**super().get_config(), "amplitude": self.amplitude, "cell": self.cell,
                "period": self.period}

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="imuge_tf")
class CarrierEmbedding(_CarrierLayer):
    """Adds `amplitude x pattern` (the same on every channel) to a residual.

    With `protect`, the learned residual first loses its local correlation with the pattern
    (over `protect_window` px): otherwise the encoder learns within a few hundred steps to
    cancel the carrier (it knows the pattern's phase from the image borders, and the fidelity
    loss and the whole-image recovery loss both reward a smaller residual). BENCHMARKS.md,
    `ablation`, compares the carrier's strength with and without `protect`.
    """

    def __init__(self, amplitude=DEFAULT_AMPLITUDE, cell=DEFAULT_CELL, period=DEFAULT_PERIOD,
                 protect=False, protect_window=8, **kwargs):
        super().__init__(amplitude=amplitude, cell=cell, period=period, **kwargs)
        self.protect = bool(protect)
        self.protect_window = int(protect_window)

    def call(self, residual):
        pattern = _pattern_like(residual, self.tile)
        if self.protect:
            luminance = keras.ops.mean(residual, axis=-1, keepdims=True)
            along = keras.ops.average_pool(luminance * pattern, self.protect_window, strides=1,
                                           padding="same")
            residual = residual - along * pattern
        return residual + self.amplitude * pattern

    def get_config(self):
        return {**super().get_config(), "protect": self.protect,
                "protect_window": self.protect_window}


@keras.saving.register_keras_serializable(package="imuge_tf")
class CarrierReader(_CarrierLayer):
    """Image in [0, 1] -> [B, H, W, len(windows)]: how strongly the carrier is present.

    High-pass luminance (minus its `2 x cell + 1` box mean) times the pattern, averaged over a
    `window` x `window` neighbourhood for each of `windows` and divided by the amplitude.
    """

    def __init__(self, amplitude=DEFAULT_AMPLITUDE, cell=DEFAULT_CELL, period=DEFAULT_PERIOD,
                 windows=DEFAULT_WINDOWS, **kwargs):
        super().__init__(amplitude=amplitude, cell=cell, period=period, **kwargs)
        self.windows = tuple(int(window) for window in windows)

    def call(self, images):
        luminance = keras.ops.mean(images, axis=-1, keepdims=True)
        smooth = keras.ops.average_pool(luminance, 2 * self.cell + 1, strides=1, padding="same")
        correlation = (luminance - smooth) * _pattern_like(images, self.tile)
        return keras.ops.concatenate(
            [keras.ops.average_pool(correlation, window, strides=1, padding="same")
             for window in self.windows], axis=-1) / self.amplitude

    def get_config(self):
        return {**super().get_config(), "windows": list(self.windows)}

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], len(self.windows))
