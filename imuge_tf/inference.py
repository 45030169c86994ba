"""The Imuge facade: immunize, verify and recover real photos of any size (docs/design.md).

NumPy I/O around the graph code of `imuge_tf.pipeline.InferencePipeline`, which the TF Serving
model and the camera's TFLite model export as they are: everything happens at the photo's own
size and aspect ratio (the networks at a working scale whose long side is the training size,
the block mark in the photo's own 8 x 8 grid).

The verdict uses the share of the photo flagged by the keyed block mark (found as received,
or on a turned, cropped or resized grid), against fixed thresholds (`pipeline.MARK_THRESHOLDS`):
below `intact_max_fraction` the photo is intact; at or above `not_immunized_min_fraction` the
whole photo lacks the immunization; in between it is tampered. Where no keyed mark is found,
the photo is not immunized (with this key). `calibrate` still measures thresholds for the
learned verifier's own map (`probability`), which no longer makes verdicts.
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
# The benign attacks an untampered photo is calibrated under (`calibrate`): an immunized photo
# shared through any of them should stay `intact`. Crops are left out: their black border
# counts as tampered, by design.
CALIBRATION_ATTACKS = ("none", "jpeg90", "jpeg50", "resize50", "blur", "noise")


HALF_SUFFIX = ".f16.npz"  # weights stored in float16 (the shipped model, to halve its size)


def _load_half(name, path, metadata, network=None):
    """A network rebuilt from the stored config (or `network`, built by the caller), with its
    float16-stored weights (keyed by variable path) as float32."""
    from imuge_tf.config import config_from_dict
    from imuge_tf.models import factory

    if network is None:
        network = getattr(factory, f"build_{name}")(config_from_dict(metadata["config"]))
    with np.load(path) as stored:
        stored_names = set(stored.files)
        expected = {variable.path for variable in network.weights}
        if stored_names != expected:
            missing, unexpected = sorted(expected - stored_names), sorted(stored_names - expected)
            raise ModelNotFoundError(
                f"{path} does not fit the {name} of its config: missing {missing[:3]}"
                f"{' ...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                f"{' ...' if len(unexpected) > 3 else ''}")
        for variable in network.weights:
            value = stored[variable.path]
            if tuple(value.shape) != tuple(variable.shape):
                raise ModelNotFoundError(
                    f"{path}: {variable.path} has shape {value.shape}, the {name} of its "
                    f"config needs {tuple(variable.shape)}")
            variable.assign(value.astype(np.float32))
    return network


def load_refiner(folder, metadata):
    """The reference refiner that a model folder's `imuge.json` (`metadata`) names, or None
    when it names none."""
    refiner_file = metadata.get("networks", {}).get("refiner")
    if not refiner_file:
        return None
    from imuge_tf.models.unet import UNet

    refiner_path = os.path.join(folder, refiner_file)
    if not os.path.isfile(refiner_path):
        raise ModelNotFoundError(f"missing {refiner_path}")
    refiner_config = metadata.get("refiner", {}).get("config")
    if not isinstance(refiner_config, dict):
        raise ModelNotFoundError(f"{folder}/imuge.json names a refiner but not its "
                                 "config ('refiner': {'config': ...})")
    return _load_half("refiner", refiner_path, metadata, UNet.from_config(refiner_config))


def save_half(network, path):
    """Stores a network's weights in float16, keyed by variable path (`_load_half` reads them
    back by name), atomically."""
    partial = f"{path}.partial.npz"
    np.savez_compressed(partial, **{variable.path: np.asarray(variable).astype(np.float16)
                                    for variable in network.weights})
    os.replace(partial, path)


class ModelNotFoundError(ValueError):
    """No weights where they were looked for."""


class AlreadyImmunizedError(ValueError):
    """The photo already carries the immunization of this key."""


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
    evidence: str = "block_mark"  # "block_mark" (keyed, native 8 x 8 grid) or "verifier"
    # How the photo was found relative to the immunized original: turned counter-clockwise
    # by `rotation` degrees, then cropped so that its first pixel was the upright original's
    # `crop_origin` (y, x; modulo the mark's tile, 1,024 px), and resized by `scale`
    # (received / original) from `original_size` (height, width of the upright original).
    rotation: int = 0
    crop_origin: tuple = (0, 0)
    scale: float = 1.0
    original_size: tuple | None = None

    @property
    def geometry(self) -> dict:
        """What was found of the photo's rotation, crop and resize (JSON-ready)."""
        return {"rotation": int(self.rotation),
                "crop_origin": [int(v) for v in self.crop_origin],
                "scale": round(float(self.scale), 6),
                "original_size": None if self.original_size is None
                else [int(v) for v in self.original_size]}

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
            "evidence": self.evidence,
            "geometry": self.geometry,
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


