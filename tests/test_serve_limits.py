"""`imuge serve` against hostile clients: the limits on instances, decoded pixels (read from
the image's header by the exported graph, before decoding), request time, connections and
predicts, request framing (chunked bodies, smuggled requests), JSON nesting, and what a 500
or a vanished client shows.

Every test runs a real `Server` on a free loopback port, in a thread, with short timeouts,
and talks to it over real sockets. The model served is a small stand-in SavedModel made once
for the module: its `serving_default` decodes each image with the serving graph's own
decoding (`_ServingGraph._decode` of the hand-set model of test_serving.py, the code the
export runs, header checks included) and returns the decoded pixels as a PNG, so that what
the server decoded can be compared with Pillow. The full export takes minutes to write and
load; the limits under test are the server's and the decoding's, which the rest of the
pipeline does not touch (test_serving.py serves the full export).
"""

import base64
import contextlib
import http.client
import io
import json
import logging
import os
import re
import socket
import struct
import threading
import time
import types

import numpy as np
import pytest
from PIL import Image
from test_serving import encode, hand_set_model

from imuge_tf import export as ex

HUGE = 9000  # 81 MP: over the graph's 64 MP cap
PREDICT = "/v1/models/imuge:predict"
STATUS = "/v1/models/imuge"
METADATA = "/v1/models/imuge/metadata"


def stand_in_model(graph, base):
    """A SavedModel (base/imuge/1) whose serving_default is the serving graph's decoding and
    whose verify_tensor averages its input; returns the model folder (base/imuge)."""
    import tensorflow as tf

    outputs = {"height": tf.int32, "width": tf.int32, "decoded_png_bytes": tf.string}

    class StandIn(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def serving_default(self, images):
            def one(data):
                image = graph._decode(data)
                return {"height": tf.shape(image)[0], "width": tf.shape(image)[1],
                        "decoded_png_bytes": tf.io.encode_png(image, compression=1)}

            return tf.map_fn(one, images, fn_output_signature=outputs)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32,
                                                    name="images")])
        def verify_tensor(self, images):
            return {"mean": tf.reduce_mean(images, axis=[1, 2, 3])}

    module = StandIn()
    version = os.path.join(base, "imuge", "1")
    tf.saved_model.save(module, version, signatures={
        "serving_default": module.serving_default, "verify_tensor": module.verify_tensor})
    return os.path.dirname(version)


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """The serving graph's pieces (`_ServingGraph`) of the hand-set model."""
    from imuge_tf.inference import Imuge

    folder = hand_set_model(tmp_path_factory.mktemp("serve_limits") / "inference")
    return ex._ServingGraph(Imuge.load(str(folder)))


@pytest.fixture(scope="module")
def model(graph, tmp_path_factory):
    from imuge_tf.serve import Model

    return Model(stand_in_model(graph, str(tmp_path_factory.mktemp("stand_in"))))


@pytest.fixture(scope="module")
def photo():
    return small_image(3)


