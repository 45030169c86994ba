"""The TF Serving export (verifier + decoder SavedModel), `imuge serve`, the REST and gRPC
clients and `imuge verify --server`, without TF Serving itself.

Two models: a hand-set one (1x1 convolutions; verdicts come from the keyed block mark, so
calm photos carrying it are intact and a red square pasted on them is tampered) for the
REST golden files, the server and the clients; and the untrained smoke model (the real
U-Nets, GroupNorm, push-pull pre-fill) for the graph checks and for parity with the local
`Imuge.verify` / `recover`.
"""

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import fake_photos
import numpy as np
import pytest
from PIL import Image

from imuge_tf import cli
from imuge_tf import export as ex
from imuge_tf.attacks.cases import paste

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKING = 32
HEIGHT, WIDTH = 48, 64
RED_SQUARE = (slice(12, 36), slice(16, 40))


def calm_photo(seed=0, height=HEIGHT, width=WIDTH):
    """A calm photo carrying the demo key's block mark and reference (what the hand-set
    model's immunization writes, without its constant residual): `intact` to the server."""
    import tensorflow as tf

    from imuge_tf.models.blockmark import BlockMark
    from imuge_tf.models.reference import SelfReference

    photo = fake_photos.calm_photo(height, width, seed)
    if min(height, width) < 32:
        return photo
    levels = tf.constant(photo[None].astype(np.float32))
    marked = BlockMark(None).embed(levels, None, *SelfReference(None).payload(levels))
    return np.asarray(marked)[0].astype(np.uint8)


def with_red_square(image):
    return fake_photos.with_red_square(image, RED_SQUARE)


def encode(image, fmt="PNG", **options):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decode(data):
    return np.asarray(Image.open(io.BytesIO(data)))


def b64(data):
    return {"b64": base64.b64encode(data).decode("ascii")}


def hand_set_model(folder):
    """An Imuge folder whose networks are single 1x1 convolutions with chosen weights."""
    import keras

    folder.mkdir(parents=True, exist_ok=True)

    def conv(inputs, channels, kernel, bias, activation, name):
        layer = keras.layers.Conv2D(channels, 1, activation=activation, name=name)
        outputs = layer(inputs)
        layer.set_weights([np.asarray(kernel, np.float32).reshape(1, 1, -1, channels),
                           np.asarray(bias, np.float32)])
        return outputs

    image = keras.Input((None, None, 3), name="image")
    keras.Model(image, conv(image, 3, np.zeros((3, 3)), [0.01] * 3, "tanh", "residual")).save(
        folder / "encoder.keras")
    # p = sigmoid(20 (r - g - b) - 10): ~1 on saturated red, ~0 on the calm photos.
    keras.Model(image, conv(image, 1, [20.0, -20.0, -20.0], [-10.0], "sigmoid", "tamper")).save(
        folder / "verifier.keras")
    rectified = keras.Input((None, None, 3), name="rectified")
    mask = keras.Input((None, None, 1), name="mask")
    joined = keras.layers.Concatenate(name="joined")([rectified, mask])
    keras.Model([rectified, mask], conv(joined, 3, np.zeros((4, 3)), [0.0] * 3, "sigmoid",
                                        "grey")).save(folder / "decoder.keras")
    (folder / "imuge.json").write_text(json.dumps(
        {"format_version": 1, "image_size": WORKING, "step": 0,
         "config": {"model": {"image_size": WORKING}}}))
    return folder


def write_serving(imuge, base):
    version = os.path.join(base, "serving", ex.SERVING_NAME, str(ex.SERVING_VERSION))
    ex.save_serving_model(imuge, version)
    ex.write_warmup_requests(version, imuge.image_size)
    return os.path.dirname(version)


@pytest.fixture(scope="module")
def hand_set(tmp_path_factory):
    """(model folder, Imuge, serving model folder) of the hand-set model."""
    from imuge_tf.inference import Imuge

    root = tmp_path_factory.mktemp("hand_set")
    folder = hand_set_model(root / "inference")
    imuge = Imuge.load(str(folder))
    return str(folder), imuge, write_serving(imuge, str(root))


