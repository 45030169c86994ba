"""How soon `imuge` answers, and what it prints on stderr, as a user's shell starts it.

    python benchmarks/cli_startup.py [--runs 5] [--out DIR]
    python benchmarks/cli_startup.py --render-only

Real subprocesses (`python -m imuge_tf.cli ...`) in an environment without
TF_CPP_MIN_LOG_LEVEL or IMUGE_KEY, as a new user's shell has it:

- `imuge verify --help` and `imuge --version`: no TensorFlow is imported;
- `imuge verify photo.png`: one never-immunized 256 x 192 photo written to a temporary folder,
  verified with the shipped model and a temporary key file (so that the only line the tool
  itself could print, the demo-key warning, is not there either);
- the same with `--verbose` (one run): the lines the quiet start holds back;
- where the one-photo verify's time goes (one child process, timed inside): importing
  TensorFlow with its devices, loading the model, the first verify (which traces the
  pipeline for the photo's size) and a second verify of the same photo.

For each: the time to the first byte on stdout or stderr, the time to exit (medians over the
runs, with their range), the exit code, and the stderr lines of the last run, split into the
tool's own (`warning:` / `error:`) and the others. The figures go to
benchmarks/results/cli_startup.json, and the `cli_startup` section of BENCHMARKS.md is rendered
from that file (`--render-only` re-renders it without measuring).
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

NAME = "cli_startup"
TOOL_PREFIXES = ("warning: ", "error: ")


def user_environment() -> dict:
    """This process's environment without the variables that quieten or key the tool."""
    return {key: value for key, value in os.environ.items()
            if key not in ("TF_CPP_MIN_LOG_LEVEL", "IMUGE_KEY")}


def timed_run(arguments, cwd) -> dict:
    """One `imuge` run: seconds to the first output byte and to exit, exit code, stderr."""
    command = [sys.executable, "-m", "imuge_tf.cli", *arguments]
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=cwd, env=user_environment(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = None
    streams = {"stdout": b"", "stderr": b""}
    with selectors.DefaultSelector() as selector:
        selector.register(child.stdout, selectors.EVENT_READ, "stdout")
        selector.register(child.stderr, selectors.EVENT_READ, "stderr")
        while selector.get_map():
            for key, _ in selector.select():
                chunk = os.read(key.fileobj.fileno(), 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                if first is None:
                    first = time.perf_counter() - start
                streams[key.data] += chunk
    code = child.wait()
    ended = time.perf_counter() - start
    return {"first_output_s": first if first is not None else ended, "exit_s": ended,
            "exit_code": code, "stderr": streams["stderr"].decode("utf-8", "replace")}


def measure_case(name, arguments, runs, cwd) -> dict:
    common.log(f"{name}: {runs} run(s) of imuge {' '.join(arguments)}")
    results = [timed_run(arguments, cwd) for _ in range(runs)]
    lines = results[-1]["stderr"].splitlines()
    own = [line for line in lines if line.startswith(TOOL_PREFIXES)]
    first = common.spread(r["first_output_s"] for r in results)
    ended = common.spread(r["exit_s"] for r in results)
    return {
        "arguments": arguments,
        "runs": runs,
        "first_output_s": {"median": first.median, "low": first.low, "high": first.high},
        "exit_s": {"median": ended.median, "low": ended.low, "high": ended.high},
        "exit_codes": sorted({r["exit_code"] for r in results}),
        "stderr_lines": len(lines),
        "tool_lines": len(own),
        "other_lines": len(lines) - len(own),
        "other_lines_sample": [line[:160] for line in lines if line not in own][:6],
    }


BREAKDOWN = """
import json, sys, time
start = time.perf_counter()
from imuge_tf.cli import quiet
quiet.install()
import tensorflow as tf
steps = {"import_tensorflow_s": time.perf_counter() - start}
from imuge_tf.cli import batch
from imuge_tf.io import read_image
class Args:
    model = None
    key_file = "key"
mark = time.perf_counter()
imuge = batch.load_model(Args)
steps["load_model_s"] = time.perf_counter() - mark
image = read_image("photo.png")
for name in ("first_verify_s", "second_verify_s"):
    mark = time.perf_counter()
    imuge.verify(image)
    steps[name] = time.perf_counter() - mark
print(json.dumps(steps))
"""


def breakdown(cwd) -> dict:
    common.log("breakdown of one verify, timed inside the process")
    child = subprocess.run([sys.executable, "-c", BREAKDOWN], cwd=cwd, env=user_environment(),
                           capture_output=True, text=True, check=True)
    return json.loads(child.stdout.strip().splitlines()[-1])


def write_photo(folder) -> str:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    path = os.path.join(folder, "photo.png")
    Image.fromarray(rng.integers(0, 256, (192, 256, 3), dtype=np.uint8)).save(path)
    return path


def render(report) -> str:
    rows = []
    for case in report["cases"].values():
        first, ended = case["first_output_s"], case["exit_s"]
        rows.append([f"`imuge {' '.join(case['shown'])}`", case["runs"],
                     f"{first['median']:.2f} ({first['low']:.2f}-{first['high']:.2f})",
                     f"{ended['median']:.2f} ({ended['low']:.2f}-{ended['high']:.2f})",
                     "/".join(map(str, case["exit_codes"])), case["stderr_lines"],
                     case["tool_lines"], case["other_lines"]])
    facts = report["machine"]
    parts = report["breakdown"]
    return "\n".join([
        "## CLI start-up",
        "",
        f"`{report['command']}` ({report['date']}; {facts['cpu']}, {facts['cpus']} CPUs, "
        f"TensorFlow {facts.get('tensorflow', '?')}, load average {report['load_average']}). "
        "Real subprocesses as a user's shell starts them (no TF_CPP_MIN_LOG_LEVEL); the photo "
        "is a never-immunized 256 x 192 PNG, verified with the shipped model and a key file. "
        "Seconds: median (range).",
        "",
        common.markdown_table(
            ["command", "runs", "first output s", "exit s", "exit code", "stderr lines",
             "the tool's own", "other"], rows),
        "",
        f"Where the one-photo verify's time goes (one process, timed inside): importing "
        f"TensorFlow and initializing its devices {parts['import_tensorflow_s']:.1f} s, loading "
        f"the model {parts['load_model_s']:.1f} s, the first verify "
        f"{parts['first_verify_s']:.1f} s (it traces the pipeline for the photo's size), a "
        f"second verify of the same photo {parts['second_verify_s']:.1f} s.",
    ])


def measure(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="imuge-cli-startup-") as folder:
        write_photo(folder)
        key = os.path.join(folder, "key")
        with open(key, "wb") as stream:
            stream.write(os.urandom(32))
        verify = ["verify", "photo.png", "--key-file", "key"]
        cases = {
            "verify_help": (["verify", "--help"], args.runs),
            "version": (["--version"], args.runs),
            "verify_one_photo": (verify, args.runs),
            "verify_one_photo_verbose": ([*verify, "--verbose"], 1),
        }
        measured = {}
        for name, (arguments, runs) in cases.items():
            measured[name] = {**measure_case(name, arguments, runs, folder),
                              "shown": arguments}
        parts = breakdown(folder)
    return {"date": common.utc_now(), "command": common.command_line(),
            "machine": common.machine_facts(), "load_average": common.load_average(),
            "cases": measured, "breakdown": parts}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per case (default: 5)")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    common.measure_and_publish(NAME, args, measure, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