@contextlib.contextmanager
def running(model, **limits):
    """A started Server over `model` with these limits (quiet unless told otherwise)."""
    from imuge_tf.serve import Server

    limits.setdefault("quiet", True)
    limits.setdefault("timeout", 5.0)
    server = Server(model, "127.0.0.1", 0, **limits)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def request(server, method, path, payload=None, raw=None, timeout=60, headers=None):
    """(status, headers, parsed JSON body) of one request over a fresh connection."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        body = raw if raw is not None else (None if payload is None
                                            else json.dumps(payload).encode("utf-8"))
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        return response.status, dict(response.getheaders()), json.loads(data)
    finally:
        connection.close()


def b64(data):
    return {"b64": base64.b64encode(data).decode("ascii")}


def unb64(value):
    return base64.b64decode(value["b64"])


def predict(server, blobs, **options):
    return request(server, "POST", PREDICT, {"instances": [b64(blob) for blob in blobs]},
                   **options)


def decoded(result):
    """The pixels the server decoded, from a stand-in prediction."""
    return np.asarray(Image.open(io.BytesIO(unb64(result["decoded_png_bytes"]))))


def assert_serving(server, photo):
    status, _, body = predict(server, [encode(photo)])
    assert status == 200, body
    np.testing.assert_array_equal(decoded(body["predictions"][0]), photo)


def connect(server, timeout=10):
    return socket.create_connection(server.server_address[:2], timeout=timeout)


def read_until_closed(sock, limit=30):
    """Everything the server sends until it closes the connection (at most `limit` s)."""
    sock.settimeout(limit)
    parts = []
    with contextlib.suppress(ConnectionResetError):
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            parts.append(piece)
    return b"".join(parts)


def wait_for(condition, limit=10.0):
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# Images: real small files of every format, and small files declaring 9000 x 9000


def small_image(seed=0):
    return np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)


EXIF = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00"


def top_down_bmp(image):
    """A BMP with its rows stored top-down (negative height), which Pillow does not write."""
    data = bytearray(encode(image, "BMP"))
    offset, = struct.unpack("<I", data[10:14])
    width, height = struct.unpack("<ii", data[18:26])
    row = (3 * width + 3) // 4 * 4
    rows = [bytes(data[offset + i * row: offset + (i + 1) * row]) for i in range(height)]
    data[offset:] = b"".join(reversed(rows))
    data[22:26] = struct.pack("<i", -height)
    return bytes(data)


def animated_gif(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "GIF", save_all=True,
                                append_images=[Image.fromarray(image[::-1].copy())])
    return buffer.getvalue()


REAL_FILES = {
    "webp_lossy": lambda image: encode(image, "WEBP", quality=90),
    "webp_lossless": lambda image: encode(image, "WEBP", lossless=True),
    "webp_extended": lambda image: encode(image, "WEBP", quality=90, exif=EXIF),
    "gif": lambda image: encode(image, "GIF"),
    "gif_animated": animated_gif,
    "bmp": lambda image: encode(image, "BMP"),
    "bmp_top_down": top_down_bmp,
    "bmp_grey": lambda image: encode(image[:, :, 0], "BMP"),
    "png": lambda image: encode(image, "PNG"),
    "jpeg": lambda image: encode(image, "JPEG", quality=90),
}


def patched(data, at, packed):
    data = bytearray(data)
    data[at:at + len(packed)] = packed
    return bytes(data)


def huge_jpeg():
    data = encode(small_image(), "JPEG")
    frame = data.index(b"\xff\xc0")
    return patched(data, frame + 5, struct.pack(">HH", HUGE, HUGE))


def huge_webp_lossless():
    data = encode(small_image(), "WEBP", lossless=True)
    assert data[12:16] == b"VP8L"
    bits = struct.unpack("<I", data[21:25])[0] & ~((1 << 28) - 1)
    return patched(data, 21, struct.pack("<I", bits | (HUGE - 1) | (HUGE - 1) << 14))


def huge_gif_frame():
    """A 64 x 48 screen whose one frame declares 9000 x 9000 (the decoder holds each frame)."""
    data = encode(small_image(), "GIF")
    descriptor = data.index(b"\x2c\x00\x00\x00\x00")
    return patched(data, descriptor + 5, struct.pack("<HH", HUGE, HUGE))


HUGE_FILES = {
    "png": lambda: patched(encode(small_image(), "PNG"), 16, struct.pack(">II", HUGE, HUGE)),
    "jpeg": huge_jpeg,
    "gif_screen": lambda: patched(encode(small_image(), "GIF"), 6,
                                  struct.pack("<HH", HUGE, HUGE)),
    "gif_frame": huge_gif_frame,
    "bmp": lambda: patched(encode(small_image(), "BMP"), 18, struct.pack("<ii", HUGE, HUGE)),
    "bmp_top_down": lambda: patched(encode(small_image(), "BMP"), 18,
                                    struct.pack("<ii", HUGE, -HUGE)),
    "webp_lossy": lambda: patched(encode(small_image(), "WEBP"), 26,
                                  struct.pack("<HH", HUGE, HUGE)),
    "webp_lossless": huge_webp_lossless,
    "webp_extended": lambda: patched(encode(small_image(), "WEBP", exif=EXIF), 24,
                                     (HUGE - 1).to_bytes(3, "little") * 2),
}


def vmhwm_reset():
    """Resets this process's peak resident memory (False where the kernel does not allow it)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def vmhwm_mb():
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/self/status")


