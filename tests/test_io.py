"""Reading and writing image files: strict decoding, format conversions, atomic lossless writes."""

import errno
import io
import json
import os
import signal
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from imuge_tf import io as imuge_io
from imuge_tf.io import (
    ImageReadError,
    ImageWriteError,
    atomic,
    mask_to_image,
    overlay,
    read_image,
    write_image,
    write_text_atomic,
)


def gradient(height=40, width=48):
    """A colourful uint8 test image with every pixel different from its neighbours."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 5 % 256, y * 6 % 256, (x * y) % 256], axis=-1).astype(np.uint8)


def png_bytes(width, height, bit_depth, colour_type, rows=None):
    """A PNG written by hand: for 48-bit images (Pillow cannot write them) and forged headers."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    body = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    if rows is not None:
        body += chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + row for row in rows)))
    return body + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------
# Reading


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".tiff"])
def test_lossless_round_trip(tmp_path, suffix):
    image = gradient()
    path = tmp_path / f"image{suffix}"
    write_image(path, image)
    np.testing.assert_array_equal(read_image(path), image)
    assert Image.open(path).format == imuge_io.LOSSLESS_FORMATS[suffix][0]


def test_modes_become_eight_bit_rgb(tmp_path):
    grey = np.tile(np.arange(0, 240, 5, dtype=np.uint8), (40, 1))  # 40 x 48
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    out = read_image(tmp_path / "grey.png")
    assert out.shape == (40, 48, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=-1))

    # 16-bit greyscale PNG (mode I;16): full scale 65535 -> 255.
    deep = (grey.astype(np.uint16) * 257)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png")[..., 1], grey)

    # Float TIFF in [0, 1].
    Image.fromarray(grey.astype(np.float32) / 255.0, "F").save(tmp_path / "float.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "float.tif")[..., 2], grey)

    # 48-bit RGB PNG: the high byte of each 16-bit sample.
    rgb = gradient()
    rows = [(row.astype(">u2") * 257).tobytes() for row in rgb]
    (tmp_path / "deep_rgb.png").write_bytes(png_bytes(48, 40, 16, 2, rows))
    np.testing.assert_array_equal(read_image(tmp_path / "deep_rgb.png"), rgb)

    # CMYK JPEG.
    red = np.zeros((40, 48, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    np.testing.assert_allclose(read_image(tmp_path / "cmyk.jpg").mean(axis=(0, 1)),
                               (255, 0, 0), atol=20)


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((40, 48, 4), np.uint8)
    rgba[..., 1] = 128
    rgba[:, :24, 3] = 255  # left opaque green, right transparent
    rgba[:, 24:36, 3] = 128  # a half-transparent band
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    image = read_image(tmp_path / "alpha.png")
    np.testing.assert_array_equal(image[:, :24], np.full((40, 24, 3), (0, 128, 0)))
    np.testing.assert_allclose(image[:, 24:36], np.full((40, 12, 3), (127, 191, 127)), atol=1)
    np.testing.assert_array_equal(image[:, 36:], np.full((40, 12, 3), 255))

    la = Image.fromarray(rgba[..., 1], "L")
    la.putalpha(Image.fromarray(rgba[..., 3], "L"))
    la.save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    np.testing.assert_array_equal(read_image(tmp_path / "la.png")[:, 36:], 255)

    palette = Image.fromarray(gradient()).quantize(colors=8)
    palette.save(tmp_path / "palette.png", transparency=palette.getpixel((0, 0)))
    image = read_image(tmp_path / "palette.png")
    np.testing.assert_array_equal(image[0, 0], (255, 255, 255))


def test_exif_orientation_is_applied(tmp_path):
    image = np.zeros((40, 64, 3), np.uint8)
    image[:, :32] = (255, 0, 0)
    image[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    Image.fromarray(image).save(tmp_path / "turned.png", exif=exif)
    out = read_image(tmp_path / "turned.png")
    assert out.shape == (64, 40, 3)
    np.testing.assert_array_equal(out[0, 0], (255, 0, 0))  # the left half is now on top
    np.testing.assert_array_equal(out[-1, 0], (0, 0, 255))


def one_line_error(path, **kwargs):
    with pytest.raises(ImageReadError) as info:
        read_image(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_bad_files_raise_one_clear_line(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(gradient()).save(good)
    data = good.read_bytes()

    (tmp_path / "empty.png").write_bytes(b"")
    assert "empty file" in one_line_error(tmp_path / "empty.png")
    (tmp_path / "notes.jpg").write_text("not an image at all\n" * 10)
    assert "not an image" in one_line_error(tmp_path / "notes.jpg")
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    assert "truncated" in one_line_error(tmp_path / "truncated.png")
    corrupt = bytearray(data)
    corrupt[len(data) // 2: len(data) // 2 + 64] = os.urandom(64)
    (tmp_path / "corrupt.png").write_bytes(bytes(corrupt))
    assert "corrupt" in one_line_error(tmp_path / "corrupt.png")
    assert "no such file" in one_line_error(tmp_path / "missing.png")
    assert "folder" in one_line_error(tmp_path)
    assert isinstance(ImageReadError("x"), ValueError)


def test_truncated_jpeg_is_refused_even_if_pillow_is_set_to_pad(tmp_path, monkeypatch):
    path = tmp_path / "photo.jpg"
    Image.fromarray(gradient(64, 64)).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:-200])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    one_line_error(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored


def test_size_limits_are_checked_from_the_header(tmp_path, monkeypatch):
    path = tmp_path / "image.png"
    Image.fromarray(gradient()).save(path)
    assert "too small" in one_line_error(path, min_size=41)
    assert read_image(path, min_size=40).shape == (40, 48, 3)

    # Large images are refused before any pixel is decoded.
    def no_decoding(self):
        raise AssertionError("decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    assert "too large" in one_line_error(path, max_pixels=40 * 48 - 1)
    # Forged headers: 72 megapixels (over our limit, under Pillow's) and 10 gigapixels (over
    # Pillow's own decompression-bomb limit); neither has any pixel data.
    for side in (9000, 8000), (100_000, 100_000):
        forged = tmp_path / f"bomb{side[0]}.png"
        forged.write_bytes(png_bytes(*side, 8, 2))
        assert "too large" in one_line_error(forged)


# ---------------------------------------------------------------------------------------------
# Writing


def leftovers(folder):
    return sorted(name for name in os.listdir(folder) if name.startswith("."))


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".webp", ".JPG"])
def test_lossy_formats_need_permission(tmp_path, suffix):
    path = tmp_path / f"out{suffix}"
    with pytest.raises(ImageWriteError, match="lossy.*immunization"):
        write_image(path, gradient())
    assert os.listdir(tmp_path) == []
    write_image(path, gradient(), allow_lossy=True)
    decoded = np.asarray(Image.open(path).convert("RGB"))
    assert decoded.shape == (40, 48, 3)
    assert np.abs(decoded.astype(int) - gradient()).mean() < 10


def test_unknown_suffix_is_refused(tmp_path):
    for name in ("out.gif", "out", "out.txt"):
        with pytest.raises(ImageWriteError, match="unknown image suffix"):
            write_image(tmp_path / name, gradient())
    assert os.listdir(tmp_path) == []


def test_existing_files_are_kept_unless_forced(tmp_path):
    path = tmp_path / "out.png"
    write_image(path, gradient())
    other = 255 - gradient()
    with pytest.raises(ImageWriteError, match="already exists"):
        write_image(path, other)
    np.testing.assert_array_equal(read_image(path), gradient())
    write_image(path, other, force=True)
    np.testing.assert_array_equal(read_image(path), other)
    assert leftovers(tmp_path) == []


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    path = tmp_path / "out.png"

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "link", broken)
    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(ImageWriteError, match="No space left"):
        write_image(path, gradient())
    assert os.listdir(tmp_path) == []

    monkeypatch.undo()
    existing = tmp_path / "keep.png"
    write_image(existing, gradient())
    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(ImageWriteError):
        write_image(existing, 255 - gradient(), force=True)
    np.testing.assert_array_equal(read_image(existing), gradient())
    assert leftovers(tmp_path) == []


def test_bad_arrays_and_unwritable_paths(tmp_path):
    with pytest.raises(ImageWriteError, match="uint8"):
        write_image(tmp_path / "a.png", gradient().astype(np.float32))
    with pytest.raises(ImageWriteError, match="H x W"):
        write_image(tmp_path / "a.png", np.zeros((4, 4, 2), np.uint8))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ImageWriteError, match="cannot write"):
        write_image(tmp_path / "file" / "a.png", gradient())


def test_outputs_get_ordinary_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        write_image(tmp_path / "a.png", gradient())
    finally:
        os.umask(previous)
    assert (os.stat(tmp_path / "a.png").st_mode & 0o777) == 0o644


def test_text_reports(tmp_path):
    path = tmp_path / "sub" / "report.json"
    write_text_atomic(path, json.dumps({"verdict": "intact"}))
    assert json.loads(path.read_text()) == {"verdict": "intact"}
    with pytest.raises(ImageWriteError, match="already exists"):
        write_text_atomic(path, "{}")
    write_text_atomic(path, "{}", force=True)
    assert path.read_text() == "{}"


# ---------------------------------------------------------------------------------------------
# Verification outputs


def test_mask_image_and_overlay():
    mask = np.zeros((64, 80), bool)
    mask[20:40, 30:50] = True
    mask_image = mask_to_image(mask)
    assert mask_image.dtype == np.uint8
    np.testing.assert_array_equal(mask_image, np.where(mask, 255, 0))

    image = np.full((64, 80, 3), 100, np.uint8)
    result = overlay(image, mask)
    assert result.shape == image.shape and result.dtype == np.uint8
    inside = result[mask]
    assert (inside[:, 0] > 150).all() and (inside[:, 1] < 100).all()  # tinted red
    np.testing.assert_array_equal(result[19, 35], (255, 0, 0))  # outline just outside
    np.testing.assert_array_equal(result[0:15], image[0:15])  # the rest is untouched
    np.testing.assert_array_equal(overlay(image, np.zeros((64, 80), bool)), image)
    with pytest.raises(ValueError, match="does not match"):
        overlay(image, np.zeros((10, 10), bool))


@pytest.mark.parametrize("shape", [(1, 1), (37, 53), (1, 40, 3), (40, 1, 3), (61, 47, 3),
                                   (33, 65, 4), (20, 30, 1)])
def test_encode_png_round_trips_through_pillow_and_libpng(shape):
    import tensorflow as tf

    from imuge_tf.io import encode_png

    array = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    data = encode_png(array)
    with Image.open(io.BytesIO(data)) as decoded:
        decoded.load()
        back = np.asarray(decoded)
    expected = array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array
    np.testing.assert_array_equal(back, expected)
    channels = 1 if array.ndim == 2 else array.shape[2]
    by_libpng = tf.io.decode_png(data, channels=channels).numpy()
    np.testing.assert_array_equal(by_libpng.reshape(expected.shape), expected)


def test_encode_png_compresses_a_photo_and_refuses_other_arrays(photos):
    from imuge_tf.io import encode_png

    photo = photos["astronaut"]
    assert len(encode_png(photo)) < 0.8 * photo.nbytes
    with pytest.raises(ValueError, match="uint8"):
        encode_png(photo.astype(np.float32))
    with pytest.raises(ValueError, match="channels"):
        encode_png(photo[:, :, :2])


# ---------------------------------------------------------------------------------------------
# Several files as one unit; leftovers of killed processes


def fail_placing(monkeypatch, target):
    """Makes moving a temporary file onto `target` fail with ENOSPC, as a full disk would
    (link and replace are the two ways write_files_atomic places a file)."""
    real_link, real_replace = os.link, os.replace

    def guarded(real):
        def call(source, destination, *args, **kwargs):
            if os.fspath(destination) == os.fspath(target):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(source, destination, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "link", guarded(real_link))
    monkeypatch.setattr(os, "replace", guarded(real_replace))


def photo_outputs(folder, version):
    return {folder / "x.mask.png": imuge_io.encode_image("x.png", gradient() // version),
            folder / "x.overlay.png": imuge_io.encode_image("x.png", 255 - gradient()),
            folder / "x.json": json.dumps({"version": version}).encode()}


def test_write_files_atomic_writes_all_or_none(tmp_path, monkeypatch):
    files = photo_outputs(tmp_path, 1)
    imuge_io.write_files_atomic(files)
    assert {path: path.read_bytes() for path in files} == files
    assert leftovers(tmp_path) == []

    # One target exists: refused before anything is written, the others stay absent.
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.overlay.png").write_bytes(b"earlier")
    with pytest.raises(ImageWriteError, match="x.overlay.png: already exists"):
        imuge_io.write_files_atomic(photo_outputs(other, 1))
    assert os.listdir(other) == ["x.overlay.png"]

    # The disk fills up when the second file is moved into place (simulated): the first one,
    # placed already, is removed again; nothing of this photo is left.
    fresh = tmp_path / "fresh"
    fail_placing(monkeypatch, fresh / "x.overlay.png")
    with pytest.raises(ImageWriteError, match=r"x.overlay.png: cannot write \(No space left"):
        imuge_io.write_files_atomic(photo_outputs(fresh, 1))
    assert os.listdir(fresh) == []

    # The same over an earlier version, with force: the earlier files are all put back.
    fail_placing(monkeypatch, tmp_path / "x.json")
    with pytest.raises(ImageWriteError, match="No space left"):
        imuge_io.write_files_atomic(photo_outputs(tmp_path, 2), force=True)
    assert {path: path.read_bytes() for path in files} == files
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    imuge_io.write_files_atomic(photo_outputs(tmp_path, 2), force=True)
    assert json.loads((tmp_path / "x.json").read_text()) == {"version": 2}
    assert leftovers(tmp_path) == []


def test_write_files_atomic_fails_early_without_placing_anything(tmp_path, monkeypatch):
    # A real failure half way through writing the temporary files: the second output's folder
    # cannot be created, because a regular file has its name.
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(ImageWriteError, match="taken/x.png: cannot write"):
        imuge_io.write_files_atomic({tmp_path / "x.png": b"first",
                                     tmp_path / "taken" / "x.png": b"second"})
    assert sorted(os.listdir(tmp_path)) == ["taken"]

    # Syncing the second temporary file to disk fails (a full disk, simulated): no target.
    calls = []
    real_fsync = os.fsync

    def fsync(handle):
        calls.append(handle)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(handle)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(ImageWriteError, match=r"b.png: cannot write \(No space left"):
        imuge_io.write_files_atomic({tmp_path / "a.png": b"a", tmp_path / "b.png": b"b"})
    assert sorted(os.listdir(tmp_path)) == ["taken"]

    # An interruption (Ctrl-C) while placing takes back what was placed, then goes on.
    monkeypatch.undo()
    real_link = os.link

    def interrupted(source, destination, *args, **kwargs):
        if os.fspath(destination).endswith("b.png"):
            raise KeyboardInterrupt
        return real_link(source, destination, *args, **kwargs)

    monkeypatch.setattr(os, "link", interrupted)
    with pytest.raises(KeyboardInterrupt):
        imuge_io.write_files_atomic({tmp_path / "a.png": b"a", tmp_path / "b.png": b"b"})
    assert sorted(os.listdir(tmp_path)) == ["taken"]


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_partials_of_dead_processes_are_removed(tmp_path):
    target = tmp_path / "x.png"
    # A process killed with SIGKILL while writing its temporary file.
    child = subprocess.run(
        [sys.executable, "-c",
         "import os, signal, sys\nfrom imuge_tf.io import atomic\n"
         "handle, path = atomic._create_temporary(sys.argv[1])\nos.write(handle, b'half')\n"
         "os.kill(os.getpid(), signal.SIGKILL)", str(target)], timeout=60)
    assert child.returncode == -signal.SIGKILL
    (killed,) = os.listdir(tmp_path)
    dead = atomic._temporary_path(target, pid=dead_pid())
    live = atomic._temporary_path(target)  # this process's: still running
    host = atomic._host_tag()
    elsewhere = live.replace(f".{host}-", ".00000000-" if host != "00000000" else ".11111111-")
    older_naming = str(tmp_path / ".x.png.k3j2_x9a.partial")  # no pid: whose is unknown
    unrelated = str(tmp_path / ".x.png")
    for path in (dead, live, elsewhere, older_naming, unrelated):
        open(path, "wb").close()

    removed = imuge_io.remove_stale_partials(tmp_path)
    assert sorted(map(os.path.basename, removed)) == sorted([killed, os.path.basename(dead)])
    assert sorted(os.listdir(tmp_path)) == sorted(
        os.path.basename(path) for path in (live, elsewhere, older_naming, unrelated))
    assert imuge_io.remove_stale_partials(tmp_path) == []
    assert imuge_io.remove_stale_partials(tmp_path / "missing") == []
