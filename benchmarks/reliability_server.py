"""`imuge serve` under a burst of clients and under hostile ones: does it stay up, and does its
memory come back?

    python benchmarks/reliability_server.py [--model-dir EXPORT/serving/imuge] [--clients 200]

The server runs as a real subprocess, `imuge serve --model-dir DIR --port 0 --quiet` with its
default limits, and its memory is read from /proc/<pid>/status (VmRSS now, VmHWM the peak,
which is reset before each phase through /proc/<pid>/clear_refs). Without --model-dir, the
serving SavedModel of test_serving.py's hand-set model (1x1 convolutions, the real serving
graph: decoding, the whole verify + recover pipeline, PNG encoding) is exported into a
temporary folder.

1. A burst: --clients threads send one predict of a small photo each, all at once, over
   fresh connections: how many got 200, 503 (the server's load shedding, with Retry-After) or
   anything else, and the latencies. Then the same burst with clients that retry after a 503
   as Retry-After tells them to, up to --retries times. Then two concurrent predicts of two
   1-megapixel photos each: the server's peak memory, and whether it comes back.
2. Hostile requests, one after the other, each followed by a health check (GET of the model
   status) and the server's memory: 1,024 instances in one request, real image bombs (a WebP
   and a GIF of 9000 x 9000, small files that decode to 81 MP; a BMP header declaring 9000 x
   9000), 100 connections that send headers and never their body (slow loris), a request
   smuggled in a chunked body, JSON nested 5,000 deep. The server refuses the bombs from its
   pixel budget per request before the graph runs; the graph's own check (all TF Serving has)
   is measured on them too, in this process: its answer and this process's peak memory.
3. A forced internal error, on a server in this process whose model's predict raises (no
   request can make a sound server fail on purpose): is the 500's body generic, and does the
   log have the details?

`run` returns every figure as a JSON-ready dict; `main` prints it as one JSON document.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import io
import json
import logging
import os
import pathlib
import re
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO_ROOT, command_line, log, machine_facts, utc_now  # noqa: E402

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
PREDICT = "/v1/models/imuge:predict"
STATUS = "/v1/models/imuge"
BOMB_SIDE = 9000
SLOW_CLIENTS = 100
FLOOD_INSTANCES = 1024
NESTING = 5000


# ---------------------------------------------------------------------------------------------
# The model and the server process


def hand_set(folder):
    """The hand-set model of test_serving.py (an Imuge), written into `folder`."""
    sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
    from test_serving import hand_set_model

    from imuge_tf.inference import Imuge

    return Imuge.load(str(hand_set_model(pathlib.Path(folder) / "inference")))


def build_model(imuge, folder):
    """The serving export of `imuge` (test_serving.py writes it the same way)."""
    from test_serving import write_serving

    return write_serving(imuge, folder)


def small_photo():
    """A 48 x 64 PNG of a calm photo carrying the demo key's mark: `intact` to the model."""
    sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
    from test_serving import calm_photo, encode

    return encode(calm_photo(3))