EVIDENCE = ("verifier", "block_mark")  # the pipeline's evidence index -> name


def _photo_tensor(photo):
    import tensorflow as tf

    return tf.convert_to_tensor(photo[None], tf.float32)


class Imuge:
    """Immunize, verify and recover photos with trained networks.

    Build it with `Imuge.from_pretrained()` (the shipped demo model) or `Imuge.load(path)`.
    `key` is the secret that immunization and verification share (bytes or str,
    `imuge_tf.keys`); None takes $IMUGE_KEY, else the public demo key, with which anyone can
    make a photo verify as intact (a DemoKeyWarning says so).
    """

    def __init__(self, encoder, verifier, decoder, image_size, *, decoder_prefill=False,
                 thumbnail_step=0.0, thumbnail_block=2, thresholds=None, metadata=None,
                 source=None, residual_gain=None, key=None, refiner=None):
        from imuge_tf.pipeline import DEFAULT_RESIDUAL_GAIN

        self.encoder = encoder
        self.verifier = verifier
        self.decoder = decoder
        self.refiner = refiner
        self.image_size = int(image_size)
        self.decoder_prefill = bool(decoder_prefill)
        self.thumbnail_step = float(thumbnail_step)
        self.thumbnail_block = int(thumbnail_block)
        self._graphs = None
        self.thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
        self.metadata = dict(metadata or {})
        self.source = source
        settings = self.metadata.get("inference", {})
        if residual_gain is None:
            residual_gain = settings.get("residual_gain", DEFAULT_RESIDUAL_GAIN)
        self.residual_gain = float(residual_gain)
        from imuge_tf.keys import resolve_key

        self.key, self.demo_key = resolve_key(key)
        self._graphs = None

    @property
    def thresholds(self) -> dict:
        """The learned verifier's verdict thresholds (setting them rebuilds the graphs)."""
        return self._thresholds

    @thresholds.setter
    def thresholds(self, value):
        self._thresholds = dict(value)
        self._graphs = None

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, key=None) -> "Imuge":
        """The demo model shipped in `imuge_tf/pretrained/`."""
        if not os.path.isfile(os.path.join(PRETRAINED_DIR, "imuge.json")):
            raise ModelNotFoundError(
                f"no shipped weights in {PRETRAINED_DIR}; train a model "
                "(`imuge train --config demo --data DIR --workdir W`) and pass --model W")
        return cls.load(PRETRAINED_DIR, key=key)

    @classmethod
    def load(cls, path: str, key=None) -> "Imuge":
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
        networks["refiner"] = load_refiner(folder, metadata)
        model_config = metadata.get("config", {}).get("model", {})
        return cls(**networks, image_size=metadata["image_size"],
                   decoder_prefill=model_config.get("decoder_prefill", False),
                   thumbnail_step=model_config.get("hidden_thumbnail_step", 0.0),
                   thumbnail_block=model_config.get("hidden_thumbnail_block", 2),
                   thresholds=metadata.get("verdict_thresholds"), metadata=metadata,
                   source=folder, key=key)

    def save_thresholds(self, thresholds: dict, calibration: dict | None = None) -> None:
        """Stores verdict thresholds (and how they were measured) in the model's imuge.json."""
        from imuge_tf.io import write_text_atomic

        if self.source is None:
            raise ValueError("this Imuge was not loaded from a folder; nowhere to save")
        self.thresholds = {**DEFAULT_THRESHOLDS, **thresholds}
        self.metadata["verdict_thresholds"] = self.thresholds
        if calibration is not None:
            self.metadata["calibration"] = calibration
        self._graphs = None
        write_text_atomic(os.path.join(self.source, "imuge.json"),
                          json.dumps(self.metadata, indent=2), force=True)

    # ------------------------------------------------------------------------ the pipeline
    @property
    def pipeline(self):
        """The graph code every path runs (`imuge_tf.pipeline.InferencePipeline`)."""
        return self._compiled()[0]

    def _compiled(self):
        """The pipeline and its methods as tf.functions over photos of any size."""
        if self._graphs is None:
            import tensorflow as tf

            from imuge_tf.pipeline import InferencePipeline, pipeline_function

            pipeline = InferencePipeline(
                self.encoder, self.verifier, self.decoder, image_size=self.image_size,
                decoder_prefill=self.decoder_prefill, residual_gain=self.residual_gain,
                key=self.key, network_thresholds=self.thresholds, refiner=self.refiner)
            photo = tf.TensorSpec([1, None, None, 3], tf.float32)
            mask = tf.TensorSpec([1, None, None, 1], tf.float32)
            graph = pipeline_function
            self._graphs = (
                pipeline,
                graph(pipeline.immunize, [photo]),
                graph(pipeline.analyse, [photo]),
                graph(pipeline.recover, [photo, mask, mask, tf.TensorSpec([], tf.int32),
                                         tf.TensorSpec([2], tf.int32)]),
                graph(pipeline.recovery_mask, [mask]),
                graph(pipeline.is_immunized, [photo]),
            )
        return self._graphs

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """The networks' size for a photo of height x width (aspect ratio kept)."""
        return self.pipeline.working_size(int(height), int(width))

    def residual(self, image) -> np.ndarray:
        """The encoder's residual for `image` as the pipeline uses it (before any hidden
        thumbnail's lattice, before `residual_gain`), at the working size (h x w x 3)."""
        photo = check_photo(image)
        pipeline = self.pipeline
        working = pipeline.working(_photo_tensor(photo))
        return np.asarray(pipeline.encoder(working, training=False))[0]

    def immunize(self, image, force: bool = False) -> np.ndarray:
        """The immunized photo, same size as `image` (uint8).

        A photo that already carries this key's immunization is refused
        (AlreadyImmunizedError) unless `force`: immunizing again would not protect it more,
        and after a tamper it would bless the tampered content."""
        photo = check_photo(image)
        if not force and self.is_immunized(photo):
            raise AlreadyImmunizedError(
                "the photo is already immunized with this key (immunizing it again would "
                "vouch for whatever it now shows); pass force=True (--reimmunize) to do it "
                "anyway")
        immunized = self._compiled()[1](_photo_tensor(photo))
        return np.asarray(immunized, dtype=np.float32)[0].astype(np.uint8)

    def is_immunized(self, image) -> bool:
        """Whether the photo, as it is (not turned, cropped or resized), carries this key's
        block mark: a quick check, a fraction of `verify`."""
        photo = check_photo(image)
        return bool(self._compiled()[5](_photo_tensor(photo)))

    def probability(self, image) -> np.ndarray:
        """The learned verifier's tamper probability at the working size (h x w float32)."""
        photo = check_photo(image)
        working = self.pipeline.working(_photo_tensor(photo))
        return np.asarray(self.verifier(working, training=False))[0, :, :, 0]

    def verify(self, image) -> VerifyResult:
        """Verdict and tamper mask of a received photo, at its own size."""
        photo = check_photo(image)
        found = self._compiled()[2](_photo_tensor(photo))
        mask = np.asarray(found["mask"], dtype=bool)
        evidence = EVIDENCE[int(found["evidence"])]
        intact_max, not_immunized_min = (round(float(v), 6) for v in found["thresholds"])
        return VerifyResult(
            verdict=VERDICTS[int(found["verdict"])],
            probability=np.asarray(found["probability"], dtype=np.float32),
            mask=mask,
            tampered_fraction=float(mask.mean()),
            flagged_fraction=float(found["flagged_fraction"]),
            threshold=float(found["threshold"]),
            thresholds={"intact_max_fraction": intact_max,
                        "not_immunized_min_fraction": not_immunized_min},
            evidence=evidence,
            rotation=90 * int(found["quarter_turns"]),
            crop_origin=tuple(int(v) for v in found["origin"]),
            scale=float(found["scale"]),
            original_size=tuple(int(v) for v in found["original_size"]),
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
        return self._recover(photo, self.recovery_mask(result.mask), result.mask,
                             result.rotation // 90, result.crop_origin)

    def recovery_mask(self, mask) -> np.ndarray:
        """The area `recover` redraws: `mask` (H x W bool) grown by RECOVERY_MARGIN
        working-size pixels, so that tampered pixels at the mask's edge are not left as they
        were received."""
        mask = np.asarray(mask, dtype=bool)
        grown = self._compiled()[4](np.asarray(mask, np.float32)[None, :, :, None])
        return np.asarray(grown)[0, :, :, 0] > 0.5

    def recover_with_mask(self, image, mask) -> np.ndarray:
        """Recovers the content inside a given mask (H x W bool, True = tampered)."""
        photo = check_photo(image)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != photo.shape[:2]:
            raise ValueError(f"mask shape {mask.shape} does not match the photo's "
                             f"{photo.shape[:2]}")
        if not mask.any():
            return photo.copy()
        return self._recover(photo, mask, mask)

    def _recover(self, photo, mask, tampered, quarter_turns=0, crop_origin=(0, 0)):
        recovered = self._compiled()[3](_photo_tensor(photo),
                                        np.asarray(mask, np.float32)[None, :, :, None],
                                        np.asarray(tampered, np.float32)[None, :, :, None],
                                        np.int32(quarter_turns),
                                        np.asarray(crop_origin, np.int32))
        return np.asarray(recovered, dtype=np.float32)[0].astype(np.uint8)


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
        donor = np.asarray(tf.image.resize(donor[None].astype(np.float32), photo.shape[:2],
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
