"""The Imuge facade: immunize, verify and recover real photos of any size (DESIGN.md, contracts).

The networks run at the working size S of their training config. Immunize computes the
residual on the photo resized to S x S, upsamples it and adds it to the full-resolution photo.
Verify resizes the received photo to S x S, thresholds the verifier's probability map (Otsu,
then an opening with a 4 x 4 kernel, paper section 3.5) and brings the mask back to the
received size. Recover runs the decoder at S x S and replaces pixels only inside the mask (grown
by RECOVERY_MARGIN working-size pixels: a tampered pixel the verifier missed costs far more than
a redrawn untampered one).

The verdict uses two fractions of pixels flagged by the verifier (probability > 0.5, at the
working size), calibrated on held-out photos and stored in `imuge.json` (`calibrate`):
below `intact_max_fraction` the photo is intact; at or above `not_immunized_min_fraction` the
whole photo lacks the immunization (a never-immunized photo); in between it is tampered.
"""

import json
import os
from dataclasses import dataclass, field

import numpy as np

PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")
NETWORKS = ("encoder", "verifier", "decoder")
VERDICTS = ("intact", "tampered", "not_immunized")
MIN_SIDE = 16  # smaller photos carry too little to verify or recover anything
# Used until `calibrate` has stored measured values with the weights.
DEFAULT_THRESHOLDS = {"intact_max_fraction": 0.01, "not_immunized_min_fraction": 0.6}
FLAG_PROBABILITY = 0.5  # a pixel counts as flagged for the verdict above this probability
MORPHOLOGY_KERNEL = 4  # paper section 3.5
# `recover` redraws the verifier's mask grown by this many working-size pixels: a tampered
# pixel the mask misses keeps pasted content (~9 dB), while a redrawn untampered one costs
# little. Measured on 9 held-out photos (pasted donor, predicted mask): L-PSNR 19.0 -> 22.1 /
# 23.1 / 23.6 dB with 0 / 2 / 4 / 6 px (15.3 -> 18.3 dB at 4 px after JPEG 90).
RECOVERY_MARGIN = 4
# The benign attacks an untampered photo is calibrated under (`calibrate`): an immunized photo
# shared through any of them should stay `intact`. Crops are left out: their black border
# counts as tampered, by design.
CALIBRATION_ATTACKS = ("none", "jpeg90", "jpeg50", "resize50", "blur", "noise")
# Full-size immunization with a hidden thumbnail (`Imuge._carry_thumbnail`): rounds of cell
# mean correction and their over-relaxation. Measured at 12 MP, the read thumbnail's mean
# error is 78 / 3.5 / 3.0 / 3.0 levels after 0 / 2 / 4 / 6 rounds (3.7 at 256 x 200).
THUMBNAIL_ROUNDS = 4
THUMBNAIL_GAIN = 1.5


HALF_SUFFIX = ".f16.npz"  # weights stored in float16 (the shipped model, to halve its size)


def _load_half(name, path, metadata):
    """A network rebuilt from the stored config, with float16-stored weights as float32."""
    from imuge_tf.config import config_from_dict
    from imuge_tf.models import factory

    config = config_from_dict(metadata["config"])
    network = getattr(factory, f"build_{name}")(config)
    with np.load(path) as stored:
        weights = [stored[f"w{index:04d}"].astype(np.float32) for index in range(len(stored))]
    try:
        network.set_weights(weights)
    except ValueError as error:
        raise ModelNotFoundError(f"{path} does not fit the {name} of its config: {error}") \
            from None
    return network


def save_half(network, path):
    """Stores a network's weights in float16 (`_load_half` reads them back), atomically."""
    partial = f"{path}.partial.npz"
    np.savez_compressed(partial, **{f"w{index:04d}": weight.astype(np.float16)
                                    for index, weight in enumerate(network.get_weights())})
    os.replace(partial, path)


class ModelNotFoundError(ValueError):
    """No weights where they were looked for."""