class ServerProcess:
    """`imuge serve` in a subprocess: its URL, its memory, its stderr."""

    def __init__(self, model_dir, scratch):
        self.stderr_path = os.path.join(scratch, "serve.stderr")
        self._stderr = open(self.stderr_path, "w")
        self.command = [sys.executable, "-m", "imuge_tf.cli", "serve", "--model-dir", model_dir,
                        "--port", "0", "--quiet"]
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                        stderr=self._stderr, text=True, env=ENV)
        for line in self.process.stdout:
            if match := re.search(r"REST: http://([\d.]+):(\d+)/v1/models/", line):
                self.host, self.port = match[1], int(match[2])
                break
        else:
            self.process.wait(timeout=60)
            raise RuntimeError(f"imuge serve did not start: {self.stderr()[-2000:]}")

    def status(self, field):
        with open(f"/proc/{self.process.pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise KeyError(field)

    def rss_mb(self):
        return round(self.status("VmRSS") / 1024, 1)

    def peak_mb(self):
        return round(self.status("VmHWM") / 1024, 1)

    def threads(self):
        return self.status("Threads")

    def reset_peak(self):
        with contextlib.suppress(OSError), open(f"/proc/{self.process.pid}/clear_refs",
                                                "w") as handle:
            handle.write("5")

    def stderr(self):
        self._stderr.flush()
        with open(self.stderr_path) as handle:
            return handle.read()

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._stderr.close()


# ---------------------------------------------------------------------------------------------
# Clients


def call(server, method, path, body=None, timeout=120, headers=None):
    """(status, headers, body bytes, seconds); status None when the connection failed."""
    started = time.monotonic()
    connection = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        return response.status, dict(response.getheaders()), data, time.monotonic() - started
    except (OSError, http.client.HTTPException) as error:
        return None, {}, repr(error).encode(), time.monotonic() - started
    finally:
        connection.close()


def predict_body(blobs):
    return json.dumps({"instances": [{"b64": base64.b64encode(blob).decode("ascii")}
                                     for blob in blobs]}).encode("ascii")


def health(server):
    return call(server, "GET", STATUS, timeout=30)[0]


def percentiles(values):
    if not values:
        return None
    ordered = sorted(values)
    return {"median": round(1000 * statistics.median(ordered), 1),
            "p95": round(1000 * ordered[min(len(ordered) - 1,
                                            int(round(0.95 * (len(ordered) - 1))))], 1),
            "max": round(1000 * ordered[-1], 1)}


def burst(server, body, clients, retries=0):
    """`clients` threads send `body` to :predict at once; with `retries`, a 503 is retried
    after the Retry-After it gives, up to that many times."""
    start = threading.Barrier(clients)
    results = [None] * clients

    def client(index):
        start.wait()
        began, attempts = time.monotonic(), 0
        while True:
            attempts += 1
            status, headers, _, _ = call(server, "POST", PREDICT, body)
            if status != 503 or attempts > retries:
                break
            time.sleep(float(headers.get("Retry-After", "1")))
        results[index] = (status, time.monotonic() - began, attempts,
                          "Retry-After" in headers)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    server.reset_peak()
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    codes = {}
    for status, *_ in results:
        codes[str(status)] = codes.get(str(status), 0) + 1
    busy = [r for r in results if r[0] == 503]
    return {
        "clients": clients, "retries_allowed": retries, "wall_s": round(wall, 2),
        "status_counts": codes,
        "ok": codes.get("200", 0), "busy_503": codes.get("503", 0),
        "other": clients - codes.get("200", 0) - codes.get("503", 0),
        "busy_with_retry_after": sum(1 for r in busy if r[3]),
        "latency_ms_ok": percentiles([r[1] for r in results if r[0] == 200]),
        "latency_ms_all": percentiles([r[1] for r in results]),
        "attempts_median": statistics.median(r[2] for r in results),
        "server_peak_mb": server.peak_mb(),
    }


# ---------------------------------------------------------------------------------------------
# Hostile requests


def encoded(image, fmt, **options):
    from PIL import Image

    buffer = io.BytesIO()
    image = Image.fromarray(image) if not hasattr(image, "save") else image
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def bombs():
    """Small files that declare 9000 x 9000 pixels: real WebP and GIF ones (they decode to 81
    MP), and a BMP header (a real one would be 243 MB, over the body limit)."""
    import numpy as np
    from PIL import Image

    webp = encoded(Image.new("RGB", (BOMB_SIDE, BOMB_SIDE)), "WEBP", lossless=True, method=0)
    gif = encoded(Image.new("P", (BOMB_SIDE, BOMB_SIDE)), "GIF")
    small = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    bmp = bytearray(encoded(small, "BMP"))
    bmp[18:26] = struct.pack("<ii", BOMB_SIDE, BOMB_SIDE)
    return {"webp_bomb": webp, "gif_bomb": gif, "bmp_bomb": bytes(bmp)}


def flood_body():
    """FLOOD_INSTANCES tiny PNGs (16 x 16 noise) in one request."""
    import numpy as np

    rng = np.random.default_rng(1)
    tiles = [encoded(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), "PNG")
             for _ in range(FLOOD_INSTANCES)]
    return predict_body(tiles)


