"""Clients of the verifier + decoder served by TF Serving (or `imuge serve`): REST and gRPC.

    client = connect("http://localhost:8501")          # REST; "grpc://localhost:8500" for gRPC
    outputs = client.verify_bytes([open("photo.png", "rb").read()])
    outputs[0]["verdict"], outputs[0]["mask_png_bytes"]

`RemoteImuge` turns the outputs into the same results as a local `Imuge.verify` (a
VerifyResult, without the probability map, which the server does not send) and is what
`imuge verify --server URL` uses. The REST client needs only the standard library; the gRPC
client needs tensorflow-serving-api (and so imports TensorFlow).
"""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

from imuge_tf.inference import VerifyResult

DEFAULT_MODEL = "imuge"
DEFAULT_TIMEOUT = 120.0
SERVING_SIGNATURE = "serving_default"
# Formats that TF Serving's graph (tf.io.decode_image) decodes to the same pixels as
# imuge_tf.io.read_image does: these are sent as they are; anything else (TIFF, WebP, GIF,
# 16-bit, transparency, an EXIF rotation) is decoded here and sent as a lossless PNG.
RAW_FORMATS = ("PNG", "JPEG", "BMP")
RAW_MODES = ("RGB", "L")
FLOAT_OUTPUTS = ("tampered_fraction", "flagged_fraction", "threshold", "intact_max_fraction",
                 "not_immunized_min_fraction")


class ServerError(RuntimeError):
    """The server refused a request or could not be reached: one line that says why."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class RestClient:
    """TF Serving's REST API: predict, model status and metadata."""

    def __init__(self, url: str, model: str = DEFAULT_MODEL, version=None,
                 timeout: float = DEFAULT_TIMEOUT):
        self.url = url.rstrip("/")
        self.model = model
        self.version = version
        self.timeout = timeout

    def _model_url(self) -> str:
        path = f"{self.url}/v1/models/{urllib.parse.quote(self.model)}"
        return path if self.version is None else f"{path}/versions/{self.version}"

    def _call(self, url, payload=None):
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as error:
            body = error.read().decode("utf-8", errors="replace")
            try:
                message = json.loads(body).get("error", body)
            except (json.JSONDecodeError, AttributeError):
                message = body.strip() or error.reason
            raise ServerError(f"server answered HTTP {error.code}: {message}",
                              error.code) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ServerError(f"cannot reach {self.url}: {reason}") from None
        except json.JSONDecodeError as error:
            raise ServerError(f"{self.url} did not answer with JSON ({error})") from None

    def status(self) -> dict:
        return self._call(self._model_url())

    def metadata(self) -> dict:
        return self._call(self._model_url() + "/metadata")

    def predict(self, instances=None, inputs=None, signature_name=None) -> dict:
        """A raw predict call: row (`instances`) or columnar (`inputs`) format."""
        if (instances is None) == (inputs is None):
            raise ValueError("pass exactly one of instances or inputs")
        payload = {"instances": instances} if instances is not None else {"inputs": inputs}
        if signature_name:
            payload["signature_name"] = signature_name
        return self._call(self._model_url() + ":predict", payload)

    def check(self) -> None:
        """Raises ServerError unless the model is available."""
        states = [entry.get("state") for entry in
                  self.status().get("model_version_status", [])]
        if "AVAILABLE" not in states:
            raise ServerError(f"model '{self.model}' at {self.url} is not available "
                              f"(states: {states})")

    def verify_bytes(self, blobs) -> list:
        """serving_default on encoded images: one dict of outputs per image (`*_bytes` as
        bytes, fractions as floats)."""
        response = self.predict(
            instances=[{"b64": base64.b64encode(blob).decode("ascii")} for blob in blobs])
        predictions = response.get("predictions")
        if not isinstance(predictions, list) or len(predictions) != len(blobs):
            raise ServerError("the server's answer has no predictions for the images")
        return [_decode_outputs(prediction) for prediction in predictions]


def _decode_outputs(prediction: dict) -> dict:
    outputs = {}
    for name, value in prediction.items():
        if isinstance(value, dict) and set(value) == {"b64"}:
            value = base64.b64decode(value["b64"])
        outputs[name] = value
    return outputs


