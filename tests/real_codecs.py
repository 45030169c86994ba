"""Round trips through Pillow's real codecs (libjpeg, zlib), in memory, for the tests."""

import io

import numpy as np
from PIL import Image


def round_trip(image, format, **options):
    """uint8 H x W x 3 `image` saved as `format` and read back as RGB uint8."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=format, **options)
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        return np.asarray(decoded.convert("RGB")).copy()


def jpeg(image, quality=90):
    return round_trip(image, "JPEG", quality=quality)


def png(image):
    return round_trip(image, "PNG")
