"""TF Serving's gRPC PredictionService over a `Model` (optional: `imuge serve --grpc-port`):
Predict and GetModelMetadata, with the REST server's caps on instances, pixels and predicts
(`grpc_server` shares its `PredictSlots` with the REST server when given them)."""

from __future__ import annotations

import logging

from .errors import INTERNAL_ERROR, Busy, RequestError, tf_error_message
from .limits import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_INSTANCES,
    DEFAULT_MAX_REQUEST_PIXELS,
    DEFAULT_TIMEOUT,
    PredictSlots,
    check_pixels,
)
from .model import DEFAULT_SIGNATURE, Model
from .rest_json import spec_shape

# The package's one logger, under the name export/README.md gives: imuge_tf.serve.
logger = logging.getLogger(__package__)


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
                                 f"{spec_shape(spec)}")
                arguments[key] = tf.constant(value)
                try:
                    check_pixels([value], max_request_pixels)
                except RequestError as error:
                    raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
            with slots.admitted(), slots.turn(timeout):
                try:
                    outputs = model.signatures[name](**arguments)
                except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as error:
                    raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                                 tf_error_message(error)) from None
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
