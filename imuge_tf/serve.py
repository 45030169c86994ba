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
non-image bytes, a body over the size limit) gets HTTP 400 and {"error": "..."}; the server
goes on serving.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_SIGNATURE = "serving_default"
# A body over the limit is read and dropped (so the client sees the 400, not a reset
# connection) up to this many bytes; beyond that the connection is simply closed.
DRAIN_LIMIT_BYTES = 256 * 1024 * 1024
_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
                   r"(?P<rest>/metadata|:predict|:classify|:regress)?$")


class RequestError(Exception):
    """A request the server refuses; `status` is the HTTP status (400 by default)."""

    def __init__(self, message, status=HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = int(status)


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

    def predict(self, body) -> dict:
        """TF Serving's predict: a parsed JSON request -> the JSON response (a dict)."""
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
            named = _rows_to_inputs(body["instances"], specs)
        else:
            named = _columns_to_inputs(body["inputs"], specs)
        arrays = {key: _to_array(key, value, specs[key]) for key, value in named.items()}
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


def _rows_to_inputs(instances, specs) -> dict:
    if not isinstance(instances, list):
        raise RequestError("\"instances\" must be a list")
    if not instances:
        raise RequestError("\"instances\" is empty: send at least one instance")
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


class _Handler(BaseHTTPRequestHandler):
    server_version = "imuge-serve"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        if not self.server.quiet:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def _send(self, status, payload, close=False):
        data = (json.dumps(payload, indent=1) + "\n").encode("utf-8")
        self.send_response(int(status))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

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

    def do_GET(self):  # noqa: N802 - http.server's naming
        try:
            rest = self._route()
            if rest == "":
                self._send(HTTPStatus.OK, self.server.model.status())
            elif rest == "/metadata":
                self._send(HTTPStatus.OK, self.server.model.metadata())
            else:
                raise RequestError(f"Malformed request: GET {self.path}", HTTPStatus.NOT_FOUND)
        except RequestError as error:
            self._send(error.status, {"error": str(error)})
        except Exception as error:  # noqa: BLE001 - the server must keep serving
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(error).__name__}: "
                                                                   f"{error}"})

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise RequestError("chunked request bodies are not supported; send "
                               "Content-Length", HTTPStatus.BAD_REQUEST)
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError("a request body with a Content-Length header is required",
                               HTTPStatus.LENGTH_REQUIRED) from None
        if length < 0:
            raise RequestError("negative Content-Length")
        limit = self.server.max_body_bytes
        if length > limit:
            self._drain(length)
            raise RequestError(f"request body of {length} bytes exceeds the server's limit of "
                               f"{limit} bytes")
        return self.rfile.read(length)

    def _drain(self, length):
        if length > DRAIN_LIMIT_BYTES:
            self.close_connection = True
            return
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)

    def do_POST(self):  # noqa: N802 - http.server's naming
        try:
            rest = self._route()
            if rest != ":predict":
                # Drain first so the connection stays usable for the next request.
                self._read_body()
                raise RequestError(f"{rest[1:] or 'POST'} is not supported by this server: "
                                   "use :predict", HTTPStatus.BAD_REQUEST)
            body = self._read_body()
            try:
                request = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise RequestError(f"JSON Parse error: {error}") from None
            response = self.server.model.predict(request)
            self._send(HTTPStatus.OK, response)
        except RequestError as error:
            self._send(error.status, {"error": str(error)},
                       close=self.close_connection)
        except Exception as error:  # noqa: BLE001 - the server must keep serving
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR,
                       {"error": f"{type(error).__name__}: {error}"})


class Server(ThreadingHTTPServer):
    """The REST server; `serve_forever()` runs it, `shutdown()` stops it from another thread."""

    daemon_threads = True

    def __init__(self, model: Model, host="127.0.0.1", port=8501,
                 max_body_bytes=DEFAULT_MAX_BODY_BYTES, quiet=False):
        self.model = model
        self.max_body_bytes = int(max_body_bytes)
        self.quiet = quiet
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


# ---------------------------------------------------------------------------------------------
# gRPC (optional): TF Serving's PredictionService.Predict and GetModelMetadata


def grpc_server(model: Model, host="127.0.0.1", port=8500, max_message_bytes=None):
    """A started grpc.Server with Predict over `model`; returns (server, bound port)."""
    from concurrent import futures

    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    limit = int(max_message_bytes or DEFAULT_MAX_BODY_BYTES)

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def _check(self, spec, context):
            if spec.name != model.name:
                context.abort(grpc.StatusCode.NOT_FOUND,
                              f"Servable not found for request: Latest({spec.name})")
            if spec.HasField("version") and spec.version.value != model.version:
                context.abort(grpc.StatusCode.NOT_FOUND,
                              f"Servable not found for request: Specific({spec.name}, "
                              f"{spec.version.value})")

        def Predict(self, request, context):  # noqa: N802 - the gRPC service's naming
            self._check(request.model_spec, context)
            name = request.model_spec.signature_name or DEFAULT_SIGNATURE
            if name not in model.signatures:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"Serving signature name: \"{name}\" not found")
            specs = model.inputs[name]
            if set(request.inputs) != set(specs):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"inputs {sorted(specs)} expected, got {sorted(request.inputs)}")
            arguments = {}
            for key, spec in specs.items():
                proto = request.inputs[key]
                if proto.dtype != spec.dtype.as_datatype_enum:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"input '{key}': expects {spec.dtype.name}")
                value = tf.make_ndarray(proto)
                if not spec.shape.is_compatible_with(value.shape):
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"input '{key}': shape {list(value.shape)} does not match "
                                  f"{_tensor_shape(spec)}")
                arguments[key] = tf.constant(value)
            try:
                outputs = model.signatures[name](**arguments)
            except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as error:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, _tf_message(error))
            response = predict_pb2.PredictResponse()
            response.model_spec.name = model.name
            response.model_spec.signature_name = name
            response.model_spec.version.value = model.version
            for key, tensor in outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(tensor.numpy()))
            return response

        def GetModelMetadata(self, request, context):  # noqa: N802
            self._check(request.model_spec, context)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = model.name
            response.model_spec.version.value = model.version
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, signature in model.signature_defs.items():
                if not key.startswith("__"):
                    signature_map.signature_def[key].CopyFrom(signature)
            response.metadata["signature_def"].Pack(signature_map)
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=[("grpc.max_receive_message_length", limit),
                                  ("grpc.max_send_message_length", limit)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    server.start()
    return server, bound


def serve(model_dir, host="127.0.0.1", port=8501, grpc_port=None,
          max_body_bytes=DEFAULT_MAX_BODY_BYTES, quiet=False, ready=None):
    """Loads the model and serves until interrupted. `ready(server)` is called once listening."""
    model = Model(model_dir)
    server = Server(model, host, port, max_body_bytes=max_body_bytes, quiet=quiet)
    rpc = None
    try:
        if grpc_port is not None:
            rpc, grpc_port = grpc_server(model, host, grpc_port, max_body_bytes)
        if ready is not None:
            ready(server, grpc_port)
        server.serve_forever()
    finally:
        server.server_close()
        if rpc is not None:
            rpc.stop(grace=None)
