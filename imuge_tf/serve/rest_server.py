"""The REST server (`Server`): the listening socket, one thread per connection up to
`max_connections`, a connection beyond them answered 503 at once, and every connection closed
so that its last answer reaches the client."""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time
from collections import deque
from http.server import HTTPServer

from .limits import (
    BUFFERED_BODIES,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_INSTANCES,
    DEFAULT_MAX_PREDICTS,
    DEFAULT_MAX_QUEUED,
    DEFAULT_MAX_REQUEST_PIXELS,
    DEFAULT_TIMEOUT,
    RETRY_AFTER_SECONDS,
    ByteBudget,
    PredictSlots,
)
from .model import Model
from .rest_handler import Handler

# A connection is closed by first ending its output, then reading and dropping its input for
# at most this long (until the client closes): closing a socket with unread input resets the
# connection, and a reset can destroy the answer before the client has read it.
_LINGER_SECONDS = 1.0
_MAX_LINGERING = 256

# The package's one logger, under the name export/README.md gives: imuge_tf.serve.
logger = logging.getLogger(__package__)


class Server(HTTPServer):
    """The REST server; `serve_forever()` runs it, `shutdown()` stops it from another thread.

    Limits (see the package docstring, imuge_tf/serve/__init__.py): `max_body_bytes`,
    `max_instances` and `max_request_pixels` per predict, `max_buffered_bytes` of bodies held
    at once, `timeout` seconds for a request to arrive, `max_connections` served at once,
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
        super().__init__((host, port), Handler)

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
