"""The evaluation attacks of the paper's Table 1, with real codecs, on host-side uint8 images.

Training attacks (`benign.py`) are differentiable TF approximations on batches; these are the
real operations a received photo has gone through, for evaluating a trained model (the
`imuge evaluate` command). They work on one numpy uint8 H x W x 3 image of any size, with
Pillow, numpy and scipy only (this module imports no TensorFlow).

Every attack returns ``(attacked, extra_mask)``: the attacked uint8 image, always of the input's
size, and a bool H x W mask of the pixels the attack itself made unrecoverable by alignment.
Only cropping sets it: as in training (`benign.crop`), the cropped-away border is filled with
black *in place*, so the image stays pixel-aligned with the original, and that border counts as
tampered (an evaluation adds it to the tamper mask). For every other attack it is all False.

The columns of Table 1, in the paper's order:

========== =============== =================================================================
name       column          what it does
========== =============== =================================================================
jpeg90     JPEG QF=90      Pillow (libjpeg) encode at quality 90, 4:2:0, in memory; decode
jpeg70     JPEG QF=70      same at quality 70
jpeg50     JPEG QF=50      same at quality 50
resize150  Scaling 150%    Pillow bicubic resize to round(1.5 x W) x round(1.5 x H), then
                           bicubic back to W x H (Pillow's bicubic antialiases when shrinking)
resize70   Scaling 70%     same at 0.7
resize50   Scaling 50%     same at 0.5
crop90     Cropping 90%    keep a centred window of 90 % of the area with the image's aspect
                           ratio (sides x sqrt(0.9), rounded); the rest black, in extra_mask
crop70     Cropping 70%    same keeping 70 %
crop50     Cropping 50%    same keeping 50 %
blur       Blurring        Gaussian blur, 5 x 5 kernel, sigma 1.1 (the training blur's k = 5
                           kernel: OpenCV's default sigma for that size), mirrored borders
noise      AWGN            additive white Gaussian noise, sigma 0.1 on the [0, 1] scale
                           (25.5 levels; the paper's sigma), seeded, rounded and clipped
none       No attack       the image unchanged (a copy)
========== =============== =================================================================

Use::

    from imuge_tf.attacks.evaluation import TABLE1_ATTACKS, apply_attack
    attacked, extra_mask = apply_attack("jpeg70", image)
    for attack in TABLE1_ATTACKS:
        attacked, extra_mask = attack(image, seed=0)
"""

from __future__ import annotations

import dataclasses
import io
import math
import numbers
from collections.abc import Callable

import numpy as np

__all__ = [
    "ATTACKS",
    "ATTACK_NAMES",
    "BLUR_KERNEL_SIZE",
    "BLUR_SIGMA",
    "NOISE_SIGMA",
    "TABLE1_ATTACKS",
    "EvaluationAttack",
    "apply_attack",
    "blur_attack",
    "check_image",
    "crop_attack",
    "get_attack",
    "jpeg_attack",
    "noise_attack",
    "none_attack",
    "resize_attack",
]

# Gaussian blur: the training layer's k = 5 kernel (benign._gaussian_kernel, OpenCV's rule
# sigma = 0.3 * ((k - 1) / 2 - 1) + 0.8).
BLUR_KERNEL_SIZE = 5
BLUR_SIGMA = 0.3 * ((BLUR_KERNEL_SIZE - 1) * 0.5 - 1) + 0.8  # 1.1
# AWGN standard deviation on the [0, 1] scale (the paper's sigma = 0.1, section 3.2).
NOISE_SIGMA = 0.1
# Pillow's `subsampling` value for 4:2:0 (its default for RGB), passed explicitly.
_SUBSAMPLING_420 = 2

AttackFunction = Callable[[np.ndarray, int], tuple]