def hostile_request(server, body, headers=None):
    server.reset_peak()
    status, _, data, seconds = call(server, "POST", PREDICT, body, headers=headers)
    error = ""
    with contextlib.suppress(ValueError, AttributeError):
        error = json.loads(data).get("error", "")
    return {"status": status, "seconds": round(seconds, 3), "body_bytes": len(body),
            "error": error[:160], "server_peak_mb": server.peak_mb(),
            "server_rss_after_mb": server.rss_mb(), "health_after": health(server)}


def slow_loris(server, count=SLOW_CLIENTS, limit=120):
    """`count` connections that send a predict's headers and the start of its body, then
    nothing: how many the server refuses at once, how long it holds the rest, its threads."""
    head = (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 100000\r\n\r\n{\"instances\": [").encode("ascii")
    threads_before = server.threads()
    sockets, started = [], time.monotonic()
    for _ in range(count):
        sock = socket.create_connection((server.host, server.port), timeout=10)
        sock.sendall(head)
        sockets.append(sock)
    time.sleep(1.0)
    threads_held = server.threads()
    health_during = health(server)
    answers, closed_at = {}, {}
    while len(closed_at) < count and time.monotonic() - started < limit:
        waiting = [s for s in sockets if s.fileno() not in closed_at]
        readable, _, _ = select.select(waiting, [], [], 1.0)
        for sock in readable:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if data:
                answers.setdefault(sock.fileno(), b"")
                answers[sock.fileno()] += data
            else:
                closed_at[sock.fileno()] = time.monotonic() - started
    codes = {}
    for data in answers.values():
        match = re.match(rb"HTTP/1\.1 (\d{3})", data)
        code = match[1].decode() if match else "none"
        codes[code] = codes.get(code, 0) + 1
    held = sorted(t for fd, t in closed_at.items()
                  if not answers.get(fd, b"").startswith(b"HTTP/1.1 503"))
    for sock in sockets:
        sock.close()
    time.sleep(1.5)
    return {"connections": count, "answer_counts": codes,
            "refused_503_at_once": codes.get("503", 0),
            "held_then_closed_by_server": len(held),
            "held_closed_after_s": {"first": round(held[0], 1), "last": round(held[-1], 1)}
            if held else None,
            "never_closed": count - len(closed_at),
            "server_threads": {"before": threads_before, "while_held": threads_held,
                               "after": server.threads()},
            "health_during": health_during, "health_after": health(server),
            "server_rss_after_mb": server.rss_mb()}


def smuggling(server):
    """A chunked POST whose body is a second request: does the second one run?"""
    smuggled = b"GET /v1/models/imuge/metadata HTTP/1.1\r\nHost: x\r\n\r\n"
    data = (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            .encode("ascii") + smuggled)
    sock = socket.create_connection((server.host, server.port), timeout=60)
    parts, closed = [], False
    try:
        sock.sendall(data)
        with contextlib.suppress(OSError):
            while piece := sock.recv(65536):
                parts.append(piece)
            closed = True
    finally:
        sock.close()
    stream = b"".join(parts)
    codes = [int(code) for code in re.findall(rb"(?:^|\n)HTTP/1\.[01] (\d{3}) ", stream)]
    return {"answers": codes, "status": codes[0] if codes else None,
            "smuggled_request_ran": b"signature_def" in stream,
            "connection_closed_by_server": closed, "health_after": health(server)}


def forced_internal_error():
    """A 500 from a server in this process whose model's predict raises."""
    from imuge_tf.serve import INTERNAL_ERROR, Server

    secret = "secret detail: /srv/models/key.bin line 42"

    class Failing:
        name, version = "imuge", 1

        def check_version(self, version):
            pass

        def status(self):
            return {"model_version_status": []}

        def predict(self, body, **limits):
            raise RuntimeError(secret)

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = Keep()
    logger = logging.getLogger("imuge_tf.serve")
    logger.addHandler(handler)
    previous = logger.propagate
    logger.propagate = False
    server = Server(Failing(), "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        target = type("Target", (), {"host": host, "port": port})()
        status, _, data, _ = call(target, "POST", PREDICT, predict_body([b"x"]))
        health_after = call(target, "GET", STATUS)[0]
    finally:
        server.shutdown()
        server.server_close()
        logger.removeHandler(handler)
        logger.propagate = previous
    logged = "\n".join(records)
    return {"status": status, "body_is_generic": json.loads(data) == {"error": INTERNAL_ERROR},
            "body_has_exception_text": secret.encode() in data,
            "log_has_exception_text": secret in logged,
            "log_has_traceback": "Traceback" in logged, "health_after": health_after,
            "where": "in process, the model's predict replaced by one that raises"}


def deep_json():
    return b"[" * NESTING + b"]" * NESTING


def own_peak_mb(reset=False):
    if reset:
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def graph_check(imuge, files):
    """The serving graph's own check (what TF Serving runs), in this process: each file given
    to `_ServingGraph._decode`, its error and how much this process's peak memory grew."""
    import tensorflow as tf

    from imuge_tf.export import _ServingGraph
    from imuge_tf.serve import tf_error_message

    decode = tf.function(_ServingGraph(imuge)._decode,
                         input_signature=[tf.TensorSpec([], tf.string)])
    decode(tf.constant(small_photo()))
    figures = {}
    for name, data in files.items():
        before = own_peak_mb(reset=True)
        started = time.monotonic()
        try:
            shape = decode(tf.constant(data)).shape.as_list()
            outcome = f"decoded to {shape}"
        except tf.errors.InvalidArgumentError as error:
            outcome = tf_error_message(error)
        figures[name] = {"outcome": outcome, "seconds": round(time.monotonic() - started, 3),
                         "peak_growth_mb": round(own_peak_mb() - before, 1)}
    return figures


def large_photos(server, photos=2, requests=2, megapixels=1.0):
    """`requests` concurrent predicts of `photos` noisy photos of `megapixels` each: the
    server's peak memory, and its memory once they are done."""
    import numpy as np

    height = int((megapixels * 1e6 * 3 / 4) ** 0.5)
    width = int(megapixels * 1e6 / height)
    rng = np.random.default_rng(2)
    blobs = [encoded(rng.integers(90, 160, (height, width, 3), dtype=np.uint8), "PNG",
                     compress_level=1) for _ in range(photos)]
    body = predict_body(blobs)
    server.reset_peak()
    before = server.rss_mb()
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        call(server, "POST", PREDICT, body, timeout=900))) for _ in range(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(2.0)
    return {"requests": requests, "photos_per_request": photos,
            "photo_size": f"{width} x {height}", "statuses": sorted(r[0] for r in results),
            "seconds": round(max(r[3] for r in results), 1), "rss_before_mb": before,
            "peak_mb": server.peak_mb(), "rss_after_mb": server.rss_mb()}


# ---------------------------------------------------------------------------------------------


def run(model_dir=None, clients=200, retries=30, scratch=None):
    """Every figure of the benchmark (see the module docstring) as a JSON-ready dict."""
    from imuge_tf import serve as serving

    with contextlib.ExitStack() as stack:
        if scratch is None:
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="imuge-serve-"))
        built = model_dir is None
        imuge = hand_set(os.path.join(scratch, "hand_set"))
        if built:
            log("exporting the hand-set model's serving SavedModel")
            model_dir = build_model(imuge, os.path.join(scratch, "export"))
        photo = small_photo()
        log("making the image bombs")
        hostile_files = bombs()
        log("the serving graph's own check on them, in this process")
        checked = graph_check(imuge, hostile_files)
        log("starting imuge serve")
        started = time.monotonic()
        server = ServerProcess(model_dir, scratch)
        stack.callback(server.stop)
        figures = {
            "model": "the hand-set model (test_serving.py), exported here" if built
            else model_dir,
            "server": {"command": " ".join(server.command[1:]), "pid": server.process.pid,
                       "startup_s": round(time.monotonic() - started, 1), "limits": {
                           "max_body_bytes": serving.DEFAULT_MAX_BODY_BYTES,
                           "max_instances": serving.DEFAULT_MAX_INSTANCES,
                           "timeout_s": serving.DEFAULT_TIMEOUT,
                           "max_connections": serving.DEFAULT_MAX_CONNECTIONS,
                           "max_predicts": serving.DEFAULT_MAX_PREDICTS,
                           "max_queued": serving.DEFAULT_MAX_QUEUED}},
        }
        body = predict_body([photo])
        for _ in range(3):  # warm: the first predicts after loading pay for allocation
            status, _, _, _ = call(server, "POST", PREDICT, body)
            assert status == 200, status
        time.sleep(1.0)
        memory = {"baseline_rss": server.rss_mb()}
        single = [call(server, "POST", PREDICT, body)[3] for _ in range(5)]
        figures["one_predict_ms"] = percentiles(single)

        log(f"burst of {clients} clients")
        figures["burst"] = burst(server, body, clients)
        figures["burst"]["health_after"] = health(server)
        time.sleep(2.0)
        memory["after_burst_rss"] = server.rss_mb()
        memory["burst_peak"] = figures["burst"]["server_peak_mb"]
        log(f"burst of {clients} clients retrying after 503")
        figures["burst_retrying"] = burst(server, body, clients, retries=retries)
        figures["burst_retrying"]["health_after"] = health(server)
        time.sleep(2.0)
        memory["after_retrying_burst_rss"] = server.rss_mb()
        log("large photos")
        figures["large_photos"] = large_photos(server)
        memory["after_large_photos_rss"] = figures["large_photos"]["rss_after_mb"]

        hostile = {}
        log("hostile requests")
        hostile["instances_flood"] = hostile_request(server, flood_body())
        for name, data in hostile_files.items():
            hostile[name] = hostile_request(server, predict_body([data]))
            hostile[name]["file_bytes"] = len(data)
        log(f"{SLOW_CLIENTS} slow-loris connections (held until the server's timeout)")
        hostile["slow_loris"] = slow_loris(server)
        hostile["chunked_smuggling"] = smuggling(server)
        hostile["json_5000_deep"] = hostile_request(server, deep_json())
        hostile["forced_500"] = forced_internal_error()
        figures["hostile"] = hostile
        figures["graph_check"] = checked

        time.sleep(2.0)
        memory["after_everything_rss"] = server.rss_mb()
        memory["baseline_growth"] = round(memory["after_everything_rss"]
                                          - memory["baseline_rss"], 1)
        figures["memory_mb"] = memory
        status, _, data, _ = call(server, "POST", PREDICT, body)
        verdict = json.loads(data)["predictions"][0]["verdict"] if status == 200 else None
        figures["still_serving"] = {"health": health(server), "predict": status,
                                    "verdict": verdict}
        errors = server.stderr()
        figures["server_stderr"] = {"tracebacks": errors.count("Traceback"),
                                    "lines": len(errors.splitlines())}
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=None, metavar="DIR",
                        help="an export's serving model folder (EXPORT/serving/imuge); "
                             "default: the hand-set model, exported into a temporary folder")
    parser.add_argument("--clients", type=int, default=200,
                        help="concurrent clients in each burst (default: 200)")
    parser.add_argument("--retries", type=int, default=30,
                        help="retries after a 503 per client in the second burst")
    args = parser.parse_args(argv)
    figures = run(args.model_dir, clients=args.clients, retries=args.retries)
    print(json.dumps({"command": command_line(argv and [sys.argv[0], *argv]),
                      "time": utc_now(), "machine": machine_facts(), **figures}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