@pytest.fixture(scope="module")
def smoke(untrained_model_dir, tmp_path_factory):
    """(Imuge, serving model folder) of the untrained smoke model, with verdict thresholds
    that send every photo through Otsu and the opening (the branch with the most TF ops)."""
    from imuge_tf.inference import Imuge

    imuge = Imuge.load(untrained_model_dir)
    imuge.thresholds = {"intact_max_fraction": 0.0, "not_immunized_min_fraction": 1.01}
    return imuge, write_serving(imuge, str(tmp_path_factory.mktemp("smoke")))


@pytest.fixture(scope="module")
def model(hand_set):
    from imuge_tf.serve import Model

    return Model(hand_set[2])


@pytest.fixture(scope="module")
def server(model):
    """`imuge serve`'s server over the hand-set model, on a free loopback port."""
    from imuge_tf.serve import Server

    httpd = Server(model, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.url
    httpd.shutdown()
    httpd.server_close()


def http(url, payload=None, raw=None, method=None):
    """(status, parsed JSON) of one request; `raw` bytes are sent as they are."""
    data = raw if raw is not None else (None if payload is None
                                        else json.dumps(payload).encode("utf-8"))
    request = urllib.request.Request(url, data=data, method=method or (
        "GET" if data is None else "POST"))
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


# ---------------------------------------------------------------------------------------------
# The SavedModel as TF Serving sees it


GEOMETRY = {"quarter_turns": ("DT_INT32", "(-1)"), "origin_y": ("DT_INT32", "(-1)"),
            "origin_x": ("DT_INT32", "(-1)"), "scale": ("DT_FLOAT", "(-1)")}
EXPECTED_SIGNATURES = {
    "serving_default": {
        "inputs": {"images": ("DT_STRING", "(-1)")},
        "outputs": {
            "verdict": ("DT_STRING", "(-1)"), "evidence": ("DT_STRING", "(-1)"),
            "mask_png_bytes": ("DT_STRING", "(-1)"),
            "recovered_png_bytes": ("DT_STRING", "(-1)"),
            "tampered_fraction": ("DT_FLOAT", "(-1)"), "flagged_fraction": ("DT_FLOAT", "(-1)"),
            "threshold": ("DT_FLOAT", "(-1)"), "intact_max_fraction": ("DT_FLOAT", "(-1)"),
            "not_immunized_min_fraction": ("DT_FLOAT", "(-1)"), **GEOMETRY,
            "height": ("DT_INT32", "(-1)"), "width": ("DT_INT32", "(-1)")}},
    "verify_tensor": {
        "inputs": {"images": ("DT_FLOAT", "(-1, -1, -1, 3)")},
        "outputs": {
            "probability": ("DT_FLOAT", "(-1, -1, -1, 1)"), "mask": ("DT_FLOAT", "(-1, -1, -1, 1)"),
            "recovered": ("DT_FLOAT", "(-1, -1, -1, 3)"), "verdict": ("DT_STRING", "(-1)"),
            "evidence": ("DT_STRING", "(-1)"),
            "tampered_fraction": ("DT_FLOAT", "(-1)"), "flagged_fraction": ("DT_FLOAT", "(-1)"),
            "threshold": ("DT_FLOAT", "(-1)"), "intact_max_fraction": ("DT_FLOAT", "(-1)"),
            "not_immunized_min_fraction": ("DT_FLOAT", "(-1)"), **GEOMETRY}},
}


def parse_saved_model_cli(text):
    """{signature: {"inputs"/"outputs": {name: (dtype, shape)}}} from `saved_model_cli show
    --all` output."""
    signatures, current, side = {}, None, None
    for line in text.splitlines():
        if match := re.match(r"signature_def\['([^']+)'\]:", line.strip()):
            current = signatures.setdefault(match[1], {"inputs": {}, "outputs": {}})
        elif match := re.match(r"(inputs|outputs)\['([^']+)'\] tensor_info:", line.strip()):
            side, name = match[1], match[2]
        elif current is not None and side and (match := re.match(r"dtype: (\w+)",
                                                                  line.strip())):
            dtype = match[1]
        elif current is not None and side and (match := re.match(r"shape: (.+)", line.strip())):
            current[side][name] = (dtype, match[1].strip())
    return signatures


@pytest.mark.slow
def test_signatures_as_saved_model_cli_shows_them(smoke):
    _, base = smoke
    result = subprocess.run(["saved_model_cli", "show", "--dir", os.path.join(base, "1"),
                             "--all"], capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    shown = parse_saved_model_cli(result.stdout)
    assert {k: v for k, v in shown.items() if not k.startswith("__")} == EXPECTED_SIGNATURES


FRESH_PROCESS = """
import json, sys
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
blobs = [open(path, "rb").read() for path in sys.argv[2:]]
outputs = serve(images=tf.constant(blobs))
print(json.dumps({
    "dtypes": {name: value.dtype.name for name, value in outputs.items()},
    "verdicts": [v.decode() for v in outputs["verdict"].numpy()],
    "sizes": [[int(h), int(w)] for h, w in zip(outputs["height"], outputs["width"])],
    "masks": [list(tf.io.decode_png(m).shape) for m in outputs["mask_png_bytes"]],
    "recovered": [list(tf.io.decode_png(r).shape) for r in outputs["recovered_png_bytes"]],
}))
"""


@pytest.mark.slow
def test_serving_default_on_raw_file_bytes_in_a_fresh_process(smoke, photos, tmp_path):
    _, base = smoke
    files = []
    for name, fmt, size in (("a.png", "PNG", (40, 52)), ("b.jpg", "JPEG", (300, 200)),
                            ("c.bmp", "BMP", (64, 64))):
        photo = np.asarray(Image.fromarray(photos["chelsea"]).resize(size))
        Image.fromarray(photo).save(tmp_path / name, format=fmt)
        files.append(str(tmp_path / name))
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, os.path.join(base, "1"),
                             *files], capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["sizes"] == [[52, 40], [200, 300], [64, 64]]
    assert report["masks"] == [[h, w, 1] for h, w in report["sizes"]]
    assert report["recovered"] == [[h, w, 3] for h, w in report["sizes"]]
    assert set(report["verdicts"]) <= {"intact", "tampered", "not_immunized"}
    assert report["dtypes"]["tampered_fraction"] == "float32"
    assert report["dtypes"]["mask_png_bytes"] == "string"


@pytest.mark.slow
def test_only_stock_ops_in_the_graph(smoke, tmp_path):
    import tensorflow as tf
    from tensorflow.python.framework import op_def_registry

    _, base = smoke
    ops = ex.graph_ops(os.path.join(base, "1"))
    # The real pipeline is in there: decoding, resizing, the networks and the block mark's
    # DCT (convolutions), the grid searches (FFT, crop-and-resize), the opening, PNG encoding.
    assert {"DecodeImage", "DecodeJpeg", "ResizeBilinear", "FFT2D", "IFFT2D", "CropAndResize",
            "MaxPool", "EncodePng", "Conv2D"} <= ops
    assert ex.nonstock_ops(os.path.join(base, "1")) == []
    assert not ops & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
    assert all(op_def_registry.get(op) is not None for op in ops
               if not op.startswith("__inference"))

    # The check does catch a Python callback.
    module = tf.Module()
    module.f = tf.function(lambda x: {"y": tf.py_function(lambda v: v * 2, [x], tf.float32)},
                           input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.f})
    assert "EagerPyFunc" in ex.nonstock_ops(str(tmp_path))