@dataclass
class VerifyResult:
    """What `Imuge.verify` found in one received photo (arrays at the received size)."""

    verdict: str
    probability: np.ndarray  # H x W float32, per-pixel tamper probability
    mask: np.ndarray  # H x W bool, the refined tampered area
    tampered_fraction: float  # share of the photo's pixels in `mask`
    flagged_fraction: float  # share of pixels over FLAG_PROBABILITY at the working size
    threshold: float  # the probability threshold used for `mask`
    thresholds: dict = field(default_factory=dict)  # the verdict thresholds used

    def to_dict(self) -> dict:
        """A JSON-ready summary (no arrays)."""
        height, width = self.mask.shape
        return {
            "verdict": self.verdict,
            "tampered_fraction": round(float(self.tampered_fraction), 6),
            "flagged_fraction": round(float(self.flagged_fraction), 6),
            "threshold": round(float(self.threshold), 6),
            "height": int(height),
            "width": int(width),
            "thresholds": dict(self.thresholds),
        }


def check_photo(image) -> np.ndarray:
    """`image` as a uint8 H x W x 3 array, or a ValueError saying what is wrong with it."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 photo, got dtype {array.dtype} "
                         "(read files with imuge_tf.io.read_image)")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB photo, got shape {array.shape}")
    if min(array.shape[:2]) < MIN_SIDE:
        raise ValueError(f"photo is {array.shape[1]}x{array.shape[0]} pixels; "
                         f"at least {MIN_SIDE} on each side is needed")
    return array


def grow_mask(mask, margin):
    """[B, S, S, 1] 0/1 masks grown by `margin` pixels (a square max filter)."""
    import tensorflow as tf

    if margin <= 0:
        return mask
    return tf.nn.max_pool2d(mask, 2 * margin + 1, strides=1, padding="SAME")


def _resize(images, size, antialias):
    import tensorflow as tf

    return tf.image.resize(images, size, method="bilinear", antialias=antialias)


def _find_weights(path: str) -> str:
    """The folder holding imuge.json: `path` itself or its `inference/` (a work directory)."""
    if not os.path.exists(path):
        raise ModelNotFoundError(f"model path '{path}' does not exist")
    for candidate in (path, os.path.join(path, "inference")):
        if os.path.isfile(os.path.join(candidate, "imuge.json")):
            return candidate
    raise ModelNotFoundError(
        f"no imuge.json in '{path}' or '{os.path.join(path, 'inference')}': pass a training "
        "work directory or its inference/ folder")


class Imuge:
    """Immunize, verify and recover photos with trained networks.

    Build it with `Imuge.from_pretrained()` (the shipped demo model) or `Imuge.load(path)`.
    """

    def __init__(self, encoder, verifier, decoder, image_size, *, decoder_prefill=False,
                 thumbnail_step=0.0, thumbnail_block=2, thresholds=None, metadata=None,
                 source=None):
        self.encoder = encoder
        self.verifier = verifier
        self.decoder = decoder
        self.image_size = int(image_size)
        self.decoder_prefill = bool(decoder_prefill)
        self.thumbnail_step = float(thumbnail_step)
        self.thumbnail_block = int(thumbnail_block)
        self.thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
        self.metadata = dict(metadata or {})
        self.source = source

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls) -> "Imuge":
        """The demo model shipped in `imuge_tf/pretrained/`."""
        if not os.path.isfile(os.path.join(PRETRAINED_DIR, "imuge.json")):
            raise ModelNotFoundError(
                f"no shipped weights in {PRETRAINED_DIR}; train a model "
                "(`imuge train --config demo --data DIR --workdir W`) and pass --model W")
        return cls.load(PRETRAINED_DIR)

    @classmethod
    def load(cls, path: str) -> "Imuge":
        """Networks from a training work directory or its `inference/` folder."""
        folder = _find_weights(path)
        with open(os.path.join(folder, "imuge.json")) as handle:
            try:
                metadata = json.load(handle)
            except json.JSONDecodeError as error:
                raise ModelNotFoundError(f"{folder}/imuge.json is not valid JSON: {error}") \
                    from None
        import keras

        import imuge_tf.models.unet  # noqa: F401  (registers the classes for loading)

        networks = {}
        for name in NETWORKS:
            filename = metadata.get("networks", {}).get(name, f"{name}.keras")
            network_path = os.path.join(folder, filename)
            if not os.path.isfile(network_path):
                raise ModelNotFoundError(f"missing {network_path}")
            if filename.endswith(HALF_SUFFIX):
                networks[name] = _load_half(name, network_path, metadata)
            else:
                networks[name] = keras.saving.load_model(network_path, compile=False)
        model_config = metadata.get("config", {}).get("model", {})
        return cls(**networks, image_size=metadata["image_size"],
                   decoder_prefill=model_config.get("decoder_prefill", False),
                   thumbnail_step=model_config.get("hidden_thumbnail_step", 0.0),
                   thumbnail_block=model_config.get("hidden_thumbnail_block", 2),
                   thresholds=metadata.get("verdict_thresholds"), metadata=metadata,
                   source=folder)

    def with_encoder(self, encoder) -> "Imuge":
        """The same model with another encoder (a `TFLiteEncoder` on a camera, say): the
        verifier, decoder, thresholds and hidden-thumbnail settings are kept."""
        return Imuge(encoder, self.verifier, self.decoder, self.image_size,
                     decoder_prefill=self.decoder_prefill, thumbnail_step=self.thumbnail_step,
                     thumbnail_block=self.thumbnail_block, thresholds=self.thresholds,
                     metadata=self.metadata, source=self.source)

    def save_thresholds(self, thresholds: dict, calibration: dict | None = None) -> None:
        """Stores verdict thresholds (and how they were measured) in the model's imuge.json."""
        from imuge_tf.training import atomic_write_text

        if self.source is None:
            raise ValueError("this Imuge was not loaded from a folder; nowhere to save")
        self.thresholds = {**DEFAULT_THRESHOLDS, **thresholds}
        self.metadata["verdict_thresholds"] = self.thresholds
        if calibration is not None:
            self.metadata["calibration"] = calibration
        atomic_write_text(os.path.join(self.source, "imuge.json"),
                          json.dumps(self.metadata, indent=2))

    # ------------------------------------------------------------------------- the networks
    def _working(self, photo: np.ndarray):
        """The photo as a 1 x S x S x 3 float tensor in [0, 1]."""
        import tensorflow as tf

        return self._working_float(tf.convert_to_tensor(photo[None], tf.float32) / 255.0)

    def _working_float(self, images):
        """[1, H, W, 3] in [0, 1] at the working size, the one way every path resizes."""
        return _resize(images, (self.image_size, self.image_size), antialias=True)

    def residual(self, image) -> np.ndarray:
        """The encoder's residual for `image`, at the working size (S x S x 3 float32)."""
        photo = check_photo(image)
        return np.asarray(self.encoder(self._working(photo), training=False))[0]

    def immunize(self, image) -> np.ndarray:
        """The immunized photo, same size as `image` (uint8)."""
        import tensorflow as tf

        photo = check_photo(image)
        height, width = photo.shape[:2]
        working = self._working(photo)
        residual = self.encoder(working, training=False)
        full_residual = _resize(residual, (height, width), antialias=False)
        immunized = tf.clip_by_value(tf.cast(photo[None], tf.float32) / 255.0 + full_residual,
                                     0.0, 1.0)
        if self.thumbnail_step > 0 and (height, width) != (self.image_size,) * 2:
            return self._carry_thumbnail(immunized, working + residual)
        return np.asarray(tf.round(immunized * 255.0), dtype=np.uint8)[0]

    def _carry_thumbnail(self, immunized, working_immunized) -> np.ndarray:
        """The full-size immunized photo adjusted so that its working-size copy (as `verify`
        and `recover` make it) holds the hidden thumbnail the encoder wrote at working size.

        The encoder snapped the working-size cell means onto its lattice; upsampling the
        residual and downsampling the photo again blurs them across cells. A few rounds of
        "measure the cell means, add the difference" bring them back (the resize is linear;
        over-relaxed, the error falls about 7x per round instead of 3x). The final rounding
        needs no dither: the upsampled residual varies from pixel to pixel, so the rounding
        errors of a cell do not add up (measured: a random dither made the thumbnail slightly
        worse from 192 px to 12 MP, and the 12 MP PNG 26 % larger).
        """
        import tensorflow as tf

        from imuge_tf.models.hiding import cell_means

        block = self.thumbnail_block
        height, width = immunized.shape[1], immunized.shape[2]
        targets = cell_means(working_immunized, block)
        for _ in range(THUMBNAIL_ROUNDS):
            difference = (targets - cell_means(self._working_float(immunized), block)) / 255.0
            difference = tf.image.resize(THUMBNAIL_GAIN * difference, (height, width),
                                         method="nearest")
            immunized = tf.clip_by_value(immunized + difference, 0.0, 1.0)
        return np.asarray(tf.round(immunized * 255.0), dtype=np.uint8)[0]

    def probability(self, image) -> np.ndarray:
        """The verifier's tamper probability at the working size (S x S float32)."""
        photo = check_photo(image)
        return np.asarray(self.verifier(self._working(photo), training=False))[0, :, :, 0]

    def verify(self, image) -> VerifyResult:
        """Verdict and tamper mask of a received photo, at its own size."""
        import tensorflow as tf

        from imuge_tf.postprocess import otsu_threshold, refine_mask

        photo = check_photo(image)
        height, width = photo.shape[:2]
        probability = self.probability(photo)
        flagged = float(np.mean(probability > FLAG_PROBABILITY))
        if flagged >= self.thresholds["not_immunized_min_fraction"]:
            verdict, threshold = "not_immunized", FLAG_PROBABILITY
            mask_small = np.ones_like(probability, dtype=bool)
        elif flagged < self.thresholds["intact_max_fraction"]:
            verdict, threshold = "intact", FLAG_PROBABILITY
            mask_small = np.zeros_like(probability, dtype=bool)
        else:
            # Otsu splits the map into its two modes; kept within sensible bounds so that a
            # map with one weak mode cannot pull the threshold to the noise floor.
            threshold = float(np.clip(otsu_threshold(probability), 0.2, 0.8))
            mask_small = refine_mask(probability, threshold=threshold,
                                     kernel_size=MORPHOLOGY_KERNEL)
            verdict = "tampered" if mask_small.any() else "intact"
        full_probability = _resize(probability[None, :, :, None], (height, width),
                                   antialias=False)
        full_mask = _resize(tf.constant(mask_small[None, :, :, None], tf.float32),
                            (height, width), antialias=False)
        mask = np.asarray(full_mask)[0, :, :, 0] >= 0.5
        return VerifyResult(
            verdict=verdict,
            probability=np.clip(np.asarray(full_probability)[0, :, :, 0], 0, 1)
            .astype(np.float32),
            mask=mask,
            tampered_fraction=float(mask.mean()),
            flagged_fraction=flagged,
            threshold=threshold,
            thresholds=dict(self.thresholds),
        )

    def recover(self, image, result: VerifyResult | None = None) -> np.ndarray:
        """The photo with the content inside the tampered area reconstructed (uint8).

        An intact photo comes back unchanged; so does a `not_immunized` one, which has no
        hidden information to recover from.
        """
        photo = check_photo(image)
        if result is None:
            result = self.verify(photo)
        if result.verdict != "tampered":
            return photo.copy()
        return self.recover_with_mask(photo, self.recovery_mask(result.mask))

    def recovery_mask(self, mask) -> np.ndarray:
        """The area `recover` redraws: `mask` (H x W bool) grown by RECOVERY_MARGIN
        working-size pixels, so that tampered pixels at the mask's edge are not left as they
        were received."""
        mask = np.asarray(mask, dtype=bool)
        height, width = mask.shape
        grown = grow_mask(self._decoder_mask(mask), RECOVERY_MARGIN)
        around = _resize(grown, (height, width), antialias=False)
        return mask | (np.asarray(around)[0, :, :, 0] >= 0.5)

    def _decoder_mask(self, mask):
        """The decoder's 1 x S x S x 1 mask of a full-size bool mask: any tampered pixel
        makes its working-size pixel tampered, since the decoder must not trust content
        mixed with tampered content."""
        import tensorflow as tf

        small = _resize(tf.constant(mask[None, :, :, None], tf.float32),
                        (self.image_size, self.image_size), antialias=True)
        return tf.cast(small > 0.05, tf.float32)

    def recover_with_mask(self, image, mask) -> np.ndarray:
        """Recovers the content inside a given mask (H x W bool, True = tampered)."""
        import tensorflow as tf

        from imuge_tf.models.imuge import recover_working_size

        photo = check_photo(image)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != photo.shape[:2]:
            raise ValueError(f"mask shape {mask.shape} does not match the photo's "
                             f"{photo.shape[:2]}")
        if not mask.any():
            return photo.copy()
        height, width = photo.shape[:2]
        recovered = recover_working_size(
            self.decoder, self._working(photo), self._decoder_mask(mask),
            prefill=self.decoder_prefill, thumbnail_step=self.thumbnail_step,
            thumbnail_block=self.thumbnail_block)
        recovered = _resize(recovered, (height, width), antialias=False)
        recovered = np.asarray(tf.round(tf.clip_by_value(recovered, 0.0, 1.0) * 255.0),
                               dtype=np.uint8)[0]
        return np.where(mask[:, :, None], recovered, photo)


