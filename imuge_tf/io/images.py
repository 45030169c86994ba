"""Image files: reading them strictly, encoding arrays in the format their suffix names, and
writing them atomically (`imuge_tf.io.atomic`).

Reading (`read_image`) turns any photo Pillow can open into 8-bit RGB, or raises one
`ImageReadError` whose message names the file and the problem: oversized files are refused
from their header, before any pixel is decoded (decompression bombs), and truncated files are
refused rather than padded.

Immunized images must be stored losslessly: the hidden residual is only a few 8-bit levels,
which JPEG or lossy WebP re-encoding wipes out, so those formats need `allow_lossy=True`.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings
import zlib

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from imuge_tf.io.atomic import ImageWriteError, write_bytes_atomic
from imuge_tf.io.pixels import to_rgb

# Suffixes that count as image files when folders are searched (any case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# 64 megapixels decode to 192 MB of RGB (and several times that in float32 inside the
# networks): larger than any camera photo a user would immunize, small enough to be safe.
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MIN_SIZE = 32

# PNGs are written by `encode_png`: the Sub filter and Huffman-only deflate, in row bands
# compressed in parallel (BENCHMARKS.md, "native_quality", compares it with Pillow's).
PNG_BANDS_PER_THREAD = 4
# Suffix -> (Pillow format, save options). TIFF is deflate-compressed, which is lossless.
LOSSLESS_FORMATS = {
    ".png": ("PNG", {}),
    ".bmp": ("BMP", {}),
    ".tif": ("TIFF", {"compression": "tiff_adobe_deflate"}),
    ".tiff": ("TIFF", {"compression": "tiff_adobe_deflate"}),
}
# Written only with allow_lossy=True; high quality and no chroma subsampling keep the damage
# as small as these codecs allow, but it is still enough to erase the immunization.
LOSSY_FORMATS = {
    ".jpg": ("JPEG", {"quality": 95, "subsampling": 0}),
    ".jpeg": ("JPEG", {"quality": 95, "subsampling": 0}),
    ".webp": ("WEBP", {"quality": 95}),
}


class ImageReadError(ValueError):
    """A file that cannot be used as an image; the message names the file and the problem."""


# ---------------------------------------------------------------------------------------------
# Reading


@contextlib.contextmanager
def _strict_pillow():
    """Pillow settings for one strict read: truncated files fail, bomb warnings are errors."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    # Some libraries switch this on globally; a truncated immunized photo must not be padded
    # with grey and then verified as if it were complete.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _megapixels(pixels):
    return f"{pixels / 1e6:.1f} megapixels"