def tampered_photos(photos):
    """Received photos of several sizes, each with a donor patch pasted in."""
    cases = []
    for index, (name, size) in enumerate((("astronaut", (120, 90)), ("coffee", (200, 133)),
                                          ("rocket", (48, 64)))):
        photo = np.asarray(Image.fromarray(photos[name]).resize(size))
        donor = np.asarray(Image.fromarray(photos["chelsea"]).resize(size))
        height, width = photo.shape[:2]
        mask = np.zeros((height, width), bool)
        mask[height // 4: height // 4 + height // (3 + index), width // 3: 2 * width // 3] = True
        cases.append(paste(photo, donor, mask))
    return cases


@pytest.mark.slow
def test_serving_matches_local_verify_and_recover(smoke, photos):
    import tensorflow as tf

    imuge, base = smoke
    loaded = tf.saved_model.load(os.path.join(base, "1"))
    received = tampered_photos(photos)
    outputs = loaded.signatures["serving_default"](
        images=tf.constant([encode(image) for image in received]))
    for index, image in enumerate(received):
        local = imuge.verify(image)
        recovered = imuge.recover(image, local)
        assert outputs["verdict"][index].numpy().decode() == local.verdict
        np.testing.assert_array_equal(decode(outputs["mask_png_bytes"][index].numpy()) > 127,
                                      local.mask)
        assert float(outputs["flagged_fraction"][index]) == pytest.approx(
            local.flagged_fraction, abs=1e-6)
        assert float(outputs["tampered_fraction"][index]) == pytest.approx(
            local.tampered_fraction, abs=1e-6)
        assert float(outputs["threshold"][index]) == pytest.approx(local.threshold, abs=1e-5)
        served = decode(outputs["recovered_png_bytes"][index].numpy()).astype(np.int16)
        assert np.abs(served - recovered).max() <= 1

    # The float signature at the working size: the verifier's map and the same decisions.
    square = np.asarray(Image.fromarray(received[0]).resize((imuge.image_size,) * 2))
    result = loaded.signatures["verify_tensor"](
        images=tf.constant(square[None].astype(np.float32) / 255.0))
    local = imuge.verify(square)
    np.testing.assert_allclose(result["probability"][0, :, :, 0], local.probability, atol=1e-5)
    np.testing.assert_array_equal(result["mask"][0, :, :, 0].numpy() > 0.5, local.mask)
    assert result["verdict"][0].numpy().decode() == local.verdict


@pytest.mark.slow
def test_jpeg_is_decoded_as_pillow_decodes_it(hand_set, photos):
    import tensorflow as tf

    _, imuge, base = hand_set
    graph = ex._ServingGraph(imuge)
    data = encode(photos["astronaut"], "JPEG", quality=85)
    decoded = tf.function(graph._decode)(tf.constant(data)).numpy()
    np.testing.assert_array_equal(decoded, decode(data))


@pytest.mark.slow
def test_models_config_and_batching_parameters_parse(hand_set):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    with open(os.path.join(REPO, "export", "models.config")) as handle:
        config = text_format.Parse(handle.read(), model_server_config_pb2.ModelServerConfig())
    (entry,) = config.model_config_list.config
    assert entry.name == ex.SERVING_NAME and entry.model_platform == "tensorflow"
    assert entry.base_path.endswith("/" + ex.SERVING_NAME)
    assert entry.model_version_policy.latest.num_versions == 1
    # The exported folder has the layout base_path points at: <base>/<name>/<version>/.
    assert os.path.isfile(os.path.join(hand_set[2], str(ex.SERVING_VERSION), "saved_model.pb"))

    # tensorflow-serving-api has no BatchingParameters proto: check the text proto's shape
    # and its field names against session_bundle_config.proto's BatchingParameters.
    fields = {"max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
              "num_batch_threads", "thread_pool_name", "allowed_batch_sizes",
              "pad_variable_length_inputs", "enable_large_batch_splitting",
              "max_execution_batch_size"}
    with open(os.path.join(REPO, "export", "batching_parameters.txt")) as handle:
        lines = [line.strip() for line in handle if line.strip() and not line.startswith("#")]
    values = {}
    for line in lines:
        match = re.fullmatch(r"(\w+) \{ value: (\d+) \}|(\w+): (\w+)", line)
        assert match, line
        name = match[1] or match[3]
        assert name in fields, name
        values[name] = match[2] or match[4]
    assert int(values["max_batch_size"]) >= 2


@pytest.mark.slow
def test_warmup_requests_are_prediction_logs_that_run(hand_set, model):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    assert model.warmed_up >= 2  # `imuge serve` replayed them when it loaded the model

    path = os.path.join(hand_set[2], "1", ex.WARMUP_FILE)
    records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    assert len(records) >= 2
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record)
        request = log.predict_log.request
        assert request.model_spec.name == ex.SERVING_NAME
        signature = model.signatures[request.model_spec.signature_name]
        inputs = {key: tf.make_ndarray(value) for key, value in request.inputs.items()}
        outputs = signature(**{key: tf.constant(value) for key, value in inputs.items()})
        assert outputs["verdict"].shape[0] == len(inputs["images"])


