"""The attack layer A: per sample, one malicious tamper, then one benign attack, or neither.

Choices and parameters come from per-sample stateless seeds, so the pipeline traces once in
``tf.function`` and every sample (and every replica, given different seeds) draws its own.
Every enabled attack runs on the whole batch and each sample picks its own result with
``tf.where``: no Python branching, and gradients flow only through the chosen path.
"""

import tensorflow as tf

from imuge_tf.attacks.benign import BENIGN_ATTACKS, RESIZE_METHODS
from imuge_tf.attacks.names import check_names
from imuge_tf.attacks.seeds import split_seeds, uniform_per_sample
from imuge_tf.attacks.tamper import TAMPERS

__all__ = ["AttackPipeline"]

# Seed streams derived from each sample's seed, one per independent use.
_CHOICE, _TAMPER, _BENIGN = 0, 1, 2


def _select(index, candidates):
    """Per sample b, candidates[index[b]][b]; tf.where keeps gradients on the chosen one only."""
    result = candidates[0]
    condition = tf.reshape(index, [-1, 1, 1, 1])
    for position, candidate in enumerate(candidates[1:], start=1):
        result = tf.where(condition == position, candidate, result)
    return result


class AttackPipeline:
    """The training-time attack layer.

    Args:
        skip_probability: chance that a sample passes untouched (target mask all zeros).
        benign_attacks: names from `imuge_tf.attacks.benign.BENIGN_ATTACKS`, picked uniformly.
            The default is the paper's set; "median", "colour", "resize", "resize_jpeg" and
            "blur_jpeg" are opt-in.
        tamper_kinds: names from `imuge_tf.attacks.tamper.TAMPERS`, picked uniformly. The
            default is the paper's ("donor", "colour", "clone"); "copy_move", "splice" and
            "removal" are opt-in.
        noise_stddev: AWGN sigma is uniform in [0, noise_stddev] per sample.
        blur_kernel_sizes: Gaussian blur kernel sizes to pick from.
        rescale_range: (min, max) resize factor.
        jpeg_quality_range: (min, max) JPEG quality factor, inclusive.
        crop_keep_range: (min, max) fraction of the area kept by cropping.
        clone_shift_range: (min, max) clone-stamp shift as a fraction of height and width.
        real_jpeg_probability: chance that a JPEG-attacked sample uses the real codec
            (straight-through) instead of the simulation.
        median_kernel_sizes: median filter window sizes to pick from ("median").
        brightness_range: (min, max) additive brightness change ("colour").
        contrast_range: (min, max) contrast factor ("colour").
        saturation_range: (min, max) saturation factor ("colour").
        resize_range: (min, max) resize factor of "resize" and "resize_jpeg".
        resize_methods: interpolations to pick from ("bilinear", "bicubic", "nearest",
            "area") for "resize" and "resize_jpeg".
        copy_move_shift_range: (min, max) copy-move shift as a fraction of height and width.
        copy_move_flip_probability: chance that copy-moved content is mirrored left-right.

    The combinations reuse their parts' settings: "resize_jpeg" the resize and JPEG ones,
    "blur_jpeg" `blur_kernel_sizes` and the JPEG ones.
    """

    def __init__(
        self,
        skip_probability=0.1,
        benign_attacks=("identity", "noise", "blur", "rescale", "jpeg", "crop"),
        tamper_kinds=("donor", "colour", "clone"),
        noise_stddev=0.05,
        blur_kernel_sizes=(3, 5),
        rescale_range=(0.5, 2.0),
        jpeg_quality_range=(50, 95),
        crop_keep_range=(0.5, 0.9),
        clone_shift_range=(0.1, 0.4),
        real_jpeg_probability=0.0,
        median_kernel_sizes=(3, 5),
        brightness_range=(-0.1, 0.1),
        contrast_range=(0.7, 1.3),
        saturation_range=(0.7, 1.3),
        resize_range=(0.5, 2.0),
        resize_methods=RESIZE_METHODS,
        copy_move_shift_range=(0.3, 0.7),
        copy_move_flip_probability=0.5,
    ):
        if not 0.0 <= skip_probability <= 1.0:
            raise ValueError(f"skip_probability must be in [0, 1], got {skip_probability!r}")
        self.skip_probability = float(skip_probability)
        self.benign_attacks = check_names("benign attacks", benign_attacks, BENIGN_ATTACKS)
        self.tamper_kinds = check_names("tamper kinds", tamper_kinds, TAMPERS)
        self.noise_stddev = float(noise_stddev)
        self.blur_kernel_sizes = tuple(int(size) for size in blur_kernel_sizes)
        self.rescale_range = tuple(float(value) for value in rescale_range)
        self.jpeg_quality_range = tuple(int(value) for value in jpeg_quality_range)
        self.crop_keep_range = tuple(float(value) for value in crop_keep_range)
        self.clone_shift_range = tuple(float(value) for value in clone_shift_range)
        self.real_jpeg_probability = float(real_jpeg_probability)
        self.median_kernel_sizes = tuple(int(size) for size in median_kernel_sizes)
        self.brightness_range = tuple(float(value) for value in brightness_range)
        self.contrast_range = tuple(float(value) for value in contrast_range)
        self.saturation_range = tuple(float(value) for value in saturation_range)
        self.resize_range = tuple(float(value) for value in resize_range)
        self.resize_methods = tuple(str(method) for method in resize_methods)
        self.copy_move_shift_range = tuple(float(value) for value in copy_move_shift_range)
        self.copy_move_flip_probability = float(copy_move_flip_probability)
        jpeg = {
            "jpeg_quality_range": self.jpeg_quality_range,
            "real_jpeg_probability": self.real_jpeg_probability,
        }
        resize = {"resize_range": self.resize_range, "resize_methods": self.resize_methods}
        self._benign_params = {
            "identity": {},
            "noise": {"noise_stddev": self.noise_stddev},
            "blur": {"blur_kernel_sizes": self.blur_kernel_sizes},
            "rescale": {"rescale_range": self.rescale_range},
            "jpeg": {
                "jpeg_quality_range": self.jpeg_quality_range,
                "real_jpeg_probability": self.real_jpeg_probability,
            },
            "crop": {"crop_keep_range": self.crop_keep_range},
            "median": {"median_kernel_sizes": self.median_kernel_sizes},
            "colour": {
                "brightness_range": self.brightness_range,
                "contrast_range": self.contrast_range,
                "saturation_range": self.saturation_range,
            },
            "resize": resize,
            "resize_jpeg": {**resize, **jpeg},
            "blur_jpeg": {"blur_kernel_sizes": self.blur_kernel_sizes, **jpeg},
        }
        self._tamper_params = {
            "donor": {},
            "colour": {},
            "clone": {"shift_range": self.clone_shift_range},
            "copy_move": {
                "shift_range": self.copy_move_shift_range,
                "flip_probability": self.copy_move_flip_probability,
            },
            "splice": {},
            "removal": {},
        }
        self._validate_params()

    def _validate_params(self):
        """Runs each enabled attack once on a tiny batch so bad parameters fail here, not in
        the middle of training."""
        images = tf.fill([1, 16, 16, 3], 0.5)
        masks = tf.zeros([1, 16, 16, 1])
        seeds = tf.zeros([1, 2], tf.int32)
        for name in self.benign_attacks:
            BENIGN_ATTACKS[name](images, masks, seeds, **self._benign_params[name])
        for name in self.tamper_kinds:
            TAMPERS[name](images, images, masks, seeds, **self._tamper_params[name])

    def get_config(self):
        """The constructor's keyword arguments, as plain Python values."""
        return {
            "skip_probability": self.skip_probability,
            "benign_attacks": list(self.benign_attacks),
            "tamper_kinds": list(self.tamper_kinds),
            "noise_stddev": self.noise_stddev,
            "blur_kernel_sizes": list(self.blur_kernel_sizes),
            "rescale_range": list(self.rescale_range),
            "jpeg_quality_range": list(self.jpeg_quality_range),
            "crop_keep_range": list(self.crop_keep_range),
            "clone_shift_range": list(self.clone_shift_range),
            "real_jpeg_probability": self.real_jpeg_probability,
            "median_kernel_sizes": list(self.median_kernel_sizes),
            "brightness_range": list(self.brightness_range),
            "contrast_range": list(self.contrast_range),
            "saturation_range": list(self.saturation_range),
            "resize_range": list(self.resize_range),
            "resize_methods": list(self.resize_methods),
            "copy_move_shift_range": list(self.copy_move_shift_range),
            "copy_move_flip_probability": self.copy_move_flip_probability,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __call__(self, immunized, donors, masks, seeds):
        """Attacks a batch.

        Args:
            immunized: float32 [B, H, W, 3] in [0, 1], the immunized images I_M.
            donors: float32 [B, H, W, 3], irrelevant images for content replacement.
            masks: float32 [B, H, W, 1], the tamper masks (1 = tampered).
            seeds: int [B, 2] per-sample stateless seeds.

        Returns:
            A dict of tensors:
            "attacked" [B, H, W, 3]: I_A, the tampered then benignly attacked image
                (equal to `immunized` for skipped samples);
            "mask" [B, H, W, 1]: the verifier's target, the tamper mask as transformed by the
                benign attack (cropping adds the cropped-away area); zeros when skipped;
            "tampered" [B, H, W, 3]: after the tamper, before the benign attack
                (`immunized` when skipped);
            "benign_index", "tamper_index" [B] int32: positions in `benign_attacks` and
                `tamper_kinds`, -1 for skipped samples;
            "skipped" [B] bool.
        """
        immunized = tf.convert_to_tensor(immunized, tf.float32)
        donors = tf.convert_to_tensor(donors, tf.float32)
        masks = tf.convert_to_tensor(masks, tf.float32)
        streams = split_seeds(seeds, 3)

        draws = uniform_per_sample(streams[_CHOICE], shape=[3])
        skipped = draws[:, 0] < self.skip_probability
        tamper_index = self._pick(draws[:, 1], len(self.tamper_kinds))
        benign_index = self._pick(draws[:, 2], len(self.benign_attacks))

        tamper_seeds = split_seeds(streams[_TAMPER], len(self.tamper_kinds))
        tampered = _select(
            tamper_index,
            [
                TAMPERS[name](
                    immunized, donors, masks, tamper_seeds[i], **self._tamper_params[name]
                )
                for i, name in enumerate(self.tamper_kinds)
            ],
        )

        benign_seeds = split_seeds(streams[_BENIGN], len(self.benign_attacks))
        outcomes = [
            BENIGN_ATTACKS[name](tampered, masks, benign_seeds[i], **self._benign_params[name])
            for i, name in enumerate(self.benign_attacks)
        ]
        attacked = _select(benign_index, [images for images, _ in outcomes])
        target = _select(benign_index, [mask for _, mask in outcomes])

        skip = tf.reshape(skipped, [-1, 1, 1, 1])
        return {
            "attacked": tf.where(skip, immunized, attacked),
            "mask": tf.where(skip, tf.zeros_like(target), target),
            "tampered": tf.where(skip, immunized, tampered),
            "benign_index": tf.where(skipped, -1, benign_index),
            "tamper_index": tf.where(skipped, -1, tamper_index),
            "skipped": skipped,
        }

    @staticmethod
    def _pick(uniform, count):
        """A uniform integer in [0, count) from a uniform float in [0, 1)."""
        return tf.minimum(tf.cast(tf.floor(uniform * count), tf.int32), count - 1)
