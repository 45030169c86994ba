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

The package, one responsibility a module: `limits` (the defaults, the byte budget, the predict
slots, the caps on instances and pixels), `errors` (what a refused or failed request is told),
`model` (the loaded export and predict over it), `rest_json` (TF Serving's JSON requests and
responses), `rest_handler` (one connection: reading, framing, routing, answering),
`rest_server` (`Server`: connections), `grpc_service` (`grpc_server`); here, `serve()`, which
runs them together.
"""

from __future__ import annotations

from .errors import INTERNAL_ERROR, Busy, RequestError, tf_error_message
from .grpc_service import grpc_server
from .limits import (
    BUFFERED_BODIES,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_INSTANCES,
    DEFAULT_MAX_PREDICTS,
    DEFAULT_MAX_QUEUED,
    DEFAULT_MAX_REQUEST_PIXELS,
    DEFAULT_TIMEOUT,
    DRAIN_LIMIT_BYTES,
    MAX_NESTING,
    RETRY_AFTER_SECONDS,
    ByteBudget,
    PredictSlots,
    declared_pixels,
    release_memory,
)
from .model import DEFAULT_SIGNATURE, Model, find_versions
from .rest_server import Server

__all__ = [
    "BUFFERED_BODIES", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_INSTANCES", "DEFAULT_MAX_PREDICTS", "DEFAULT_MAX_QUEUED",
    "DEFAULT_MAX_REQUEST_PIXELS", "DEFAULT_SIGNATURE", "DEFAULT_TIMEOUT", "DRAIN_LIMIT_BYTES",
    "INTERNAL_ERROR", "MAX_NESTING", "RETRY_AFTER_SECONDS", "Busy", "ByteBudget", "Model",
    "PredictSlots", "RequestError", "Server", "declared_pixels", "find_versions",
    "grpc_server", "release_memory", "serve", "tf_error_message",
]


def serve(model_dir, host="127.0.0.1", port=8501, grpc_port=None,
          max_body_bytes=DEFAULT_MAX_BODY_BYTES, quiet=False, ready=None, *,
          max_instances=DEFAULT_MAX_INSTANCES, timeout=DEFAULT_TIMEOUT,
          max_connections=DEFAULT_MAX_CONNECTIONS, max_predicts=DEFAULT_MAX_PREDICTS,
          max_queued=DEFAULT_MAX_QUEUED, max_request_pixels=DEFAULT_MAX_REQUEST_PIXELS):
    """Loads the model and serves until interrupted. `ready(server, grpc_port)` is called once
    listening. REST and gRPC share the limits on running and waiting predicts."""
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