@pytest.mark.slow
def test_small_files_of_every_format_are_served_as_pillow_decodes_them(model):
    names = sorted(REAL_FILES)
    blobs = [REAL_FILES[name](small_image(1)) for name in names]
    with running(model) as server:
        status, _, body = predict(server, blobs)
    assert status == 200, body
    for name, blob, result in zip(names, blobs, body["predictions"]):
        with Image.open(io.BytesIO(blob)) as image:
            expected = np.asarray(image.convert("RGB"))
        assert [result["height"], result["width"]] == [48, 64], name
        np.testing.assert_array_equal(decoded(result), expected, err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HUGE_FILES))
def test_files_declaring_9000_by_9000_are_refused_before_decoding(model, photo, name):
    data = HUGE_FILES[name]()
    assert len(data) < 20_000
    # The server's own budget for a request's pixels is lifted: the graph's check answers.
    with running(model, max_request_pixels=10 ** 12) as server:
        status, _, body = predict(server, [data])
        assert status == 400, body
        assert "too large" in body["error"] and "64000000" in body["error"]
        assert_serving(server, photo)


@pytest.fixture(scope="module")
def gif_bomb():
    """A real GIF of 8200 x 8200 black pixels (67 MP, 50 KB): it decodes to 200 MB."""
    buffer = io.BytesIO()
    Image.new("P", (8200, 8200)).save(buffer, "GIF")
    return buffer.getvalue()


@pytest.mark.slow
def test_a_real_gif_bomb_is_refused_without_the_memory_to_decode_it(model, photo, gif_bomb):
    with running(model, max_request_pixels=10 ** 12) as server:
        assert_serving(server, photo)
        measured = vmhwm_reset()
        before = vmhwm_mb()
        status, _, body = predict(server, [gif_bomb])
        grown = vmhwm_mb() - before
        assert status == 400 and "too large" in body["error"], body
        if measured:
            # Decoding it would take 200 MB (the frame) plus the 200 MB RGB image.
            assert grown < 100, f"peak memory grew by {grown:.0f} MB"
        assert_serving(server, photo)


def truncated_gif():
    data = encode(small_image(), "GIF")
    return data[:-20]


def animated_webp():
    """A VP8X header that announces an animation (the three-channel decoding cannot)."""
    data = bytearray(encode(small_image(), "WEBP", exif=EXIF))
    data[20] |= 0x02
    return bytes(data)


@pytest.mark.slow
@pytest.mark.parametrize("data", [
    b"this is not an image at all",
    encode(small_image(), "TIFF"),
    b"RIFF\x10\x00\x00\x00WAVEfmt \x00\x00\x00\x00",
    b"\x89PNG\r\n\x1a\n",
    b"BM\x00\x00",
    truncated_gif(),
    animated_webp(),
], ids=["text", "tiff", "riff_wave", "png_signature_only", "bmp_short", "gif_truncated",
        "webp_animated"])
def test_unknown_or_unreadable_formats_get_400(model, photo, data):
    with running(model) as server:
        status, _, body = predict(server, [data])
        assert status == 400, body
        assert "unsupported image format" in body["error"]
        assert_serving(server, photo)


@pytest.mark.slow
def test_a_gif_walk_is_bounded(graph):
    import tensorflow as tf

    declared = tf.function(graph._declared_pixels)
    data = encode(small_image(), "GIF")
    image = data.index(b"\x2c\x00\x00\x00\x00")
    head, frame = data[:image], data[image:image + 11]
    # Sub-blocks all of one size are skipped many at a time; sizes that change at every
    # sub-block take one step each, and a GIF needing too many steps is refused.
    same = head + frame + b"\x01\x00" * 30_000 + b"\x00\x3b"
    varied = head + frame + b"\x01\x00\x02\x00\x00" * 30_000 + b"\x00\x3b"
    assert int(declared(tf.constant(same))) == 64 * 48
    started = time.monotonic()
    assert int(declared(tf.constant(varied))) == -1
    assert time.monotonic() - started < 10