# ---------------------------------------------------------------------------------------------
# REST: golden files, the server, the client


def golden_request():
    return {"instances": [b64(encode(with_red_square(calm_photo(0)))),
                          b64(encode(calm_photo(1)))]}


def write_golden(url):
    """Regenerates tests/golden/ (IMUGE_WRITE_GOLDEN=1 pytest tests/test_serving.py)."""
    os.makedirs(GOLDEN, exist_ok=True)
    request = golden_request()
    files = {"predict_request.json": request,
             "predict_response.json": http(url + "/v1/models/imuge:predict", request)[1],
             "model_status.json": http(url + "/v1/models/imuge")[1],
             "model_metadata.json": http(url + "/v1/models/imuge/metadata")[1]}
    for name, content in files.items():
        with open(os.path.join(GOLDEN, name), "w") as handle:
            json.dump(content, handle, indent=1, sort_keys=True)
            handle.write("\n")


def load_golden(name):
    with open(os.path.join(GOLDEN, name)) as handle:
        return json.load(handle)


def assert_matches_golden(got, want, path="response"):
    """Same structure; numbers within 1e-6; {"b64": PNG} compared as decoded pixels."""
    if isinstance(want, dict) and set(want) == {"b64"}:
        assert isinstance(got, dict) and set(got) == {"b64"}, path
        np.testing.assert_array_equal(decode(base64.b64decode(got["b64"])),
                                      decode(base64.b64decode(want["b64"])), err_msg=path)
    elif isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (path, sorted(got))
        for key in want:
            assert_matches_golden(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for index, (a, b) in enumerate(zip(got, want)):
            assert_matches_golden(a, b, f"{path}[{index}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-6), path
    else:
        assert got == want, path


@pytest.mark.slow
def test_rest_api_matches_golden_files(server):
    if os.environ.get("IMUGE_WRITE_GOLDEN"):
        write_golden(server)
    request = load_golden("predict_request.json")
    assert request == golden_request()  # the stored request is the documented example
    status, response = http(server + "/v1/models/imuge:predict", request)
    assert status == 200
    assert_matches_golden(response, load_golden("predict_response.json"))
    first, second = response["predictions"]
    assert first["verdict"] == "tampered" and second["verdict"] == "intact"
    assert [first["height"], first["width"]] == [HEIGHT, WIDTH]
    mask = decode(base64.b64decode(first["mask_png_bytes"]["b64"])) > 127
    assert mask[RED_SQUARE].mean() > 0.9 and mask.mean() < 0.3
    recovered = decode(base64.b64decode(first["recovered_png_bytes"]["b64"]))
    calm = calm_photo(0).astype(int)[RED_SQUARE]
    red = np.abs(np.array([255, 0, 0]) - calm).mean()
    assert np.abs(recovered[RED_SQUARE].astype(int) - calm).mean() < red / 2

    assert http(server + "/v1/models/imuge")[1] == load_golden("model_status.json")
    metadata = http(server + "/v1/models/imuge/metadata")[1]
    assert_matches_golden(metadata, load_golden("model_metadata.json"))


@pytest.mark.slow
def test_rest_formats_versions_and_not_found(server):
    blob = b64(encode(with_red_square(calm_photo(2))))
    row = http(server + "/v1/models/imuge/versions/1:predict", {"instances": [blob]})[1]
    columnar = http(server + "/v1/models/imuge:predict", {"inputs": {"images": [blob]}})[1]
    bare = http(server + "/v1/models/imuge:predict", {"inputs": [blob]})[1]
    assert set(columnar["outputs"]) == set(row["predictions"][0])
    assert columnar == bare
    assert columnar["outputs"]["verdict"] == ["tampered"]
    tensor = np.stack([calm_photo(3, 48, 48)] * 2).astype(np.float32) / 255.0
    tensor[1, 16:40, 16:40] = (1.0, 0.0, 0.0)
    response = http(server + "/v1/models/imuge:predict",
                    {"signature_name": "verify_tensor", "instances": tensor.tolist()})[1]
    verdicts = [p["verdict"] for p in response["predictions"]]
    assert verdicts == ["intact", "tampered"]
    assert np.asarray(response["predictions"][1]["recovered"]).shape == (48, 48, 3)

    status, body = http(server + "/v1/models/other:predict", {"instances": [blob]})
    assert status == 404 and "other" in body["error"]
    status, body = http(server + "/v1/models/imuge/versions/7")
    assert status == 404 and "7" in body["error"]
    assert http(server + "/v2/nothing")[0] == 404


def too_small_png():
    return encode(calm_photo(0, 8, 40))


def huge_png_header():
    """A small PNG whose header declares 100000 x 100000 pixels."""
    data = bytearray(encode(calm_photo(0)))
    data[16:24] = (100000).to_bytes(4, "big") * 2
    return bytes(data)


@pytest.mark.slow
@pytest.mark.parametrize("payload, message", [
    ({"instances": [1.5]}, "takes strings"),
    ({"instances": [{"b64": ""}]}, "empty"),
    ({"instances": [b64(b"this is not an image at all")]}, "image"),
    ({"instances": [{"b64": "%%%not base64%%%"}]}, "base64"),
    ({"instances": []}, "empty"),
    ({"instances": [b64(too_small_png())]}, "too small"),
    ({"instances": [b64(huge_png_header())]}, "too large"),
    ({"inputs": [b"x".hex()], "instances": []}, "exactly one"),
    ({"signature_name": "nope", "instances": ["x"]}, "nope"),
    ({"signature_name": "verify_tensor", "instances": [[[0.5, 0.5, 0.5]]]}, "shape"),
    ({"signature_name": "verify_tensor", "instances": [[["a"] * 3] * 32] * 1}, "numbers"),
    ({"signature_name": "verify_tensor", "inputs": [[1.0], [1.0, 2.0]]}, "ragged"),
    ([1, 2, 3], "object"),
])
def test_bad_requests_get_400_and_the_server_keeps_serving(server, payload, message):
    status, body = http(server + "/v1/models/imuge:predict", payload)
    assert status == 400, body
    assert message in body["error"]
    good = {"instances": [b64(encode(calm_photo(3)))]}
    status, body = http(server + "/v1/models/imuge:predict", good)
    assert status == 200 and body["predictions"][0]["verdict"] == "intact"


@pytest.mark.slow
def test_malformed_json_and_oversized_bodies(model, server):
    from imuge_tf.serve import Server

    status, body = http(server + "/v1/models/imuge:predict", raw=b'{"instances": [')
    assert status == 400 and "JSON" in body["error"]
    small = Server(model, "127.0.0.1", 0, max_body_bytes=2048, quiet=True)
    thread = threading.Thread(target=small.serve_forever, daemon=True)
    thread.start()
    try:
        big = {"instances": [b64(encode(np.random.default_rng(0).integers(
            0, 255, (64, 64, 3), dtype=np.uint8)))]}
        status, body = http(small.url + "/v1/models/imuge:predict", big)
        assert status == 400 and "exceeds" in body["error"] and "2048" in body["error"]
        status, body = http(small.url + "/v1/models/imuge:predict",
                            {"instances": [b64(encode(calm_photo(4, 16, 16)))]})
        assert status == 200
    finally:
        small.shutdown()
        small.server_close()


@pytest.mark.slow
def test_rest_client_gives_the_local_results(server, hand_set):
    from imuge_tf.serving_client import RemoteImuge, ServerError, connect

    _, imuge, _ = hand_set
    client = connect(server)
    client.check()
    assert client.metadata()["model_spec"]["version"] == "1"
    remote = RemoteImuge(client)
    for image in (with_red_square(calm_photo(5)), calm_photo(6),
                  np.full((HEIGHT, WIDTH, 3), (255, 0, 0), np.uint8)):
        local = imuge.verify(image)
        result = remote.verify(image)
        assert result.verdict == local.verdict
        np.testing.assert_array_equal(result.mask, local.mask)
        got, want = result.to_dict(), local.to_dict()
        assert got["verdict"] == want["verdict"] and got["thresholds"] == want["thresholds"]
        for key in ("tampered_fraction", "flagged_fraction", "threshold", "height", "width"):
            assert got[key] == pytest.approx(want[key], abs=1e-6), key
        assert np.abs(remote.recover(image).astype(int) - imuge.recover(image)).max() <= 1
    with pytest.raises(ServerError, match="HTTP 400"):
        client.verify_bytes([b"garbage"])
    with pytest.raises(ServerError, match="cannot reach"):
        connect("http://127.0.0.1:9", timeout=5).check()


@pytest.mark.slow
def test_grpc_client_against_a_grpc_predict_service(model, server, hand_set, tmp_path, capsys):
    from imuge_tf.serve import grpc_server
    from imuge_tf.serving_client import GrpcClient, RestClient, ServerError

    rpc, port = grpc_server(model, "127.0.0.1", 0)
    try:
        client = GrpcClient(f"127.0.0.1:{port}")
        client.check()
        assert "serving_default" in str(client.metadata().metadata["signature_def"].value)
        blobs = [encode(with_red_square(calm_photo(7))), encode(calm_photo(8))]
        over_grpc = client.verify_bytes(blobs)
        over_rest = RestClient(server).verify_bytes(blobs)
        for a, b in zip(over_grpc, over_rest):
            assert set(a) == set(b)
            for key in b:
                if key.endswith("_bytes"):
                    np.testing.assert_array_equal(decode(a[key]), decode(b[key]))
                else:
                    assert a[key] == pytest.approx(b[key]), key
        with pytest.raises(ServerError, match="INVALID_ARGUMENT"):
            client.verify_bytes([b"garbage"])

        photo = tmp_path / "tampered.png"
        Image.fromarray(with_red_square(calm_photo(9))).save(photo)
        code = cli.main(["verify", str(photo), "--server", f"grpc://127.0.0.1:{port}",
                         "--json"])
        report = json.loads(capsys.readouterr().out)
        assert code == 1 and report["files"][0]["verdict"] == "tampered"
    finally:
        rpc.stop(grace=None)


# ---------------------------------------------------------------------------------------------
# The commands: `imuge serve` in a subprocess, `imuge verify --server`


@pytest.fixture(scope="module")
def received(tmp_path_factory):
    """Received files: tampered (PNG), intact (JPEG, sent as is), intact (TIFF, re-encoded as
    PNG by the client), not immunized, and a corrupt one."""
    folder = tmp_path_factory.mktemp("received")
    Image.fromarray(with_red_square(calm_photo(10))).save(folder / "tampered.png")
    Image.fromarray(calm_photo(11, 96, 80)).save(folder / "intact.jpg", quality=92)
    Image.fromarray(calm_photo(12)).save(folder / "calm.tiff")
    Image.fromarray(np.full((40, 40, 3), (255, 0, 0), np.uint8)).save(folder / "red.bmp")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(100))
    return folder


@pytest.fixture(scope="module")
def imuge_serve(hand_set, tmp_path_factory):
    """The URL of `imuge serve` over the hand-set serving model, run as a user runs it (a
    subprocess, stopped with Ctrl-C, which must end it cleanly); one for the module, as each
    start pays a TensorFlow import and a model load. Its output goes to files: a pipe nobody
    reads would stop the server once the pipe's buffer is full."""
    logs = tmp_path_factory.mktemp("imuge_serve")
    stdout, stderr = logs / "stdout.txt", logs / "stderr.txt"
    with open(stdout, "w") as out, open(stderr, "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "imuge_tf.cli", "serve", "--model-dir", hand_set[2],
             "--port", "0", "--quiet"], stdout=out, stderr=err, env=ENV)
    deadline = time.monotonic() + 600
    while not (match := re.search(r"REST: (http://[\d.:]+)/v1/models/imuge",
                                  stdout.read_text())):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"imuge serve did not start: {stderr.read_text()[-2000:]}")
        time.sleep(0.2)
    yield match[1]
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=180) == 0, stderr.read_text()[-2000:]


