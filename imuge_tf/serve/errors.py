"""What a refused or failed request is told: `RequestError` (4xx), `Busy` (503, gRPC
RESOURCE_EXHAUSTED), the generic message of a 500, and TF runtime errors cut down to the
part a client can act on."""

from __future__ import annotations

import re
from http import HTTPStatus

INTERNAL_ERROR = "internal error; see the server log"


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


def tf_error_message(error) -> str:
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
