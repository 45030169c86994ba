"""The attack layer: differentiable JPEG, benign attacks, malicious tampers and their pipeline."""

from imuge_tf.attacks.benign import (
    BENIGN_ATTACKS,
    crop,
    gaussian_blur,
    gaussian_noise,
    identity,
    jpeg_compression,
    rescale,
    split_seeds,
    uniform_per_sample,
)
from imuge_tf.attacks.jpeg import (
    quantization_tables,
    real_jpeg,
    simulate_jpeg,
    straight_through_jpeg,
)
from imuge_tf.attacks.pipeline import AttackPipeline
from imuge_tf.attacks.tamper import (
    TAMPERS,
    clone_stamp,
    composite,
    replace_with_colour,
    replace_with_donor,
)

__all__ = [
    "BENIGN_ATTACKS",
    "TAMPERS",
    "AttackPipeline",
    "clone_stamp",
    "composite",
    "crop",
    "gaussian_blur",
    "gaussian_noise",
    "identity",
    "jpeg_compression",
    "quantization_tables",
    "real_jpeg",
    "rescale",
    "replace_with_colour",
    "replace_with_donor",
    "simulate_jpeg",
    "split_seeds",
    "straight_through_jpeg",
    "uniform_per_sample",
]