@pytest.mark.slow
def test_imuge_verify_server_writes_what_local_verify_writes(hand_set, imuge_serve, received,
                                                              tmp_path, capsys):
    model_dir = hand_set[0]
    remote_out, local_out = tmp_path / "remote", tmp_path / "local"
    code_remote = cli.main(["verify", str(received), "--server", imuge_serve, "--out",
                            str(remote_out), "--json"])
    remote = json.loads(capsys.readouterr().out)
    code_local = cli.main(["verify", str(received), "--model", model_dir, "--out",
                           str(local_out), "--json"])
    local = json.loads(capsys.readouterr().out)
    assert code_remote == code_local == 2  # broken.png failed; the others were verified
    assert remote["summary"] == {**local["summary"], "out": str(remote_out)}
    verdicts = {os.path.basename(r["input"]): r.get("verdict") for r in remote["files"]}
    assert verdicts == {"tampered.png": "tampered", "intact.jpg": "intact",
                        "calm.tiff": "intact", "red.bmp": "not_immunized", "broken.png": None}
    for name in ("tampered", "intact", "calm", "red"):
        a = json.loads((remote_out / f"{name}.json").read_text())
        b = json.loads((local_out / f"{name}.json").read_text())
        for key in ("verdict", "height", "width", "thresholds"):
            assert a[key] == b[key], (name, key)
        for key in ("tampered_fraction", "flagged_fraction", "threshold"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), (name, key)
        for suffix in (".mask.png", ".overlay.png"):
            np.testing.assert_array_equal(decode((remote_out / (name + suffix)).read_bytes()),
                                          decode((local_out / (name + suffix)).read_bytes()))