# ---------------------------------------------------------------------------------------------
# Instances per request


@pytest.mark.slow
def test_instances_over_the_cap_get_400_and_the_server_keeps_serving(model, photo):
    with running(model, max_instances=3) as server:
        blob = b64(encode(photo))
        for payload in ({"instances": [blob] * 4}, {"inputs": {"images": [blob] * 4}},
                        {"inputs": [blob] * 4}):
            status, _, body = request(server, "POST", PREDICT, payload)
            assert status == 400, body
            assert "4 instances" in body["error"] and "at most 3" in body["error"]
        tensor = np.full((4, 8, 8, 3), 0.5).tolist()
        status, _, body = request(server, "POST", PREDICT,
                                  {"signature_name": "verify_tensor", "instances": tensor})
        assert status == 400 and "at most 3" in body["error"]
        status, _, body = request(server, "POST", PREDICT, {"instances": [blob] * 3})
        assert status == 200 and len(body["predictions"]) == 3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["jpeg", "gif_screen", "webp_lossless", "bmp"])
def test_a_request_over_the_pixel_budget_gets_400_before_the_graph_runs(model, photo, name):
    calls = []
    original = model.signatures["serving_default"]

    def counted(**inputs):
        calls.append(1)
        return original(**inputs)

    blob = encode(photo)
    with running(model, max_request_pixels=3 * 48 * 64) as server:
        with pytest.MonkeyPatch.context() as patch:
            patch.setitem(model.signatures, "serving_default", counted)
            status, _, body = predict(server, [blob] * 4)
            assert status == 400 and "12288 pixels in all" in body["error"], body
            status, _, body = predict(server, [HUGE_FILES[name]()])
            assert status == 400 and "81000000 pixels in all" in body["error"], body
            assert calls == []
            assert predict(server, [blob] * 3)[0] == 200