def check_image(image) -> np.ndarray:
    """Checks an attack's input: a numpy uint8 array of shape H x W x 3 with H, W >= 1.

    Returns it unchanged. Raises ValueError (TypeError is not used, so callers catch one kind).
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy uint8 array H x W x 3, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must have dtype uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape H x W x 3 (RGB), got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must not be empty, got shape {image.shape}")
    return image


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _no_mask(image: np.ndarray) -> np.ndarray:
    return np.zeros(image.shape[:2], dtype=bool)


# --------------------------------------------------------------------------------------------
# The attacks (image already checked; seed unused except by the noise)
# --------------------------------------------------------------------------------------------


def jpeg_attack(image: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """Real JPEG: Pillow encodes at `quality` with 4:2:0 chroma subsampling into memory and
    decodes it again (libjpeg's default decoder: integer DCT, fancy upsampling)."""
    from PIL import Image

    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality!r}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(
        buffer, format="JPEG", quality=int(quality), subsampling=_SUBSAMPLING_420)
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        result = np.asarray(decoded.convert("RGB"))
    return np.ascontiguousarray(result), _no_mask(image)


def resize_attack(image: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Pillow bicubic resize by `factor` (each side rounded, at least 1 pixel) and bicubic back
    to the original size. Pillow widens the filter when shrinking, so it antialiases."""
    from PIL import Image

    if not factor > 0:
        raise ValueError(f"resize factor must be > 0, got {factor!r}")
    height, width = image.shape[:2]
    scaled = (max(1, round(width * factor)), max(1, round(height * factor)))
    bicubic = Image.Resampling.BICUBIC
    small = Image.fromarray(np.ascontiguousarray(image)).resize(scaled, bicubic)
    back = small.resize((width, height), bicubic)
    return np.asarray(back).copy(), _no_mask(image)


def crop_window(height: int, width: int, keep: float) -> tuple[int, int, int, int]:
    """(top, left, window_height, window_width) of the centred window keeping about `keep` of
    the area with the image's aspect ratio (both sides scaled by sqrt(keep), rounded)."""
    if not 0 < keep <= 1:
        raise ValueError(f"crop keep fraction must be in (0, 1], got {keep!r}")
    side = math.sqrt(keep)
    window_height = min(height, max(1, round(height * side)))
    window_width = min(width, max(1, round(width * side)))
    return ((height - window_height) // 2, (width - window_width) // 2, window_height,
            window_width)


def crop_attack(image: np.ndarray, keep: float) -> tuple[np.ndarray, np.ndarray]:
    """Keeps the centred window of `crop_window`; everything outside it becomes black in place
    and is returned as the extra mask (it counts as tampered, as in training)."""
    top, left, window_height, window_width = crop_window(*image.shape[:2], keep)
    outside = np.ones(image.shape[:2], dtype=bool)
    outside[top:top + window_height, left:left + window_width] = False
    result = image.copy()
    result[outside] = 0
    return result, outside


def _gaussian_profile(size: int, sigma: float) -> np.ndarray:
    offsets = np.arange(size) - (size - 1) / 2
    profile = np.exp(-(offsets**2) / (2 * sigma**2))
    return profile / profile.sum()


def blur_attack(image: np.ndarray, size: int = BLUR_KERNEL_SIZE,
                sigma: float = BLUR_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blur with a `size` x `size` kernel of standard deviation `sigma`, applied
    separably in float64 and rounded to uint8. Borders are mirrored without repeating the edge
    pixel (scipy's 'mirror', TF's 'REFLECT' padding of the training blur)."""
    from scipy import ndimage

    profile = _gaussian_profile(size, sigma)
    # 'mirror' needs at least 2 pixels along an axis; 'nearest' is the same for 1.
    result = image.astype(np.float64)
    for axis in (0, 1):
        mode = "mirror" if image.shape[axis] > 1 else "nearest"
        result = ndimage.convolve1d(result, profile, axis=axis, mode=mode)
    return np.clip(np.rint(result), 0, 255).astype(np.uint8), _no_mask(image)


def noise_attack(image: np.ndarray, seed: int = 0,
                 sigma: float = NOISE_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """Additive white Gaussian noise of standard deviation `sigma` on the [0, 1] scale
    (sigma * 255 levels), drawn from `numpy.random.default_rng(seed)`; rounded and clipped to
    0..255. The same seed gives the same noise for the same image size."""
    noise = np.random.default_rng(seed).normal(0.0, sigma * 255.0, size=image.shape)
    noisy = np.rint(image.astype(np.float64) + noise)
    return np.clip(noisy, 0, 255).astype(np.uint8), _no_mask(image)


def none_attack(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """No attack: a copy of the image."""
    return image.copy(), _no_mask(image)


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EvaluationAttack:
    """One column of the evaluation.

    Attributes:
        name: short identifier, e.g. "jpeg70".
        column: the column label of the paper's Table 1, e.g. "JPEG QF=70".
        function: `function(image, seed) -> (attacked uint8 H x W x 3, extra_mask bool H x W)`
            on an already checked image (only the noise uses the seed).
        description: what it does, in words (for reports).
    """

    name: str
    column: str
    function: AttackFunction
    description: str = ""

    def __call__(self, image, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Checks `image` and `seed`, then applies the attack; the input is not modified."""
        image = check_image(image)
        seed = _check_seed(seed)
        attacked, extra_mask = self.function(image, seed)
        # The contract every caller relies on, checked once here rather than in each attack.
        if attacked.shape != image.shape or attacked.dtype != np.uint8:
            raise RuntimeError(f"attack {self.name!r} returned {attacked.dtype} "
                               f"{attacked.shape} for a uint8 {image.shape} image")
        if extra_mask.shape != image.shape[:2] or extra_mask.dtype != bool:
            raise RuntimeError(f"attack {self.name!r} returned a bad extra_mask "
                               f"({extra_mask.dtype} {extra_mask.shape})")
        return attacked, extra_mask


def _jpeg(quality: int) -> EvaluationAttack:
    return EvaluationAttack(
        f"jpeg{quality}", f"JPEG QF={quality}",
        lambda image, seed: jpeg_attack(image, quality),
        f"Pillow JPEG, quality {quality}, 4:2:0, encoded and decoded in memory")


def _resize(percent: int) -> EvaluationAttack:
    return EvaluationAttack(
        f"resize{percent}", f"Scaling {percent}%",
        lambda image, seed: resize_attack(image, percent / 100),
        f"Pillow bicubic resize to {percent} % of each side and back to the original size")


def _crop(percent: int) -> EvaluationAttack:
    return EvaluationAttack(
        f"crop{percent}", f"Cropping {percent}%",
        lambda image, seed: crop_attack(image, percent / 100),
        f"centred window keeping {percent} % of the area (image's aspect ratio); the rest "
        "black, marked in extra_mask")


TABLE1_ATTACKS: tuple[EvaluationAttack, ...] = (
    _jpeg(90), _jpeg(70), _jpeg(50),
    _resize(150), _resize(70), _resize(50),
    _crop(90), _crop(70), _crop(50),
    EvaluationAttack(
        "blur", "Blurring", lambda image, seed: blur_attack(image),
        f"Gaussian blur, {BLUR_KERNEL_SIZE}x{BLUR_KERNEL_SIZE} kernel, sigma {BLUR_SIGMA:.1f}, "
        "mirrored borders"),
    EvaluationAttack(
        "noise", "AWGN", lambda image, seed: noise_attack(image, seed),
        f"additive white Gaussian noise, sigma {NOISE_SIGMA} of the [0, 1] range "
        f"({NOISE_SIGMA * 255:.1f} levels), seeded"),
    EvaluationAttack("none", "No attack", lambda image, seed: none_attack(image),
                     "the image unchanged"),
)
"""The columns of the paper's Table 1, in its order."""

ATTACKS: dict[str, EvaluationAttack] = {attack.name: attack for attack in TABLE1_ATTACKS}
ATTACK_NAMES: tuple[str, ...] = tuple(ATTACKS)


def get_attack(name: str) -> EvaluationAttack:
    """The attack called `name`; ValueError listing the valid names otherwise."""
    try:
        return ATTACKS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown evaluation attack {name!r}; valid names: {', '.join(ATTACK_NAMES)}"
        ) from None


def apply_attack(name: str, image, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Applies the attack `name` to a uint8 H x W x 3 image.

    Returns (attacked uint8 image of the same size, extra_mask bool H x W). Raises ValueError
    for an unknown name, a bad image or a bad seed.
    """
    return get_attack(name)(image, seed)
