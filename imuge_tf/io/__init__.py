"""Reading and writing image files safely.

Reading (`read_image`) turns any photo Pillow can open into 8-bit RGB, or raises one
`ImageReadError` whose message names the file and the problem. Writing (`write_image`,
`write_bytes_atomic`, `write_text_atomic`, `write_files_atomic`) is atomic: a reader, a crash
or a full disk never leaves half a file behind, and existing files are kept unless
`force=True`; `remove_stale_partials` removes what killed writers left. Immunized images must
be stored losslessly, so lossy formats need `allow_lossy=True`.

The modules: `images` (reading, encoding and writing image files), `atomic` (atomic writes and
stale temporary files), `pixels` (conversions to 8-bit RGB, mask images, overlays, `cover`).

This package imports no TensorFlow, so the command line can use it before loading a model.
"""

from imuge_tf.io.atomic import (
    PARTIAL_SUFFIX,
    ImageWriteError,
    remove_stale_partials,
    write_bytes_atomic,
    write_files_atomic,
    write_text_atomic,
)
from imuge_tf.io.images import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIZE,
    IMAGE_EXTENSIONS,
    LOSSLESS_FORMATS,
    LOSSY_FORMATS,
    PNG_BANDS_PER_THREAD,
    ImageReadError,
    encode_image,
    encode_png,
    image_format,
    read_image,
    write_image,
)
from imuge_tf.io.pixels import (
    OVERLAY_COLOUR,
    cover,
    high_depth_to_uint8,
    mask_to_image,
    overlay,
    to_rgb,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIZE",
    "IMAGE_EXTENSIONS",
    "LOSSLESS_FORMATS",
    "LOSSY_FORMATS",
    "OVERLAY_COLOUR",
    "PARTIAL_SUFFIX",
    "PNG_BANDS_PER_THREAD",
    "ImageReadError",
    "ImageWriteError",
    "cover",
    "encode_image",
    "encode_png",
    "high_depth_to_uint8",
    "image_format",
    "mask_to_image",
    "overlay",
    "read_image",
    "remove_stale_partials",
    "to_rgb",
    "write_bytes_atomic",
    "write_files_atomic",
    "write_image",
    "write_text_atomic",
]