class GrpcClient:
    """TF Serving's gRPC PredictionService (tensorflow-serving-api)."""

    def __init__(self, target: str, model: str = DEFAULT_MODEL, version=None,
                 timeout: float = DEFAULT_TIMEOUT, max_message_bytes: int = 64 * 1024 * 1024):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.target = target
        self.model = model
        self.version = version
        self.timeout = timeout
        self.channel = grpc.insecure_channel(
            target, options=[("grpc.max_receive_message_length", max_message_bytes),
                             ("grpc.max_send_message_length", max_message_bytes)])
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def _spec(self, request, signature_name):
        request.model_spec.name = self.model
        request.model_spec.signature_name = signature_name
        if self.version is not None:
            request.model_spec.version.value = int(self.version)

    def _rpc(self, method, request):
        import grpc

        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise ServerError(f"server answered {error.code().name}: {error.details()}",
                              error.code().name) from None

    def check(self) -> None:
        import grpc

        try:
            grpc.channel_ready_future(self.channel).result(timeout=min(self.timeout, 10.0))
        except grpc.FutureTimeoutError:
            raise ServerError(f"cannot reach {self.target} (gRPC)") from None

    def metadata(self):
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request, "")
        return self._rpc(self.stub.GetModelMetadata, request)

    def predict(self, inputs: dict, signature_name: str = SERVING_SIGNATURE) -> dict:
        """inputs: name -> numpy array (strings as an object array of bytes); returns
        name -> numpy array."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._spec(request, signature_name)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        response = self._rpc(self.stub.Predict, request)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def verify_bytes(self, blobs) -> list:
        blobs = list(blobs)
        images = np.empty(len(blobs), dtype=object)
        images[:] = [bytes(blob) for blob in blobs]
        outputs = self.predict({"images": images})
        results = []
        for index in range(len(blobs)):
            row = {}
            for name, array in outputs.items():
                value = array[index]
                if isinstance(value, bytes) and not name.endswith("_bytes"):
                    value = value.decode("utf-8")
                elif isinstance(value, np.generic):
                    value = value.item()
                row[name] = value
            results.append(row)
        return results


def connect(url: str, model: str = DEFAULT_MODEL, version=None, timeout=DEFAULT_TIMEOUT):
    """A client for `url`: http(s)://host:port (REST) or grpc://host:port (gRPC); a bare
    host:port means REST over http."""
    parsed = urllib.parse.urlparse(url if "://" in url else f"http://{url}")
    if parsed.scheme in ("http", "https"):
        if not parsed.hostname:
            raise ValueError(f"--server {url}: no host")
        return RestClient(f"{parsed.scheme}://{parsed.netloc}", model, version, timeout)
    if parsed.scheme == "grpc":
        if not parsed.hostname or not parsed.port:
            raise ValueError(f"--server {url}: gRPC needs grpc://host:port")
        return GrpcClient(parsed.netloc, model, version, timeout)
    raise ValueError(f"--server {url}: use http://host:port (REST) or grpc://host:port")


# ---------------------------------------------------------------------------------------------
# Files in, VerifyResults out


def request_bytes(path: str, image=None) -> bytes:
    """What to send for the image file `path`: its own bytes when the server decodes them to
    the same pixels as imuge_tf.io.read_image, else a lossless PNG of `image` (read_image's
    array; read here if not given)."""
    from PIL import Image

    from imuge_tf.io import read_image

    with open(os.fspath(path), "rb") as handle:
        data = handle.read()
    try:
        with Image.open(io.BytesIO(data)) as opened:
            raw = (opened.format in RAW_FORMATS and opened.mode in RAW_MODES
                   and "transparency" not in opened.info
                   and opened.getexif().get(0x0112, 1) == 1)
    except Exception:  # noqa: BLE001 - read_image below says what is wrong with the file
        raw = False
    if raw:
        return data
    if image is None:
        image = read_image(path)
    return png_bytes(image)


def png_bytes(image) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_array(data: bytes, what: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as opened:
            return np.asarray(opened)
    except Exception as error:  # noqa: BLE001 - any decoding failure means a bad answer
        raise ServerError(f"the server's {what} is not a readable PNG ({error})") from None


class RemoteImuge:
    """`Imuge.verify`/`recover` done by a server (a client from `connect`)."""

    def __init__(self, client):
        self.client = client

    def analyse(self, blob: bytes, shape=None) -> tuple:
        """(VerifyResult, recovered uint8 photo) for one encoded image."""
        outputs = self.client.verify_bytes([blob])[0]
        missing = [name for name in ("verdict", "mask_png_bytes", "recovered_png_bytes",
                                     *FLOAT_OUTPUTS) if name not in outputs]
        if missing:
            raise ServerError(f"the server's answer lacks the outputs {missing}: is it an "
                              "imuge export?")
        mask = _png_array(outputs["mask_png_bytes"], "mask")
        if mask.ndim == 3:
            mask = mask[..., 0]
        recovered = _png_array(outputs["recovered_png_bytes"], "recovered photo")
        if shape is not None and (mask.shape != tuple(shape[:2])
                                  or recovered.shape[:2] != tuple(shape[:2])):
            raise ServerError(f"the server decoded the photo at {mask.shape}, not at its size "
                              f"{tuple(shape[:2])}")
        result = VerifyResult(
            verdict=str(outputs["verdict"]),
            probability=None,  # the server sends the refined mask, not the probability map
            mask=mask > 127,
            tampered_fraction=float(outputs["tampered_fraction"]),
            flagged_fraction=float(outputs["flagged_fraction"]),
            threshold=float(outputs["threshold"]),
            thresholds={
                "intact_max_fraction": round(float(outputs["intact_max_fraction"]), 6),
                "not_immunized_min_fraction": round(
                    float(outputs["not_immunized_min_fraction"]), 6)},
            evidence=str(outputs.get("evidence", "block_mark")),
            rotation=90 * int(outputs.get("quarter_turns", 0)),
            crop_origin=(int(outputs.get("origin_y", 0)), int(outputs.get("origin_x", 0))),
            scale=float(outputs.get("scale", 1.0)),
        )
        return result, recovered

    def verify_file(self, path: str, image) -> VerifyResult:
        return self.analyse(request_bytes(path, image), np.shape(image))[0]

    def verify(self, image):
        return self.analyse(png_bytes(image), np.shape(image))[0]

    def recover(self, image, result=None):
        del result  # the server verifies and recovers in one call
        return self.analyse(png_bytes(image), np.shape(image))[1]