def read_image(path, max_pixels=DEFAULT_MAX_PIXELS, min_size=DEFAULT_MIN_SIZE):
    """Decodes an image file to an oriented uint8 RGB array, H x W x 3.

    The EXIF orientation is applied (H and W are those a viewer shows). CMYK, palette,
    greyscale, 1-bit, 16-bit and float images become 8-bit RGB; transparent areas are
    composited onto white (see `to_rgb`). For multi-frame files (GIF, TIFF) the first frame
    is read.

    Raises ImageReadError, with a one-line message naming the file, for a missing, empty,
    corrupt, truncated or non-image file, for one larger than `max_pixels` (checked from the
    header, before decoding) and for one smaller than `min_size` pixels on a side.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ImageReadError(f"{path}: is a folder, not an image file")
    try:
        if os.path.getsize(path) == 0:
            raise ImageReadError(f"{path}: empty file (0 bytes)")
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except OSError as error:
        raise ImageReadError(f"{path}: cannot read ({error.strerror or error})") from None

    try:
        with _strict_pillow(), Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageReadError(
                    f"{path}: too large ({width} x {height} = {_megapixels(width * height)}; "
                    f"the limit is {_megapixels(max_pixels)})"
                )
            if min(width, height) < min_size:
                raise ImageReadError(
                    f"{path}: too small ({width} x {height} pixels; at least {min_size} "
                    f"on each side is needed)"
                )
            # Decode everything now: a truncated or corrupt stream fails here, inside the try.
            image.load()
            oriented = ImageOps.exif_transpose(image)
            rgb = to_rgb(oriented)
            return np.array(rgb, dtype=np.uint8)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard fired before our header check could (a huge declared size).
        raise ImageReadError(
            f"{path}: too large (Pillow refuses it as a possible decompression bomb)"
        ) from None
    except UnidentifiedImageError:
        raise ImageReadError(
            f"{path}: not an image file (or a format Pillow cannot read)"
        ) from None
    except MemoryError:
        raise ImageReadError(f"{path}: not enough memory to decode it") from None
    except Exception as error:  # noqa: BLE001 - Pillow's decoders raise many types
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ImageReadError(f"{path}: corrupt or truncated image ({detail})") from None


# ---------------------------------------------------------------------------------------------
# Encoding and writing


def _as_pillow_image(array, path):
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ImageWriteError(f"{path}: images must be uint8 arrays, got {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        mode = "L"
    elif array.ndim == 3 and array.shape[-1] in (3, 4):
        mode = "RGB" if array.shape[-1] == 3 else "RGBA"
    else:
        mode = None
    if mode is None or min(array.shape[:2]) < 1:
        raise ImageWriteError(
            f"{path}: images must be H x W (grey), H x W x 3 or H x W x 4 arrays, "
            f"got shape {array.shape}"
        )
    return Image.fromarray(np.ascontiguousarray(array), mode)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def encode_png(array) -> bytes:
    """A PNG file of a uint8 H x W (grey), H x W x 3 (RGB) or H x W x 4 (RGBA) array.

    Every row uses PNG's Sub filter (each byte minus the same channel of the pixel to its
    left), and the filtered rows are deflated with Huffman coding only, in row bands that
    threads compress at once (zlib releases the GIL), joined as one zlib stream with full
    flushes between them: any PNG reader decodes it. BENCHMARKS.md (native_quality) compares
    its size and speed with Pillow's.
    """
    from concurrent.futures import ThreadPoolExecutor

    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or min(array.shape[:2]) < 1:
        raise ValueError(f"encode_png takes uint8 H x W (x 1, 3 or 4) arrays, got "
                         f"{array.dtype} {array.shape}")
    channels = 1 if array.ndim == 2 else array.shape[2]
    colour_type = {1: 0, 3: 2, 4: 6}.get(channels)
    if colour_type is None:
        raise ValueError(f"encode_png takes 1, 3 or 4 channels, got {channels}")
    height, width = array.shape[:2]
    flat = array.reshape(height, width * channels)
    rows = np.empty((height, width * channels + 1), np.uint8)
    rows[:, 0] = 1  # the Sub filter
    rows[:, 1:channels + 1] = flat[:, :channels]
    np.subtract(flat[:, channels:], flat[:, :-channels], out=rows[:, channels + 1:])
    threads = max(1, min(os.cpu_count() or 1, 8))
    bands = max(1, min(height, threads * PNG_BANDS_PER_THREAD))
    edges = np.linspace(0, height, bands + 1).astype(int)

    def deflate(index):
        compressor = zlib.compressobj(1, zlib.DEFLATED, -15, 9, zlib.Z_HUFFMAN_ONLY)
        data = compressor.compress(memoryview(rows[edges[index]:edges[index + 1]]).cast("B"))
        last = index == bands - 1
        return data + compressor.flush(zlib.Z_FINISH if last else zlib.Z_FULL_FLUSH)

    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(deflate, range(bands)))
    checksum = zlib.adler32(memoryview(rows).cast("B")) & 0xFFFFFFFF
    stream = b"\x78\x01" + b"".join(parts) + struct.pack(">I", checksum)
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", stream)
            + _png_chunk(b"IEND", b""))


def image_format(path, allow_lossy=False):
    """(Pillow format, save options) for the suffix of `path`; raises ImageWriteError for
    lossy formats (unless `allow_lossy`) and unknown suffixes."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix in LOSSLESS_FORMATS:
        return LOSSLESS_FORMATS[suffix]
    if suffix in LOSSY_FORMATS:
        if allow_lossy:
            return LOSSY_FORMATS[suffix]
        raise ImageWriteError(
            f"{path}: {suffix[1:].upper()} is lossy and would destroy the immunization (the "
            f"hidden residual is only a few 8-bit levels); use .png, .bmp or .tiff, or allow "
            f"lossy output explicitly (--allow-lossy)"
        )
    known = ", ".join(sorted({*LOSSLESS_FORMATS, *LOSSY_FORMATS}))
    raise ImageWriteError(f"{path}: unknown image suffix {suffix or '(none)'!r}; use one of "
                          f"{known}")


def encode_image(path, array, *, allow_lossy=False):
    """The bytes of the file `write_image` writes for `array` at `path` (format from the
    suffix, checked as there); raises ImageWriteError. Encoding every output of a photo
    before writing any lets `write_files_atomic` write them as one unit."""
    path = os.fspath(path)
    pillow_format, options = image_format(path, allow_lossy)
    image = _as_pillow_image(array, path)
    if pillow_format == "JPEG" and image.mode == "RGBA":
        raise ImageWriteError(f"{path}: JPEG cannot store an alpha channel")
    if pillow_format == "PNG":
        return encode_png(np.asarray(image))
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=pillow_format, **options)
    except (OSError, ValueError) as error:
        raise ImageWriteError(f"{path}: cannot encode as {pillow_format} ({error})") from None
    return buffer.getvalue()


def write_image(path, array, *, force=False, allow_lossy=False):
    """Writes a uint8 image (H x W grey, H x W x 3 RGB or H x W x 4 RGBA) to `path`.

    The format comes from the suffix: .png, .bmp, .tif/.tiff are lossless; .jpg/.jpeg/.webp
    are refused unless `allow_lossy` (they erase the immunization); others are refused. The
    write is atomic and an existing file is kept unless `force`. Raises ImageWriteError.
    """
    # Encoded in memory first: an encoder error then leaves no temporary file to clean up, and
    # the bytes are known before the target folder is touched.
    write_bytes_atomic(path, encode_image(path, array, allow_lossy=allow_lossy), force=force)