@pytest.mark.slow
def test_grpc_has_the_instances_cap_and_a_generic_internal_error(model, photo, monkeypatch,
                                                                 caplog):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from imuge_tf.serve import INTERNAL_ERROR, grpc_server

    rpc, port = grpc_server(model, "127.0.0.1", 0, max_instances=2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

            def call(count):
                message = predict_pb2.PredictRequest()
                message.model_spec.name = "imuge"
                message.inputs["images"].CopyFrom(tf.make_tensor_proto([encode(photo)] * count))
                return stub.Predict(message, timeout=60)

            with pytest.raises(grpc.RpcError) as refused:
                call(3)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "at most 2" in refused.value.details()
            assert tf.make_ndarray(call(2).outputs["height"]).tolist() == [48, 48]

            def broken(**_):
                raise RuntimeError("secret detail 4711")

            monkeypatch.setitem(model.signatures, "serving_default", broken)
            with caplog.at_level(logging.ERROR, logger="imuge_tf.serve"):
                with pytest.raises(grpc.RpcError) as failed:
                    call(1)
            assert failed.value.code() == grpc.StatusCode.INTERNAL
            assert failed.value.details() == INTERNAL_ERROR
            assert "secret detail 4711" in caplog.text
    finally:
        rpc.stop(grace=None)


# ---------------------------------------------------------------------------------------------
# Time, connections and predicts


@pytest.mark.slow
@pytest.mark.parametrize("sent", [b"", b"GET /v1/models/imuge HTT",
                                  b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                                  b"Content-Length: 1000\r\n\r\n{\"instances\": ["])
def test_a_request_that_does_not_arrive_in_time_is_closed(model, sent):
    with running(model, timeout=0.5) as server:
        sock = connect(server)
        started = time.monotonic()
        sock.sendall(sent)
        answer = read_until_closed(sock, limit=10)
        elapsed = time.monotonic() - started
        sock.close()
        assert 0.4 < elapsed < 5, elapsed
        if b"Content-Length: 1000" in sent:
            assert answer.startswith(b"HTTP/1.1 408 ")
        else:
            assert answer == b""
        wait_for(lambda: server.connections == 0)


@pytest.mark.slow
def test_a_trickling_client_gets_no_more_time(model):
    with running(model, timeout=0.6) as server:
        sock = connect(server)
        started = time.monotonic()
        with contextlib.suppress(OSError):
            for byte in b"GET /v1/models/imuge HTTP/1.1\r\nHost: x\r\n":
                sock.sendall(bytes([byte]))
                time.sleep(0.1)  # each byte well within the timeout; the request is not
        read_until_closed(sock, limit=10)
        sock.close()
        assert time.monotonic() - started < 5


@pytest.mark.slow
def test_connections_over_the_cap_get_503_with_retry_after(model, photo):
    with running(model, max_connections=2, timeout=30) as server:
        idle = [connect(server) for _ in range(2)]
        wait_for(lambda: server.connections == 2)
        status, headers, body = request(server, "GET", STATUS)
        assert status == 503, body
        assert headers.get("Retry-After") == "1" and "retry" in body["error"]
        assert server.refused_connections >= 1
        for sock in idle:
            sock.close()
        wait_for(lambda: server.connections == 0)
        assert request(server, "GET", STATUS)[0] == 200
        assert_serving(server, photo)


@pytest.fixture
def slowed_predict(model, monkeypatch):
    """The model's predict made to wait: each call sets `entered`, then waits for `release`
    (at most 30 s) before predicting, so that a test decides when a predict's place frees."""
    gate = types.SimpleNamespace(entered=threading.Event(), release=threading.Event())
    original = model.predict

    def slow(body, **limits):
        gate.entered.set()
        gate.release.wait(timeout=30)
        return original(body, **limits)

    monkeypatch.setattr(model, "predict", slow)
    yield gate
    gate.release.set()  # no predict thread is left waiting after a failed test


@pytest.mark.slow
def test_predicts_over_the_cap_get_503_with_retry_after(model, photo, monkeypatch,
                                                        slowed_predict):
    # The first request holds the only running place until released, the second waits in
    # the queue's one place.
    blob = encode(photo)
    with running(model, max_predicts=1, max_queued=1, max_connections=8) as server:
        results = []
        first = threading.Thread(target=lambda: results.append(predict(server, [blob])))
        first.start()
        assert slowed_predict.entered.wait(timeout=30)
        second = threading.Thread(target=lambda: results.append(predict(server, [blob])))
        second.start()
        wait_for(lambda: server.slots._admitted == 2)
        status, headers, body = predict(server, [blob])
        assert status == 503, body
        assert headers.get("Retry-After") == "1" and "busy" in body["error"]
        slowed_predict.release.set()
        first.join(timeout=60)
        second.join(timeout=60)
        assert sorted(result[0] for result in results) == [200, 200]
        monkeypatch.undo()
        assert_serving(server, photo)


@pytest.mark.slow
def test_slow_bodies_hold_no_predict_place_and_bodies_being_read_have_a_budget(model, photo):
    blob = encode(photo)
    with running(model, max_predicts=1, max_queued=0, max_body_bytes=50_000,
                 max_buffered_bytes=60_000) as server:
        slow = connect(server)
        slow.sendall(post(PREDICT, b'{"instances": [', "Content-Length: 40000"))
        wait_for(lambda: server.buffered.reserved == 40_000)
        assert_serving(server, photo)  # 40000 + its few KB fit the budget; its place is free
        another = connect(server)
        another.sendall(post(PREDICT, b'{"instances": [', "Content-Length: 30000"))
        answer = read_until_closed(another, limit=10)
        assert answers(answer) == [503] and b"Retry-After: 1" in answer
        another.close()
        slow.close()
        wait_for(lambda: server.buffered.reserved == 0)
        assert predict(server, [blob] * 2)[0] == 200


@pytest.mark.slow
def test_a_waiting_predict_gives_up_after_the_timeout(model, photo, slowed_predict):
    blob = encode(photo)
    with running(model, max_predicts=1, max_queued=4, timeout=1.0) as server:
        results = []
        first = threading.Thread(target=lambda: results.append(predict(server, [blob])))
        first.start()
        wait_for(lambda: server.slots._busy == 1)
        status, headers, body = predict(server, [blob])
        assert status == 503 and headers.get("Retry-After") == "1", body
        slowed_predict.release.set()
        first.join(timeout=60)
        assert results[0][0] == 200


# ---------------------------------------------------------------------------------------------
# Framing: every answer leaves the connection at the next request's start, or closes it


SMUGGLED = b"GET /v1/models/imuge/metadata HTTP/1.1\r\nHost: x\r\n\r\n"


def exchange(server, data):
    """The server's whole answer to raw `data` on one connection, up to its closing it."""
    sock = connect(server)
    try:
        sock.sendall(data)
        return read_until_closed(sock, limit=30)
    finally:
        sock.close()


def answers(stream):
    """The status codes of the responses in a stream (every body here ends with a newline)."""
    return [int(code) for code in re.findall(rb"(?:^|\n)HTTP/1\.[01] (\d{3}) ", stream)]


def post(path, body, *headers):
    lines = [f"POST {path} HTTP/1.1", "Host: x", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


@pytest.mark.slow
@pytest.mark.parametrize("data, status", [
    # chunked, but the body is a request rather than chunks
    (post(PREDICT, SMUGGLED, "Transfer-Encoding: chunked"), 400),
    # both framings: the other reading of the body would be a second request
    (post(PREDICT, b"0\r\n\r\n" + SMUGGLED, "Transfer-Encoding: chunked",
          f"Content-Length: {5 + len(SMUGGLED)}"), 400),
    (post(PREDICT, b"0\r\n\r\n" + SMUGGLED, "Transfer-Encoding: gzip, chunked"), 400),
    # bodies that are refused before being used, each a smuggled request
    (post("/v1/models/other:predict", SMUGGLED, f"Content-Length: {len(SMUGGLED)}"), 404),
    (post("/v1/models/imuge:classify", SMUGGLED, f"Content-Length: {len(SMUGGLED)}"), 400),
    (post("/v2/nothing", SMUGGLED, f"Content-Length: {len(SMUGGLED)}"), 404),
    (post(PREDICT, SMUGGLED, f"Content-Length: {len(SMUGGLED)}"), 400),
    (post(PREDICT, SMUGGLED, f"Content-Length: {len(SMUGGLED)}x"), 400),
    (post(PREDICT, SMUGGLED, "Content-Length: 5", "Content-Length: 6"), 400),
    (post(PREDICT, SMUGGLED, "Content-Length: +51"), 400),
    (post(PREDICT, SMUGGLED), 411),
    # a chunked body with a request inside its chunk
    (post(PREDICT, b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED),
          "Transfer-Encoding: chunked"), 400),
    # over the size limit (4096 here)
    (post(PREDICT, SMUGGLED.ljust(5000, b"x"), "Content-Length: 5000"), 400),
    (post(PREDICT, b"1388\r\n" + SMUGGLED.ljust(5000, b"x") + b"\r\n0\r\n\r\n",
          "Transfer-Encoding: chunked"), 400),
], ids=["chunked_not_chunks", "chunked_and_length", "gzip_chunked", "other_model",
        "classify", "bad_path", "not_json", "bad_length", "two_lengths", "signed_length",
        "no_length", "chunk_holds_request", "over_limit", "chunked_over_limit"])
def test_a_smuggled_request_never_runs(model, data, status):
    with running(model, timeout=1.0, max_body_bytes=4096) as server:
        stream = exchange(server, data)
    assert answers(stream) == [status], stream[:500]
    assert b"signature_def" not in stream


@pytest.mark.slow
def test_chunked_bodies_and_pipelined_requests_are_read_as_such(model, photo):
    body = json.dumps({"instances": [b64(encode(photo))]}).encode("ascii")
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 1000]), body[i:i + 1000])
                      for i in range(0, len(body), 1000))
    with running(model, timeout=2.0) as server:
        stream = exchange(server, post(PREDICT, chunks + b"0\r\n\r\n",
                                       "Transfer-Encoding: chunked")
                          + b"GET /v1/models/imuge HTTP/1.1\r\nHost: x\r\n\r\n"
                          + post(PREDICT, body, f"Content-Length: {len(body)}",
                                 "Connection: close"))
    assert answers(stream) == [200, 200, 200], stream[-3000:]
    assert stream.count(b'"decoded_png_bytes"') == 2


