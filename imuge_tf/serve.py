"""`imuge serve`: TF Serving's REST API (and optionally its gRPC Predict) over an exported model.

A development stand-in for TF Serving, so that clients and deployments can be tried on a
machine without it (production uses tensorflow/serving; see export/README.md). It serves the
newest numbered version under a model base folder (`DIR/serving/imuge`), on a threaded
stdlib HTTP server:

    GET  /v1/models/<name>[/versions/<v>]             model status
    GET  /v1/models/<name>[/versions/<v>]/metadata    signature definitions
    POST /v1/models/<name>[/versions/<v>]:predict     {"instances": [...]} or {"inputs": ...}

Requests and responses follow TF Serving's REST API: the row ("instances") and columnar
("inputs") formats, {"b64": ...} for binary strings, outputs whose names end in `_bytes`
returned as {"b64": ...}. A bad request (malformed JSON, a wrong dtype or shape, empty or
non-image bytes, a body over the size limit, more instances than the limit) gets HTTP 400 and
{"error": "..."}; the server goes on serving.

Its limits, so that no client can knock it over (each is a `Server` argument):

- a request body of at most `max_body_bytes` (Content-Length or chunked), at most
  `max_instances` instances (images) per predict, and at most `max_request_pixels` pixels in
  all, as the images' headers declare them (read by Pillow, before anything is decoded);
- every request must arrive completely, from the wait for its first byte to its body's last,
  within `timeout` seconds (an idle keep-alive connection is closed after as long);
- at most `max_connections` connections are served at once, one thread each; a connection
  beyond them is answered 503 with Retry-After and closed;
- the predict requests held at once (from their body's first byte to their answer) have
  bodies of at most `max_buffered_bytes` in all (4 of the largest allowed by default), and
  once a body has arrived, at most `max_predicts` predicts run at once and `max_queued` more
  wait for their turn (for at most `timeout` seconds); beyond either, 503 with Retry-After;
- a 500 says only "internal error; see the server log", and the traceback goes to the log
  (the `imuge_tf.serve` logger); a client that goes away costs one log line, no traceback.

Each image's decoded size is capped by the exported graph itself (its header is read before
decoding; see `_ServingGraph._declared_pixels` in imuge_tf/export/serving_graph.py), so TF
Serving has the same cap; the caps on instances and on a request's pixels in all are this
server's own.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import io
import json
import logging
import math
import os
import re
import socket
import sys
import threading
import time
from collections import deque
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_INSTANCES = 16
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_MAX_PREDICTS = 2
DEFAULT_MAX_QUEUED = 8
# A request's images in all: as many pixels as one image of the largest size the serving
# graph decodes (io.DEFAULT_MAX_PIXELS), so that one request costs at most that image's work.
DEFAULT_MAX_REQUEST_PIXELS = 64_000_000
DEFAULT_SIGNATURE = "serving_default"
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
INTERNAL_ERROR = "internal error; see the server log"
# A connection is closed by first ending its output, then reading and dropping its input for
# at most this long (until the client closes): closing a socket with unread input resets the
# connection, and a reset can destroy the answer before the client has read it.
_LINGER_SECONDS = 1.0
_MAX_LINGERING = 256
_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
                   r"(?P<rest>/metadata|:predict|:classify|:regress)?$")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")

logger = logging.getLogger(__name__)


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


class RequestError(Exception):
    """A request the server refuses; `status` is the HTTP status (400 by default); `close`:
    the connection must be closed after the answer (the request's end is not known)."""

    def __init__(self, message, status=HTTPStatus.BAD_REQUEST, close=False):
        super().__init__(message)
        self.status = int(status)
        self.close = close


class Busy(Exception):
    """No room for one more predict now: the client should retry (HTTP 503, gRPC
    RESOURCE_EXHAUSTED)."""


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


def find_versions(model_dir: str) -> dict:
    """{version: folder} of the numbered SavedModel folders under `model_dir`."""
    versions = {}
    for entry in os.listdir(model_dir):
        folder = os.path.join(model_dir, entry)
        if entry.isdigit() and os.path.isfile(os.path.join(folder, "saved_model.pb")):
            versions[int(entry)] = folder
    return versions


def _tensor_shape(spec):
    return [None if d is None else int(d) for d in spec.shape.as_list()]


class Model:
    """One exported model: its newest version, loaded, and TF Serving's view of it."""

    def __init__(self, model_dir: str, name: str | None = None):
        import tensorflow as tf

        model_dir = os.path.abspath(os.fspath(model_dir))
        if not os.path.isdir(model_dir):
            raise FileNotFoundError(f"--model-dir {model_dir}: no such folder")
        versions = find_versions(model_dir)
        if not versions:
            raise FileNotFoundError(
                f"--model-dir {model_dir}: no numbered SavedModel folders (<version>/"
                "saved_model.pb) inside; pass the model folder of an export, e.g. "
                "EXPORT/serving/imuge")
        self.name = name or os.path.basename(model_dir)
        self.version = max(versions)
        self.path = versions[self.version]
        self._loaded = tf.saved_model.load(self.path)
        self.signatures = dict(self._loaded.signatures)
        self.inputs = {key: fn.structured_input_signature[1]
                       for key, fn in self.signatures.items()}
        self.signature_defs = self._read_signature_defs()
        self.warmed_up = self._warm_up()

    def _warm_up(self) -> int:
        """Replays assets.extra/tf_serving_warmup_requests as TF Serving does when it loads a
        version (and, like it, fails to load a model whose warm-up fails). Returns the count."""
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        path = os.path.join(self.path, "assets.extra", "tf_serving_warmup_requests")
        if not os.path.isfile(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
            signature = self.signatures[request.model_spec.signature_name or DEFAULT_SIGNATURE]
            signature(**{key: tf.constant(tf.make_ndarray(value))
                         for key, value in request.inputs.items()})
            count += 1
        return count

    def _read_signature_defs(self):
        from tensorflow.core.protobuf import saved_model_pb2

        model = saved_model_pb2.SavedModel()
        with open(os.path.join(self.path, "saved_model.pb"), "rb") as handle:
            model.ParseFromString(handle.read())
        return model.meta_graphs[0].signature_def

    # -- the endpoints
    def check_version(self, version):
        if version is not None and version != str(self.version):
            raise RequestError(f"Servable not found for request: Specific({self.name}, "
                               f"{version})", HTTPStatus.NOT_FOUND)

    def status(self) -> dict:
        return {"model_version_status": [{
            "version": str(self.version), "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""}}]}

    def metadata(self) -> dict:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in self.signature_defs.items():
            # __saved_model_init_op is a loader detail, which TF Serving does not list.
            if not key.startswith("__"):
                signature_map.signature_def[key].CopyFrom(signature)
        described = json_format.MessageToDict(
            signature_map, preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True)
        return {"model_spec": {"name": self.name, "signature_name": "",
                               "version": str(self.version)},
                "metadata": {"signature_def": described}}

    def predict(self, body, max_instances=None, max_pixels=None) -> dict:
        """TF Serving's predict: a parsed JSON request -> the JSON response (a dict). A
        request with more than `max_instances` instances, or whose encoded images declare
        more than `max_pixels` pixels in all, is refused (None: no limit)."""
        import tensorflow as tf

        if not isinstance(body, dict):
            raise RequestError("JSON request must be an object")
        signature_name = body.get("signature_name", DEFAULT_SIGNATURE)
        if not isinstance(signature_name, str) or signature_name not in self.signatures:
            raise RequestError(f"Serving signature name: \"{signature_name}\" not found in "
                               f"signature def; available: {sorted(self.signatures)}")
        row = "instances" in body
        if row == ("inputs" in body):
            raise RequestError("JSON request must have exactly one of \"instances\" (row "
                               "format) or \"inputs\" (columnar format)")
        specs = self.inputs[signature_name]
        if row:
            named = _rows_to_inputs(body["instances"], specs, max_instances)
        else:
            named = _columns_to_inputs(body["inputs"], specs)
            for value in named.values():
                if isinstance(value, list):
                    _check_count(len(value), max_instances)
        arrays = {key: _to_array(key, value, specs[key]) for key, value in named.items()}
        _check_pixels(arrays.values(), max_pixels)
        try:
            outputs = self.signatures[signature_name](
                **{key: tf.constant(array) for key, array in arrays.items()})
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as error:
            raise RequestError(_tf_message(error)) from None
        return _format_outputs(outputs, row)


def _tf_message(error) -> str:
    """The meaningful part of a TF runtime error, without node names and graph details.

    E.g. "Graph execution error: Detected at node ... Input is empty. [[{{node ...}}]]"
    becomes "Input is empty.", and a failed tf.debugging assertion its own message.
    """
    message = str(getattr(error, "message", "") or error)
    message = re.sub(r"\{\{[^}]*\}\}", "", message)  # {{function_node ...}}, {{node ...}}
    message = re.sub(r"\[Op:[^\]]*\]", "", message)
    kept = []
    for line in message.splitlines():
        line = line.strip()
        if (not line or line.startswith(("[[", "Detected at node", "<stack traces", "File "))
                or line == "Graph execution error:"):
            continue
        kept.append(line)
    text = " ".join(kept).strip() or type(error).__name__
    assertion = re.match(r"assertion failed: \[([^\]]*)\]", text)
    return assertion.group(1) if assertion else text


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


def _check_pixels(arrays, max_pixels):
    if max_pixels is None:
        return
    total = sum(declared_pixels(blob) for array in arrays if array.dtype == object
                for blob in array.ravel())
    if total > max_pixels:
        raise RequestError(f"the request's images declare {total} pixels in all: this server "
                           f"takes at most {max_pixels} per request; send fewer or smaller "
                           "images per request")


def _check_count(count, max_instances):
    if max_instances is not None and count > max_instances:
        raise RequestError(f"{count} instances in one request: this server takes at most "
                           f"{max_instances} per request; send them in several requests")


def _rows_to_inputs(instances, specs, max_instances=None) -> dict:
    if not isinstance(instances, list):
        raise RequestError("\"instances\" must be a list")
    if not instances:
        raise RequestError("\"instances\" is empty: send at least one instance")
    _check_count(len(instances), max_instances)
    keys = list(specs)
    named = {key: [] for key in keys}
    for index, instance in enumerate(instances):
        if len(keys) == 1 and not (isinstance(instance, dict) and keys[0] in instance):
            # One input: an instance is its value (a {"b64": ...} object is a value too).
            named[keys[0]].append(instance)
            continue
        if not isinstance(instance, dict):
            raise RequestError(f"instance {index}: expected an object with the inputs "
                               f"{keys}")
        unknown = sorted(set(instance) - set(keys))
        missing = sorted(set(keys) - set(instance))
        if unknown or missing:
            raise RequestError(f"instance {index}: inputs {keys} expected; unknown "
                               f"{unknown}, missing {missing}")
        for key in keys:
            named[key].append(instance[key])
    return named


def _columns_to_inputs(inputs, specs) -> dict:
    keys = list(specs)
    if isinstance(inputs, dict) and not _is_b64(inputs):
        unknown = sorted(set(inputs) - set(keys))
        missing = sorted(set(keys) - set(inputs))
        if unknown or missing:
            raise RequestError(f"\"inputs\": inputs {keys} expected; unknown {unknown}, "
                               f"missing {missing}")
        return dict(inputs)
    if len(keys) != 1:
        raise RequestError(f"\"inputs\" must name the inputs {keys}")
    return {keys[0]: inputs}


def _is_b64(value) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _leaves(value, depth=0):
    """The scalars of a nested list, and the list's shape (None when ragged)."""
    if depth > MAX_NESTING:
        raise RequestError(f"lists nested more than {MAX_NESTING} deep: no input of this "
                           "model has that many dimensions")
    if isinstance(value, list):
        shapes, leaves = set(), []
        for item in value:
            sub_leaves, sub_shape = _leaves(item, depth + 1)
            leaves += sub_leaves
            shapes.add(None if sub_shape is None else tuple(sub_shape))
        if len(shapes) > 1 or None in shapes:
            return leaves, None
        inner = list(shapes.pop()) if shapes else []
        return leaves, [len(value), *inner]
    return [value], []


def _to_array(key, value, spec):
    """A request value for input `key` as a numpy array of the spec's dtype and shape."""
    import numpy as np

    leaves, shape = _leaves(value)
    if shape is None:
        raise RequestError(f"input '{key}': the nested lists are ragged (every list at one "
                           "depth must have the same length)")
    if spec.dtype.name == "string":
        converted = []
        for leaf in leaves:
            if _is_b64(leaf):
                try:
                    converted.append(base64.b64decode(leaf["b64"], validate=True))
                except (TypeError, ValueError):
                    raise RequestError(f"input '{key}': \"b64\" is not valid base64") from None
            elif isinstance(leaf, str):
                converted.append(leaf.encode("utf-8"))
            else:
                raise RequestError(f"input '{key}' takes strings (DT_STRING; binary data as "
                                   f"{{\"b64\": ...}}), got {type(leaf).__name__}")
        array = np.empty(len(converted), dtype=object)
        array[:] = converted
        array = array.reshape(shape)
    else:
        for leaf in leaves:
            if isinstance(leaf, bool) or not isinstance(leaf, (int, float)):
                shown = "an object" if isinstance(leaf, dict) else type(leaf).__name__
                raise RequestError(f"input '{key}' takes numbers ({spec.dtype.name}), got "
                                   f"{shown}")
        array = np.asarray(leaves, dtype=np.float64).reshape(shape)
        if not np.all(np.isfinite(array)):
            raise RequestError(f"input '{key}': NaN or infinite values")
        array = array.astype(spec.dtype.as_numpy_dtype)
    expected = _tensor_shape(spec)
    if len(expected) != array.ndim or any(
            want is not None and want != got for want, got in zip(expected, array.shape)):
        wanted = "[" + ", ".join("-1" if d is None else str(d) for d in expected) + "]"
        raise RequestError(f"input '{key}': shape {list(array.shape)} does not match the "
                           f"signature's {wanted}")
    return array


def _json_value(name, value):
    """One output value (numpy) as JSON, binary outputs (`*_bytes`) as {"b64": ...}."""
    import numpy as np

    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return [_json_value(name, item) for item in value]
        if value.dtype == np.float32:
            # float32 as its shortest decimal form (0.01, not 0.009999999776482582).
            shortest = np.empty(value.shape, dtype=object)
            shortest.ravel()[:] = [float(str(item)) for item in value.ravel()]
            return _finite(shortest.tolist())
        return _finite(value.tolist())
    if isinstance(value, bytes):
        if name.endswith("_bytes"):
            return {"b64": base64.b64encode(value).decode("ascii")}
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.float32):
        return _finite(float(str(value)))
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value


def _finite(value):
    # JSON has no NaN or infinity; TF Serving writes them as the strings below.
    if isinstance(value, list):
        return [_finite(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _format_outputs(outputs, row) -> dict:
    arrays = {name: tensor.numpy() for name, tensor in sorted(outputs.items())}
    if not row:
        columns = {name: _json_value(name, array) for name, array in arrays.items()}
        if len(columns) == 1:
            return {"outputs": next(iter(columns.values()))}
        return {"outputs": columns}
    sizes = {array.shape[0] if array.ndim else None for array in arrays.values()}
    if len(sizes) != 1 or None in sizes:
        raise RequestError("the outputs have different batch sizes, which the row format "
                           "cannot express; use the columnar format (\"inputs\")")
    count = sizes.pop()
    if len(arrays) == 1:
        name, array = next(iter(arrays.items()))
        return {"predictions": [_json_value(name, array[i]) for i in range(count)]}
    return {"predictions": [{name: _json_value(name, array[i])
                             for name, array in arrays.items()} for i in range(count)]}


# ---------------------------------------------------------------------------------------------
# HTTP


class _ClientGone(ConnectionError):
    """The client closed or reset the connection before its request had arrived."""


class _DeadlineReader:
    """A connection's input, read against a deadline: a request has until `deadline`, from the
    wait for its first byte to its body's last, however slowly its bytes come (a socket
    timeout alone would restart with every byte)."""

    def __init__(self, connection, stream):
        self._connection, self._stream = connection, stream
        self.deadline = math.inf

    def _arm(self):
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._connection.settimeout(remaining)

    def _call(self, method, *args):
        self._arm()
        try:
            return method(*args)
        except TimeoutError:
            raise
        except OSError as error:
            raise _ClientGone(f"{type(error).__name__}: {error}") from None

    def read1(self, size):
        return self._call(self._stream.read1, size)

    def read(self, size):
        parts, left = [], size
        while left > 0:
            piece = self.read1(min(left, 1 << 16))
            if not piece:
                break
            parts.append(piece)
            left -= len(piece)
        return b"".join(parts)

    def readline(self, limit=-1):
        parts, size = [], 0
        while limit < 0 or size < limit:
            buffered = self._call(self._stream.peek, 1)
            if not buffered:
                break
            newline = buffered.find(b"\n")
            take = len(buffered) if newline < 0 else newline + 1
            if limit >= 0:
                take = min(take, limit - size)
            piece = self._stream.read(take)  # already buffered: no read from the socket
            parts.append(piece)
            size += len(piece)
            if piece.endswith(b"\n"):
                break
        return b"".join(parts)

    @property
    def closed(self):
        return self._stream.closed

    def close(self):
        self._stream.close()


class _Handler(BaseHTTPRequestHandler):
    server_version = "imuge-serve"
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.rfile = _DeadlineReader(self.connection, self.rfile)

    def handle_one_request(self):
        self.rfile.deadline = time.monotonic() + self.server.request_timeout
        # The request's body as far as it is still unread: ("length", n), ("chunked",), or
        # "unknown" when its end cannot be found (then the connection must close).
        self._unread = None
        super().handle_one_request()

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        self.server.log_line(f"{self.address_string()} - {format % args}")

    def send_response(self, code, message=None):
        # Answers get the whole timeout to be written, whatever was left of the request's.
        self.connection.settimeout(self.server.request_timeout)
        super().send_response(code, message)

    def _send(self, status, payload, close=False, headers=()):
        data = (json.dumps(payload, indent=1) + "\n").encode("utf-8")
        self.send_response(int(status))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        if close or self._unread is not None:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    # -- the request's body
    def _framing(self):
        """How the body is delimited, from the headers; a request whose body's end cannot be
        told for certain is refused, and its connection closed (else the rest of its body
        would be read as the next request)."""
        encodings = self.headers.get_all("Transfer-Encoding") or []
        lengths = self.headers.get_all("Content-Length") or []
        if encodings:
            codings = [part.strip().lower() for value in encodings for part in value.split(",")]
            if codings != ["chunked"] or lengths:
                self._unread = "unknown"
                raise RequestError("Transfer-Encoding: only \"chunked\", alone and without "
                                   "Content-Length, is supported", HTTPStatus.BAD_REQUEST,
                                   close=True)
            self._unread = ("chunked",)
            return
        if not lengths:
            return
        values = {value.strip() for value in lengths}
        value = values.pop()
        if values or not re.fullmatch(r"\d{1,18}", value):
            self._unread = "unknown"
            raise RequestError(f"invalid Content-Length: {', '.join(lengths)[:100]}",
                               close=True)
        if int(value):
            self._unread = ("length", int(value))

    def _read_body(self, limit, keep=True):
        """The body's bytes (None when not `keep`: read and dropped). Over `limit`: dropped as
        far as DRAIN_LIMIT_BYTES allows, then RequestError."""
        unread, self._unread = self._unread, "unknown"
        if unread is None:
            self._unread = None
            return b""
        if unread[0] == "length":
            length = unread[1]
            if length > limit:
                if length <= DRAIN_LIMIT_BYTES:
                    self._take(length, keep=False)
                    self._unread = None
                raise RequestError(f"request body of {length} bytes exceeds the server's "
                                   f"limit of {limit} bytes")
            data = self._take(length, keep)
            self._unread = None
            return data
        parts, total = [], 0
        while True:
            line = self.rfile.readline(1024)
            if not line.endswith(b"\n"):
                raise (_ClientGone("the connection closed inside a chunked body") if not line
                       else RequestError("malformed chunked body", close=True))
            size = line.split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(size):
                raise RequestError("malformed chunked body: bad chunk size", close=True)
            size = int(size, 16)
            if size == 0:
                break
            total += size
            if total > limit:
                raise RequestError(f"chunked request body exceeds the server's limit of {limit}"
                                   " bytes", close=True)
            piece = self._take(size, keep)
            if keep:
                parts.append(piece)
            if self._take(2, True) != b"\r\n":
                raise RequestError("malformed chunked body: no CRLF after a chunk", close=True)
        for _ in range(64):  # trailer fields, up to an empty line
            line = self.rfile.readline(8192)
            if not line.endswith(b"\n"):
                raise _ClientGone("the connection closed inside a chunked body")
            if not line.strip():
                self._unread = None
                return b"".join(parts) if keep else None
        raise RequestError("malformed chunked body: too many trailer lines", close=True)

    def _take(self, length, keep):
        parts, left = [], length
        while left > 0:
            piece = self.rfile.read1(min(left, 1 << 16))
            if not piece:
                raise _ClientGone(f"the connection closed {left} bytes before the body's end")
            if keep:
                parts.append(piece)
            left -= len(piece)
        return b"".join(parts) if keep else None

    def _settle(self, patience=None):
        """Before an error answer: drops what is left of the body, so that the connection can
        serve the next request; where it cannot be (unknown end, too long, not all there
        within `patience` seconds), it will close."""
        if self._unread is None or self._unread == "unknown":
            return
        if self._unread[0] == "length" and self._unread[1] > DRAIN_LIMIT_BYTES:
            self._unread = "unknown"
            return
        if patience is not None:
            self.rfile.deadline = min(self.rfile.deadline, time.monotonic() + patience)
        try:
            self._read_body(DRAIN_LIMIT_BYTES, keep=False)
        except (RequestError, TimeoutError):
            self._unread = "unknown"

    # -- the endpoints
    def _route(self):
        path = self.path.split("?", 1)[0]
        match = _PATH.match(path)
        if not match:
            raise RequestError(f"Malformed request: {self.command} {path}",
                               HTTPStatus.NOT_FOUND)
        model = self.server.model
        if match["name"] != model.name:
            spec = (f"Specific({match['name']}, {match['version']})" if match["version"]
                    else f"Latest({match['name']})")
            raise RequestError(f"Servable not found for request: {spec}",
                               HTTPStatus.NOT_FOUND)
        model.check_version(match["version"])
        return match["rest"] or ""

    def _get(self):
        rest = self._route()
        if rest == "":
            return self.server.model.status()
        if rest == "/metadata":
            return self.server.model.metadata()
        raise RequestError(f"Malformed request: GET {self.path}", HTTPStatus.NOT_FOUND)

    def _post(self):
        rest = self._route()
        if rest != ":predict":
            raise RequestError(f"{rest[1:] or 'POST'} is not supported by this server: "
                               "use :predict", HTTPStatus.BAD_REQUEST)
        if self._unread is None and self.headers.get("Content-Length") is None:
            self._unread = "unknown"
            raise RequestError("a request body with a Content-Length header (or chunked) is "
                               "required", HTTPStatus.LENGTH_REQUIRED, close=True)
        server = self.server
        # The body's size is reserved before it is read, and held until the answer, so that
        # the requests held in memory at once (bodies, parsed JSON) stay within a budget; the
        # predicts' places are taken once a body has arrived, so that a client sending its
        # body slowly holds no place among them.
        declared = self._unread[1] if self._unread and self._unread[0] == "length" else 0
        size = min(declared or server.max_body_bytes, server.max_body_bytes)
        with server.buffered.reserve(size):
            body = self._read_body(server.max_body_bytes)
            try:
                request = json.loads(body.decode("utf-8"))
            except RecursionError:
                raise RequestError("JSON Parse error: nested too deeply") from None
            except (UnicodeDecodeError, ValueError) as error:
                raise RequestError(f"JSON Parse error: {error}") from None
            del body
            with server.slots.admitted(), server.slots.turn(server.request_timeout):
                return server.model.predict(request, max_instances=server.max_instances,
                                            max_pixels=server.max_request_pixels)

    def _answer(self, work):
        try:
            try:
                self._framing()
                payload = work()
            except RecursionError:
                raise RequestError("request nested too deeply") from None
        except RequestError as error:
            self._settle()
            self._send(error.status, {"error": str(error)}, close=error.close)
        except Busy as error:
            # Shed load at once: a busy server does not wait long for a body it will drop.
            self._settle(patience=1.0)
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"{error}; retry later"},
                       close=True, headers=[("Retry-After", str(RETRY_AFTER_SECONDS))])
        except TimeoutError:
            self._unread = "unknown"
            self._send(HTTPStatus.REQUEST_TIMEOUT,
                       {"error": f"the request did not arrive within "
                                 f"{self.server.request_timeout:g} s"}, close=True)
        except _ClientGone as error:
            self.close_connection = True
            self.log_message("client went away: %s", error)
        except Exception:  # noqa: BLE001 - the server must keep serving
            logger.exception("internal error answering %s %s", self.command,
                             self.path[:200])
            self._unread = self._unread or "unknown"
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": INTERNAL_ERROR},
                       close=True)
        else:
            self._send(HTTPStatus.OK, payload)

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._answer(self._get)

    def do_POST(self):  # noqa: N802 - http.server's naming
        self._answer(self._post)


class Server(HTTPServer):
    """The REST server; `serve_forever()` runs it, `shutdown()` stops it from another thread.

    Limits (see the module docstring): `max_body_bytes`, `max_instances` and
    `max_request_pixels` per predict, `max_buffered_bytes` of bodies held at once,
    `timeout` seconds for a request to arrive, `max_connections` served at once,
    `max_predicts` running and `max_queued` waiting (or a shared PredictSlots, `slots`).
    """

    # Connections beyond the accept loop's pace wait in the kernel's queue, not refused.
    request_queue_size = 128

    def __init__(self, model: Model, host="127.0.0.1", port=8501,
                 max_body_bytes=DEFAULT_MAX_BODY_BYTES, quiet=False, *,
                 max_instances=DEFAULT_MAX_INSTANCES, timeout=DEFAULT_TIMEOUT,
                 max_connections=DEFAULT_MAX_CONNECTIONS, max_predicts=DEFAULT_MAX_PREDICTS,
                 max_queued=DEFAULT_MAX_QUEUED, slots=None,
                 max_request_pixels=DEFAULT_MAX_REQUEST_PIXELS, max_buffered_bytes=None):
        self.model = model
        self.max_body_bytes = int(max_body_bytes)
        self.buffered = ByteBudget(max_buffered_bytes or BUFFERED_BODIES * self.max_body_bytes)
        self.max_instances = int(max_instances)
        self.max_request_pixels = int(max_request_pixels)
        self.request_timeout = float(timeout)
        self.max_connections = int(max_connections)
        self.slots = slots or PredictSlots(max_predicts, max_queued)
        self.quiet = quiet
        self.refused_connections = 0
        self._connections = 0
        self._lock = threading.Lock()
        self._lingering = deque()
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return self._connections

    def log_line(self, line):
        if not self.quiet:
            sys.stderr.write(line.rstrip("\n") + "\n")

    # -- one thread per connection, at most max_connections of them
    def process_request(self, request, client_address):
        with self._lock:
            full = self._connections >= self.max_connections
            if not full:
                self._connections += 1
        if full:
            self._refuse(request, client_address)
            return
        try:
            threading.Thread(target=self._serve_connection, args=(request, client_address),
                             name=f"imuge-serve {client_address[0]}", daemon=True).start()
        except BaseException:
            with self._lock:
                self._connections -= 1
            raise

    def _serve_connection(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - logged; the server goes on
            self.handle_error(request, client_address)
        finally:
            _close_gently(request)
            with self._lock:
                self._connections -= 1

    def _refuse(self, request, client_address):
        self.refused_connections += 1
        message = (json.dumps({"error": f"server busy: {self.max_connections} connections "
                                        "open; retry later"}) + "\n").encode("utf-8")
        head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(message)}\r\nRetry-After: {RETRY_AFTER_SECONDS}\r\n"
                "Connection: close\r\n\r\n").encode("ascii")
        try:
            request.setblocking(False)
            # A new connection's send buffer takes this at once: the accept loop never waits.
            request.send(head + message)
            request.shutdown(socket.SHUT_WR)
        except OSError:
            request.close()
            return
        self.log_line(f"{client_address[0]} - refused: {self.max_connections} connections "
                      "already open (503)")
        self._lingering.append((time.monotonic() + _LINGER_SECONDS, request))
        while len(self._lingering) > _MAX_LINGERING:
            self._lingering.popleft()[1].close()

    def service_actions(self):
        # Called by serve_forever between accepts: refused connections are drained and, once
        # their client has closed or their time is up, closed.
        now, kept = time.monotonic(), deque()
        while self._lingering:
            deadline, sock = self._lingering.popleft()
            try:
                while True:
                    if not sock.recv(1 << 16):
                        raise ConnectionError("closed by the client")
            except BlockingIOError:
                if now < deadline:
                    kept.append((deadline, sock))
                    continue
            except OSError:
                pass
            sock.close()
        self._lingering = kept

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # the client went away, or the network failed
            self.log_line(f"{client_address[0]} - client went away: "
                          f"{type(error).__name__}: {error}")
        else:
            logger.error("unexpected error on a connection from %s", client_address[0],
                         exc_info=True)

    def server_close(self):
        super().server_close()
        while self._lingering:
            self._lingering.popleft()[1].close()


def _close_gently(sock):
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + _LINGER_SECONDS
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            if not sock.recv(1 << 16):
                break
    except OSError:  # a timeout, or the connection already gone
        pass
    finally:
        sock.close()


# ---------------------------------------------------------------------------------------------
# gRPC (optional): TF Serving's PredictionService.Predict and GetModelMetadata


class _Abort(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def grpc_server(model: Model, host="127.0.0.1", port=8500, max_message_bytes=None, *,
                max_instances=DEFAULT_MAX_INSTANCES, slots=None, timeout=DEFAULT_TIMEOUT,
                max_request_pixels=DEFAULT_MAX_REQUEST_PIXELS):
    """A started grpc.Server with Predict over `model`; returns (server, bound port). It has
    the REST server's limits on instances, pixels and predicts (share `slots` with it)."""
    from concurrent import futures

    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    limit = int(max_message_bytes or DEFAULT_MAX_BODY_BYTES)
    slots = slots or PredictSlots()

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def _check(self, spec):
            if spec.name != model.name:
                raise _Abort(grpc.StatusCode.NOT_FOUND,
                             f"Servable not found for request: Latest({spec.name})")
            if spec.HasField("version") and spec.version.value != model.version:
                raise _Abort(grpc.StatusCode.NOT_FOUND,
                             f"Servable not found for request: Specific({spec.name}, "
                             f"{spec.version.value})")

        def _guarded(self, work, context):
            # context.abort raises, so it is called outside the handlers' own try.
            try:
                return work()
            except _Abort as error:
                code, message = error.code, str(error)
            except Busy as error:
                code, message = grpc.StatusCode.RESOURCE_EXHAUSTED, f"{error}; retry later"
            except Exception:  # noqa: BLE001 - the server must keep serving
                logger.exception("internal error answering a gRPC request")
                code, message = grpc.StatusCode.INTERNAL, INTERNAL_ERROR
            context.abort(code, message)

        def _predict(self, request):
            self._check(request.model_spec)
            name = request.model_spec.signature_name or DEFAULT_SIGNATURE
            if name not in model.signatures:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                             f"Serving signature name: \"{name}\" not found")
            specs = model.inputs[name]
            if set(request.inputs) != set(specs):
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                             f"inputs {sorted(specs)} expected, got {sorted(request.inputs)}")
            arguments = {}
            for key, spec in specs.items():
                proto = request.inputs[key]
                if proto.dtype != spec.dtype.as_datatype_enum:
                    raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"input '{key}': expects {spec.dtype.name}")
                dims = [d.size for d in proto.tensor_shape.dim]
                if dims and dims[0] > max_instances:
                    raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"{dims[0]} instances in one request: this server takes at "
                                 f"most {max_instances} per request; send them in several "
                                 "requests")
                value = tf.make_ndarray(proto)
                if not spec.shape.is_compatible_with(value.shape):
                    raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"input '{key}': shape {list(value.shape)} does not match "
                                 f"{_tensor_shape(spec)}")
                arguments[key] = tf.constant(value)
                try:
                    _check_pixels([value], max_request_pixels)
                except RequestError as error:
                    raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
            with slots.admitted(), slots.turn(timeout):
                try:
                    outputs = model.signatures[name](**arguments)
                except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as error:
                    raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, _tf_message(error)) from None
            response = predict_pb2.PredictResponse()
            response.model_spec.name = model.name
            response.model_spec.signature_name = name
            response.model_spec.version.value = model.version
            for key, tensor in outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(tensor.numpy()))
            return response

        def _metadata(self, request):
            self._check(request.model_spec)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = model.name
            response.model_spec.version.value = model.version
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, signature in model.signature_defs.items():
                if not key.startswith("__"):
                    signature_map.signature_def[key].CopyFrom(signature)
            response.metadata["signature_def"].Pack(signature_map)
            return response

        def Predict(self, request, context):  # noqa: N802 - the gRPC service's naming
            return self._guarded(lambda: self._predict(request), context)

        def GetModelMetadata(self, request, context):  # noqa: N802
            return self._guarded(lambda: self._metadata(request), context)

    # Enough workers for every running and waiting predict plus a metadata call; calls beyond
    # twice that are refused by gRPC itself (RESOURCE_EXHAUSTED) rather than queued unbounded.
    workers = slots.running + slots.queued + 1
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         maximum_concurrent_rpcs=2 * workers,
                         options=[("grpc.max_receive_message_length", limit),
                                  ("grpc.max_send_message_length", limit)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    server.start()
    return server, bound


def serve(model_dir, host="127.0.0.1", port=8501, grpc_port=None,
          max_body_bytes=DEFAULT_MAX_BODY_BYTES, quiet=False, ready=None, *,
          max_instances=DEFAULT_MAX_INSTANCES, timeout=DEFAULT_TIMEOUT,
          max_connections=DEFAULT_MAX_CONNECTIONS, max_predicts=DEFAULT_MAX_PREDICTS,
          max_queued=DEFAULT_MAX_QUEUED, max_request_pixels=DEFAULT_MAX_REQUEST_PIXELS):
    """Loads the model and serves until interrupted. `ready(server)` is called once listening.
    REST and gRPC share the limits on running and waiting predicts."""
    model = Model(model_dir)
    slots = PredictSlots(max_predicts, max_queued)
    server = Server(model, host, port, max_body_bytes=max_body_bytes, quiet=quiet,
                    max_instances=max_instances, timeout=timeout,
                    max_connections=max_connections, slots=slots,
                    max_request_pixels=max_request_pixels)
    rpc = None
    try:
        if grpc_port is not None:
            rpc, grpc_port = grpc_server(model, host, grpc_port, max_body_bytes,
                                         max_instances=max_instances, slots=slots,
                                         timeout=timeout,
                                         max_request_pixels=max_request_pixels)
        if ready is not None:
            ready(server, grpc_port)
        server.serve_forever()
    finally:
        server.server_close()
        if rpc is not None:
            rpc.stop(grace=None)
