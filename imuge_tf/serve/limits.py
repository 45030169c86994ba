"""The server's limits: their defaults, the budget of request bodies held at once
(`ByteBudget`), the places for running and waiting predicts (`PredictSlots`), the caps on a
request's instances and declared pixels, and handing freed memory back to the system."""

from __future__ import annotations

import contextlib
import ctypes
import io
import sys
import threading
import time

from .errors import Busy, RequestError

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_INSTANCES = 16
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_MAX_PREDICTS = 2
DEFAULT_MAX_QUEUED = 8
# A request's images in all: as many pixels as one image of the largest size the serving
# graph decodes (io.DEFAULT_MAX_PIXELS), so that one request costs at most that image's work.
DEFAULT_MAX_REQUEST_PIXELS = 64_000_000
# Predict requests held at once (read, parsed, waiting or running): bodies of at most this
# many times the largest size allowed, in bytes (`max_buffered_bytes` sets another budget).
BUFFERED_BODIES = 4
# A body that is refused (over the limit, or not for :predict) is read and dropped (so the
# client sees the answer, not a reset connection) up to this many bytes; beyond that the
# connection is simply closed.
DRAIN_LIMIT_BYTES = 256 * 1024 * 1024
# Nested lists deeper than this are refused before anything walks them (a tensor input here
# has at most 4 dimensions).
MAX_NESTING = 32
RETRY_AFTER_SECONDS = 1


def _load_malloc_trim():
    # glibc keeps freed memory in its arenas; malloc_trim hands it back to the system. Other
    # C libraries (musl, macOS) have no such call, and there this is a no-op.
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def release_memory() -> None:
    """Returns the C heap's free memory to the system where the C library can (glibc)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class ByteBudget:
    """At most `limit` bytes reserved at once; `reserve(n)` raises Busy beyond it (a single
    reservation is always allowed when nothing else is held, so one body of any allowed size
    can be read)."""

    def __init__(self, limit):
        self.limit = int(limit)
        self._lock = threading.Lock()
        self.reserved = 0

    @contextlib.contextmanager
    def reserve(self, size):
        with self._lock:
            if self.reserved and self.reserved + size > self.limit:
                raise Busy(f"server busy: {self.reserved} bytes of request bodies being read")
            self.reserved += size
        try:
            yield
        finally:
            with self._lock:
                self.reserved -= size


class PredictSlots:
    """At most `running` predicts at once, and at most `queued` more waiting for a turn.

    `admitted()` holds a place (running or waiting) or raises Busy when all are taken; inside
    it, `turn(timeout)` waits for a running place, or raises Busy after `timeout` seconds.
    When the last running predict ends, the C heap's free memory is handed back.
    """

    def __init__(self, running=DEFAULT_MAX_PREDICTS, queued=DEFAULT_MAX_QUEUED):
        if running < 1 or queued < 0:
            raise ValueError("PredictSlots needs running >= 1 and queued >= 0")
        self.running, self.queued = int(running), int(queued)
        self._condition = threading.Condition()
        self._admitted = 0
        self._busy = 0

    @contextlib.contextmanager
    def admitted(self):
        with self._condition:
            if self._admitted >= self.running + self.queued:
                raise Busy(f"server busy: {self._admitted} predicts running or waiting")
            self._admitted += 1
        try:
            yield
        finally:
            with self._condition:
                self._admitted -= 1

    @contextlib.contextmanager
    def turn(self, timeout):
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._busy >= self.running:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Busy(f"server busy: no predict finished within {timeout:g} s")
                self._condition.wait(remaining)
            self._busy += 1
        try:
            yield
        finally:
            with self._condition:
                self._busy -= 1
                idle = self._busy == 0
                self._condition.notify()
            if idle:
                release_memory()


_HEADER_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")


def declared_pixels(data) -> int:
    """Width x height as an encoded image's header declares them (Pillow reads the header
    only); 0 when Pillow cannot tell, and then the serving graph refuses the bytes or decodes
    them itself."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=_HEADER_FORMATS) as image:
                width, height = image.size
    except Exception:  # noqa: BLE001 - anything Pillow cannot read is the graph's to refuse
        return 0
    return int(width) * int(height)


def check_pixels(arrays, max_pixels):
    if max_pixels is None:
        return
    total = sum(declared_pixels(blob) for array in arrays if array.dtype == object
                for blob in array.ravel())
    if total > max_pixels:
        raise RequestError(f"the request's images declare {total} pixels in all: this server "
                           f"takes at most {max_pixels} per request; send fewer or smaller "
                           "images per request")


def check_count(count, max_instances):
    if max_instances is not None and count > max_instances:
        raise RequestError(f"{count} instances in one request: this server takes at most "
                           f"{max_instances} per request; send them in several requests")