def test_verify_server_errors_are_one_line(received, capsys):
    code = cli.main(["verify", str(received / "tampered.png"), "--server",
                     "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach" in err and "Traceback" not in err
    code = cli.main(["verify", str(received / "tampered.png"), "--server",
                     "http://127.0.0.1:9", "--model", "somewhere"])
    assert code == 2 and "choose one" in capsys.readouterr().err
    code = cli.main(["verify", str(received / "tampered.png"), "--server", "ftp://x:1"])
    assert code == 2 and "grpc://" in capsys.readouterr().err
    code = cli.main(["serve", "--model-dir", str(received)])
    assert code == 2 and "numbered" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# export/README.md's REST example, as written there


README = os.path.join(REPO, "export", "README.md")
README_URL = "http://localhost:8501"  # the server's address in the README's commands
# The photo the README's commands are run on (width, height): 12 MP, as cameras take them.
# Its base64 text is far longer than one command-line argument may be (MAX_ARG_STRLEN, 128 KiB
# on Linux), the limit that an example inlining the photo in curl's arguments runs into.
EXAMPLE_SIZE = (4000, 3000)


def readme_rest_blocks():
    """The code blocks of export/README.md's REST section: {language: [code, ...]}."""
    with open(README) as handle:
        text = handle.read()
    section = re.split(r"\n#{2,3} ", text.split("\n### REST\n", 1)[1], maxsplit=1)[0]
    blocks = {}
    for language, code in re.findall(r"```(\w+)\n(.*?)```", section, re.S):
        blocks.setdefault(language, []).append(code)
    return blocks


def test_readme_rest_response_is_the_golden_one():
    """The response the README shows is the golden response's first prediction, its PNGs cut
    short: the same outputs with the same values."""
    (shown,) = readme_rest_blocks()["json"]
    (shown, *_) = json.loads(shown)["predictions"]
    (golden, *_) = load_golden("predict_response.json")["predictions"]
    assert set(shown) == set(golden)
    for key, value in golden.items():
        if isinstance(value, dict):
            assert shown[key]["b64"].endswith("...")
            assert value["b64"].startswith(shown[key]["b64"][:-3]), key
        elif isinstance(value, float):
            assert shown[key] == pytest.approx(value, abs=1e-6), key
        else:
            assert shown[key] == value, key


@pytest.mark.slow
def test_readme_rest_example_runs_as_written(imuge_serve, tmp_path):
    """The README's REST commands, run by bash as they are written (the server's address
    aside) against `imuge serve`, on a photo whose base64 text no command-line argument could
    hold: the answer is the photo's, and intact."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed, and the README's REST example runs curl")
    (commands,) = readme_rest_blocks()["bash"]
    assert README_URL in commands
    width, height = EXAMPLE_SIZE
    photo = calm_photo(13, height, width)
    Image.fromarray(photo).save(tmp_path / "received.png")
    assert os.path.getsize(tmp_path / "received.png") * 4 / 3 > 128 * 1024
    # `python3` is this interpreter where it has that name beside it.
    path = os.pathsep.join([os.path.dirname(sys.executable), ENV.get("PATH", "")])
    result = subprocess.run(["bash", "-e", "-c", commands.replace(README_URL, imuge_serve)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**ENV, "PATH": path})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "intact"
    (prediction,) = json.loads((tmp_path / "response.json").read_text())["predictions"]
    assert [prediction["height"], prediction["width"]] == [height, width]
    recovered = decode(base64.b64decode(prediction["recovered_png_bytes"]["b64"]))
    np.testing.assert_array_equal(recovered, photo)  # an intact photo comes back unchanged