# ---------------------------------------------------------------------------------------------
# JSON, 500s, and clients that go away


@pytest.mark.slow
@pytest.mark.parametrize("raw", [
    b"[" * 5000 + b"]" * 5000,
    b'{"instances": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"a": ' * 5000 + b"1" + b"}" * 5000,
    b"[" * 100_000,
    json.dumps({"signature_name": "verify_tensor",
                "instances": json.loads("[" * 200 + "0.5" + "]" * 200)}).encode("ascii"),
], ids=["lists", "instances", "objects", "unclosed", "deep_but_parsed"])
def test_deeply_nested_json_gets_400(model, photo, raw):
    with running(model) as server:
        status, _, body = request(server, "POST", PREDICT, raw=raw)
        assert status == 400, body
        assert "nested" in body["error"] or "JSON" in body["error"]
        assert_serving(server, photo)


@pytest.mark.slow
def test_a_500_says_nothing_of_the_error_and_the_log_has_it(model, photo, monkeypatch,
                                                            caplog):
    from imuge_tf.serve import INTERNAL_ERROR

    def broken(*args, **kwargs):
        raise RuntimeError("secret detail 4711 /etc/some/path")

    with running(model) as server:
        monkeypatch.setattr(model, "predict", broken)
        monkeypatch.setattr(model, "status", broken)
        with caplog.at_level(logging.ERROR, logger="imuge_tf.serve"):
            for method, path, payload in (("POST", PREDICT, {"instances": ["x"]}),
                                          ("GET", STATUS, None)):
                status, _, body = request(server, method, path, payload)
                assert status == 500
                assert body == {"error": INTERNAL_ERROR}
        assert caplog.text.count("secret detail 4711") >= 2
        assert all(record.exc_info for record in caplog.records
                   if record.name == "imuge_tf.serve")
        monkeypatch.undo()
        assert_serving(server, photo)


