"""One exported model as the server sees it (`Model`): its newest numbered version, loaded and
warmed up as TF Serving does, its status and signature metadata, and TF Serving's JSON
predict over it (the JSON itself is rest_json's)."""

from __future__ import annotations

import os
from http import HTTPStatus

from .errors import RequestError, tf_error_message
from .limits import check_count, check_pixels
from .rest_json import columns_to_inputs, format_outputs, rows_to_inputs, to_array

DEFAULT_SIGNATURE = "serving_default"


def find_versions(model_dir: str) -> dict:
    """{version: folder} of the numbered SavedModel folders under `model_dir`."""
    versions = {}
    for entry in os.listdir(model_dir):
        folder = os.path.join(model_dir, entry)
        if entry.isdigit() and os.path.isfile(os.path.join(folder, "saved_model.pb")):
            versions[int(entry)] = folder
    return versions


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
            named = rows_to_inputs(body["instances"], specs, max_instances)
        else:
            named = columns_to_inputs(body["inputs"], specs)
            for value in named.values():
                if isinstance(value, list):
                    check_count(len(value), max_instances)
        arrays = {key: to_array(key, value, specs[key]) for key, value in named.items()}
        check_pixels(arrays.values(), max_pixels)
        try:
            outputs = self.signatures[signature_name](
                **{key: tf.constant(array) for key, array in arrays.items()})
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as error:
            raise RequestError(tf_error_message(error)) from None
        return format_outputs(outputs, row)
