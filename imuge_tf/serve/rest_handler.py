"""One connection of the REST server (`Handler`): each request read against its deadline
(`_DeadlineReader`), its body's framing (Content-Length or chunked, and a body whose end is
uncertain refused with the connection closed), the routes of TF Serving's REST API, and every
answer, errors included."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

from .errors import INTERNAL_ERROR, Busy, RequestError
from .limits import DRAIN_LIMIT_BYTES, RETRY_AFTER_SECONDS

_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
                   r"(?P<rest>/metadata|:predict|:classify|:regress)?$")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")

# The package's one logger, under the name export/README.md gives: imuge_tf.serve.
logger = logging.getLogger(__package__)


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


class Handler(BaseHTTPRequestHandler):
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
