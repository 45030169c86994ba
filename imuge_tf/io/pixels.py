"""Pixel arrays made from other pixel arrays, without files: any Pillow image as 8-bit RGB
(`to_rgb`, `high_depth_to_uint8`, shared with `imuge_tf.data`), the verification outputs
(`mask_to_image`, `overlay`) and `cover`, a photo scaled and cropped to fill a size."""

from __future__ import annotations

import numpy as np
from PIL import Image


def high_depth_to_uint8(array):
    """Grey levels of a 16/32-bit integer or float image as uint8."""
    if np.issubdtype(array.dtype, np.floating):
        array = np.nan_to_num(array.astype(np.float64))
        peak = array.max(initial=0.0)
        # Float images come as [0, 1] or [0, 255]; anything larger is scaled to its maximum.
        scale = 255.0 if peak <= 1.0 else (1.0 if peak <= 255.0 else 255.0 / peak)
        return np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
    array = array.astype(np.int64)
    peak = int(array.max(initial=0))
    if peak <= 255:
        # 8-bit data stored in a wide mode (e.g. mode "I" from some PNG/TIFF writers).
        return np.clip(array, 0, 255).astype(np.uint8)
    full = 65535 if peak <= 65535 else peak
    return np.clip(np.rint(array * (255.0 / full)), 0, 255).astype(np.uint8)


def to_rgb(image):
    """Any Pillow image as 8-bit RGB.

    Transparency (RGBA, LA, PA, palette or RGB with a transparent colour) is composited onto
    white, which is how a viewer on a white page shows it; 16-bit and float greyscale are
    scaled to 8 bits; CMYK, palette, greyscale and 1-bit images are converted as Pillow does.
    """
    if image.mode.startswith("I") or image.mode == "F":
        grey = high_depth_to_uint8(np.asarray(image))
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode == "RGB":
        return image
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")



def _check_mask(mask, shape=None):
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {mask.shape}")
    if shape is not None and mask.shape != tuple(shape):
        raise ValueError(f"mask shape {mask.shape} does not match the image's {tuple(shape)}")
    return mask.astype(bool)


def mask_to_image(mask):
    """A boolean H x W mask as a uint8 H x W image: 255 where tampered, 0 elsewhere."""
    return np.where(_check_mask(mask), np.uint8(255), np.uint8(0))


OVERLAY_COLOUR = (255, 0, 0)


def overlay(image, mask, alpha=0.45):
    """The image with the tampered area tinted red and outlined: uint8 H x W x 3.

    Inside the mask, pixels are blended with red (`alpha` red); a solid red outline is drawn
    just outside each region, a line about 1/256 of the shorter side wide (at least 1 pixel),
    so small regions stay visible on a thumbnail and the tinted content is not covered.
    """
    from scipy import ndimage  # a dependency, imported here to keep `imuge --help` light

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be a uint8 H x W x 3 array, got {image.dtype} "
                         f"{image.shape}")
    mask = _check_mask(mask, image.shape[:2])
    result = image.astype(np.float32)
    red = np.asarray(OVERLAY_COLOUR, np.float32)
    result[mask] = (1.0 - alpha) * result[mask] + alpha * red
    width = max(1, round(min(image.shape[:2]) / 256))
    grown = ndimage.binary_dilation(mask, np.ones((3, 3), bool), iterations=width)
    result[grown & ~mask] = red
    return np.clip(np.rint(result), 0, 255).astype(np.uint8)


def cover(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """`image` scaled (Lanczos) to cover height x width, then centre-cropped to it."""
    scale = max(height / image.shape[0], width / image.shape[1])
    size = (max(width, round(image.shape[1] * scale)), max(height, round(image.shape[0] * scale)))
    resized = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    top, left = (resized.shape[0] - height) // 2, (resized.shape[1] - width) // 2
    return np.ascontiguousarray(resized[top:top + height, left:left + width])