@pytest.mark.slow
def test_clients_that_go_away_cost_one_line_and_no_traceback(model, photo, capfd):
    head = post(PREDICT, b'{"instances": [', "Content-Length: 100000")
    with running(model, quiet=False, timeout=1.0) as server:
        capfd.readouterr()
        # mid-body, closed; mid-body, reset; idle until the timeout; gone before the answer
        sock = connect(server)
        sock.sendall(head)
        sock.close()
        sock = connect(server)
        sock.sendall(head)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        idle = connect(server)
        sock = connect(server)
        sock.sendall(b"GET /v1/models/imuge HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        time.sleep(0.2)
        wait_for(lambda: server.connections == 0)
        idle.close()
        assert_serving(server, photo)
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    assert err.count("client went away") >= 2, err
    assert "timed out" in err


def test_memory_is_handed_back_when_the_last_predict_ends(monkeypatch):
    from imuge_tf.serve import limits

    trimmed = []
    # Patched where PredictSlots looks it up: the module that defines both.
    monkeypatch.setattr(limits, "release_memory", lambda: trimmed.append(1))
    slots = limits.PredictSlots(running=2, queued=0)
    with slots.admitted(), slots.turn(1):
        with slots.admitted(), slots.turn(1):
            pass
        assert trimmed == []
    assert trimmed == [1]
    if limits._MALLOC_TRIM is not None:  # the real call, where the C library has it
        assert limits._MALLOC_TRIM(0) in (0, 1)
