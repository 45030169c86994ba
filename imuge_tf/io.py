"""Reading and writing image files safely.

Reading (`read_image`) turns any photo Pillow can open into 8-bit RGB, or raises one
`ImageReadError` whose message names the file and the problem: oversized files are refused
from their header, before any pixel is decoded (decompression bombs), and truncated files are
refused rather than padded.

Writing (`write_image`, `write_bytes_atomic`, `write_text_atomic`) is atomic: the data goes to
a temporary file in the target folder which is then renamed over the target, so a reader, a
crash or a full disk never leaves half a file behind. `write_files_atomic` writes the several
outputs of one photo as a unit: all or, on failure, none. Existing files are kept unless
`force=True`. Temporary files carry the writing process's pid in their name, so that
`remove_stale_partials` can remove those that a killed process left without touching those of
a run still writing. Immunized images must be stored losslessly: the hidden residual is only a few
8-bit levels, which JPEG or lossy WebP re-encoding wipes out, so those formats need
`allow_lossy=True`.

This module imports no TensorFlow, so the command line can use it before loading a model.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import secrets
import shutil
import socket
import stat
import struct
import warnings
import zlib

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "LOSSLESS_FORMATS",
    "LOSSY_FORMATS",
    "ImageReadError",
    "ImageWriteError",
    "encode_image",
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


class ImageWriteError(ValueError):
    """An image or report that was not written; the message names the file and the reason."""


# ---------------------------------------------------------------------------------------------
# Pixel conversions (shared with imuge_tf.data)


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
# Writing


# Temporary files are named `.<target name>.<host>-<pid>.<random>.partial`, next to their target:
# the host tag and the pid of the writing process let a later run tell a leftover of a killed
# process (removed by `remove_stale_partials`) from a file that a running process is writing.
PARTIAL_SUFFIX = ".partial"
_PARTIAL_NAME = re.compile(
    r"^\.(?P<target>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)\.[0-9a-f]+\.partial$")


def _host_tag():
    """8 hex digits naming this machine: a pid only means something on the machine that
    wrote it (an output folder may be shared over the network)."""
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _temporary_path(path, pid=None):
    """A fresh temporary name next to `path`, tagged with this machine and `pid` (default:
    this process)."""
    folder, name = os.path.split(os.path.abspath(path))
    pid = os.getpid() if pid is None else pid
    return os.path.join(folder, f".{name}.{_host_tag()}-{pid}.{secrets.token_hex(4)}"
                                f"{PARTIAL_SUFFIX}")


def _create_temporary(path):
    """A new empty temporary file next to `path`: (open file descriptor, its path)."""
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
             | getattr(os, "O_BINARY", 0))
    while True:
        temporary = _temporary_path(path)
        try:
            # 0o666 minus the umask: the permissions a plain open() gives a new file.
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue  # 32 random bits taken already: draw again


def _remove_quietly(path):
    with contextlib.suppress(OSError):
        os.remove(path)


def _keep_previous(path):
    """A second name for the existing `path` (a hard link; a copy where links are not
    supported), so that its previous version can be put back; returns that name."""
    follow = {"follow_symlinks": False} if os.link in os.supports_follow_symlinks else {}
    while True:
        backup = _temporary_path(path)
        try:
            os.link(path, backup, **follow)
            return backup
        except FileExistsError:
            continue
        except OSError:
            break
    handle, backup = _create_temporary(path)
    try:
        with os.fdopen(handle, "wb") as target, open(path, "rb") as source:
            shutil.copyfileobj(source, target)
            target.flush()
            os.fsync(target.fileno())
        shutil.copymode(path, backup)
    except BaseException:
        _remove_quietly(backup)
        raise
    return backup


def _exists_error(path):
    return ImageWriteError(f"{path}: already exists (use --force / force=True to overwrite)")


def _place(temporary, path, force):
    """Moves the complete `temporary` to `path` (without `force`, only if `path` is free)."""
    if force:
        os.replace(temporary, path)
        return
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise _exists_error(path) from None
    except OSError:
        if os.path.lexists(path):
            raise _exists_error(path) from None
        os.replace(temporary, path)


def _sync_folders(paths):
    """fsyncs the folders of `paths`, so that the renames survive a power cut (where the
    system allows opening a folder; elsewhere this does nothing)."""
    for folder in {os.path.dirname(os.path.abspath(path)) for path in paths}:
        try:
            handle = os.open(folder, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(handle)
        except OSError:
            pass
        finally:
            os.close(handle)


def write_files_atomic(files, force=False):
    """Writes several files as one unit: all of them or, on failure, none.

    `files` maps paths to bytes, in the order the files are moved into place (a report that
    lists the others goes last). Every file is first written in full to a temporary file next
    to its target, flushed and fsynced; only then are they renamed into place. If one cannot
    be placed, those this call placed already are taken back: new files are removed and, with
    `force`, previous versions are put back (they were kept under a second name until every
    file was placed), so the targets hold what they held before.

    Without `force`, a target that exists is an error, also when it appears while writing:
    targets are hard links to the temporary files, which fails if the target exists (where
    links are not supported, existence is checked just before an os.replace instead).

    A process killed while writing leaves its temporary files (`remove_stale_partials` removes
    them later) and never a half-written target; killed during the renames themselves, it can
    leave some of the targets placed and others not.

    Raises ImageWriteError naming the file and the reason; the targets are then unchanged
    (should taking back fail too, the message says what could not be undone).
    """
    targets = [(os.fspath(path), bytes(data)) for path, data in files.items()]
    seen = set()
    for path, _ in targets:
        if os.path.abspath(path) in seen:
            raise ImageWriteError(f"{path}: named twice in one write")
        seen.add(os.path.abspath(path))
        if not force and os.path.lexists(path):
            raise _exists_error(path)
        if os.path.isdir(path):
            raise ImageWriteError(f"{path}: is a folder")
    temporaries, backups, placed = {}, {}, []
    current = None
    try:
        for current, data in targets:
            os.makedirs(os.path.dirname(os.path.abspath(current)), exist_ok=True)
            handle, temporaries[current] = _create_temporary(current)
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
        if force:
            for current, _ in targets:
                if os.path.lexists(current):
                    backups[current] = _keep_previous(current)
        for current, _ in targets:
            _place(temporaries[current], current, force)
            placed.append(current)
        _sync_folders(path for path, _ in targets)
    except BaseException as error:
        kept = _take_back(placed, backups)
        if isinstance(error, OSError):
            message = f"{current}: cannot write ({error.strerror or error})"
        elif isinstance(error, ImageWriteError):
            message = str(error)
        else:  # KeyboardInterrupt and the like: taken back, then passed on
            raise
        if kept:
            message += "; could not undo: " + ", ".join(kept)
        raise ImageWriteError(message) from None
    finally:
        for temporary in temporaries.values():
            if os.path.lexists(temporary):
                _remove_quietly(temporary)
        for backup in backups.values():
            if os.path.lexists(backup):
                _remove_quietly(backup)


def _take_back(placed, backups):
    """Undoes the placements of a failed write_files_atomic; returns what could not be
    undone, one phrase per file."""
    problems = []
    for path in reversed(placed):
        try:
            if path in backups:
                os.replace(backups[path], path)
            else:
                os.remove(path)
        except OSError as error:
            problems.append(f"{path} ({error.strerror or error})")
            # Keep its previous version: after this failure it is the only copy.
            backup = backups.pop(path, None)
            if backup is not None:
                problems[-1] += f", previous version kept as {backup}"
    return problems


def _process_running(pid):
    """Whether process `pid` of this machine is running (when unsure: yes)."""
    if os.name == "nt" or pid <= 0:
        # os.kill would terminate the process on Windows; pid 0 or less are not processes.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process, running
        return True
    return True


def remove_stale_partials(folder):
    """Removes the temporary files that processes no longer running left in `folder` (not
    in its subfolders); returns their paths.

    Only files named as this module names its temporary files, by a process of this machine
    whose pid no longer runs, are removed: those of a run still writing, of another machine
    or of other programs are kept. A pid reused since by another process keeps its leftovers
    until that process ends.
    """
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    host = _host_tag()
    for name in sorted(names):
        match = _PARTIAL_NAME.match(name)
        if match is None or match["host"] != host or _process_running(int(match["pid"])):
            continue
        path = os.path.join(folder, name)
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.remove(path)
                removed.append(path)
        except OSError:
            continue  # removed meanwhile by another run's clean-up, or not ours to remove
    return removed


def write_bytes_atomic(path, data, force=False):
    """Writes `data` (bytes) to `path` atomically; an existing file needs `force`.

    Raises ImageWriteError when the file exists (without force) or cannot be written.
    """
    write_files_atomic({path: data}, force=force)


def write_text_atomic(path, text, force=False):
    """Writes `text` as UTF-8 to `path` atomically (e.g. a JSON report); see write_bytes_atomic."""
    write_bytes_atomic(path, text.encode("utf-8"), force=force)


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
    flushes between them: any PNG reader decodes it. Photos come out a little smaller than
    with zlib level 1 and several times faster than Pillow's adaptive filtering.
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


# ---------------------------------------------------------------------------------------------
# Verification outputs


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