def calibrate(imuge: Imuge, photos, *, seed: int = 0, save: bool = True) -> dict:
    """Measures the verdict thresholds on held-out photos and (by default) stores them.

    For each photo: the flagged fraction of the immunized photo and of the never-immunized
    photo, as saved and after each benign attack of CALIBRATION_ATTACKS, and of an immunized
    photo with a pasted patch. The intact bound sits above every untampered immunized photo
    (at most 0.05); the not-immunized bound sits halfway between the largest tampered fraction
    and the smallest never-immunized one.
    """
    import tensorflow as tf

    from imuge_tf.attacks.evaluation import apply_attack
    from imuge_tf.attacks.masks import random_tamper_mask

    untampered, never, tampered = [], [], []
    photos = [check_photo(photo) for photo in photos]
    for index, photo in enumerate(photos):
        immunized = imuge.immunize(photo)
        for attack in CALIBRATION_ATTACKS:
            attacked, _ = apply_attack(attack, immunized, seed=index)
            untampered.append(float(np.mean(imuge.probability(attacked) > FLAG_PROBABILITY)))
            plain, _ = apply_attack(attack, photo, seed=index)
            never.append(float(np.mean(imuge.probability(plain) > FLAG_PROBABILITY)))
        donor = photos[(index + 1) % len(photos)]
        square = random_tamper_mask(tf.constant([seed, index], tf.int32), imuge.image_size)
        mask = np.asarray(tf.image.resize(square[None], photo.shape[:2],
                                          method="nearest"))[0, :, :, 0] > 0.5
        donor = np.asarray(_resize(donor[None].astype(np.float32), photo.shape[:2],
                                   antialias=True))[0].round().astype(np.uint8)
        pasted = np.where(mask[:, :, None], donor, immunized)
        tampered.append(float(np.mean(imuge.probability(pasted) > FLAG_PROBABILITY)))
    intact_max = min(max(untampered) * 1.5 + 0.002, 0.05)
    not_immunized_min = float(np.clip((max(tampered) + min(never)) / 2.0, 0.4, 0.95))
    thresholds = {"intact_max_fraction": round(intact_max, 6),
                  "not_immunized_min_fraction": round(not_immunized_min, 6)}
    calibration = {
        "photos": len(photos),
        "untampered_immunized_flagged": [round(v, 6) for v in untampered],
        "never_immunized_flagged": [round(v, 6) for v in never],
        "tampered_flagged": [round(v, 6) for v in tampered],
    }
    if save:
        imuge.save_thresholds(thresholds, calibration)
    return {"thresholds": thresholds, **calibration}
