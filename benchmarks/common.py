"""Helpers shared by the benchmark scripts in this folder.

- `log`: a timestamped progress line on stderr (stdout stays for the results);
- `Spread` / `spread`: the median of repeated measurements and how far they scatter;
- `machine_facts`, `command_line`, `utc_now`: what a result needs to be reproducible;
- `markdown_table`: a small GitHub-flavoured table;
- `update_section`: rewrites one script's section of BENCHMARKS.md, between
  `<!-- NAME:start -->` and `<!-- NAME:end -->`, keeping every other section as it is;
- `save_results` / `load_results`: a script's figures as data, in benchmarks/results/NAME.json,
  which its section of BENCHMARKS.md is rendered from (`--render-only` re-renders without
  measuring again); `add_output_arguments`, `measure_and_publish` and `publish` are that flow,
  `provenance` / `provenance_lines` the date, machine and command a section opens with,
  `nulls_as_nan` the NaNs that save_results wrote as null, back for rendering;
- `sync`: waits for TF outputs before a timer stops.

Importing this module also quietens TensorFlow's C++ info and warning logs
(TF_CPP_MIN_LOG_LEVEL=2) unless the caller has set that variable: import it before TensorFlow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS_FILE = os.path.join(REPO_ROOT, "BENCHMARKS.md")
BENCHMARKS_TITLE = "# Benchmarks"
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")


def log(message: str) -> None:
    """One progress line on stderr, e.g. `[12:03:04] timing stage 4`."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Spread:
    """Repeated measurements of one quantity: the median and the range around it."""

    median: float
    low: float
    high: float
    count: int

    @property
    def relative(self) -> float:
        """(max - min) / median: 0.1 means the repeats scatter over 10 % of the median."""
        return (self.high - self.low) / self.median if self.median else float("nan")

    def describe(self, digits: int = 2, unit: str = "") -> str:
        """E.g. '3.05 img/s (3 runs 2.91-3.12, spread 7 %)'."""
        unit = f" {unit}" if unit else ""
        if self.count == 1:
            return f"{self.median:.{digits}f}{unit} (1 run)"
        return (f"{self.median:.{digits}f}{unit} ({self.count} runs {self.low:.{digits}f}-"
                f"{self.high:.{digits}f}, spread {100 * self.relative:.0f} %)")


def spread(values) -> Spread:
    """The Spread of a non-empty sequence of numbers."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("spread() needs at least one value")
    return Spread(statistics.median(values), min(values), max(values), len(values))


def cpu_model() -> str:
    """The processor's marketing name ('model name' in /proc/cpuinfo), or the best guess."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name") and ":" in line:
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> str:
    """The 1/5/15-minute load averages as text, or 'n/a'."""
    with contextlib.suppress(AttributeError, OSError):
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    return "n/a"


def machine_facts() -> dict:
    """CPU, OS and library versions, as short strings (TensorFlow and Keras if importable)."""
    facts = {
        "cpus": f"{usable_cpus()} usable of {os.cpu_count()}",
        "cpu": cpu_model(),
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": platform.python_version(),
    }
    for module in ("tensorflow", "keras"):
        with contextlib.suppress(ImportError):
            facts[module] = __import__(module).__version__
    return facts


def utc_now() -> str:
    """The current time, e.g. '2026-11-26 13:05 UTC'."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def command_line(argv=None) -> str:
    """The command that ran this script, as typed from the repository root."""
    argv = list(sys.argv if argv is None else argv)
    script = os.path.abspath(argv[0]) if argv else ""
    if script.startswith(REPO_ROOT + os.sep):
        script = os.path.relpath(script, REPO_ROOT)
    return shlex.join(["python", script, *argv[1:]])


def markdown_table(headers, rows) -> str:
    """A GitHub-flavoured markdown table; cells are converted with str()."""
    lines = ["| " + " | ".join(str(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_section(text: str, name: str, body: str) -> str:
    """`text` with the section `name` set to `body` (appended at the end if absent)."""
    start, end = _markers(name)
    block = f"{start}\n{body.strip()}\n{end}"
    begin = text.find(start)
    if begin >= 0:
        finish = text.find(end, begin)
        if finish < 0:
            raise ValueError(f"BENCHMARKS.md has '{start}' without '{end}'; fix it by hand")
        return text[:begin] + block + text[finish + len(end):]
    if not text.strip():
        text = BENCHMARKS_TITLE + "\n"
    return text.rstrip("\n") + "\n\n" + block + "\n"


@contextlib.contextmanager
def _file_lock(path: str):
    """An advisory lock, so two benchmark scripts finishing together do not lose an update."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        yield
        return
    key = hashlib.sha1(os.path.abspath(path).encode("utf-8")).hexdigest()[:12]
    lock_path = os.path.join(tempfile.gettempdir(), f"imuge_tf-benchmarks-{key}.lock")
    with open(lock_path, "w", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def update_section(name: str, body: str, path: str = BENCHMARKS_FILE) -> str:
    """Writes `body` as the section `name` of BENCHMARKS.md, atomically; returns the path.

    The file is created with a '# Benchmarks' title if missing. Other sections and any text
    around them are kept byte for byte. The new file is written next to the old one and moved
    over it (imuge_tf.io.write_text_atomic), so a reader never sees a half-written file.
    """
    from imuge_tf.io import write_text_atomic

    path = os.path.abspath(path)
    with _file_lock(path):
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
            mode = os.stat(path).st_mode & 0o777
        except FileNotFoundError:
            text, mode = "", 0o644
        write_text_atomic(path, replace_section(text, name, body), force=True)
        os.chmod(path, mode)
    return path


def final_stage_step(config) -> int:
    """The first step of the final stage with fading done and task decoupling lifted."""
    from imuge_tf.models.unet import LEVELS

    train = config.train
    per_epoch = train.steps_per_epoch
    step = 0
    if config.model.progressive_recovery and train.stage_epochs > 0:
        stage_start = (LEVELS - 1) * train.stage_epochs * per_epoch
        step = stage_start + math.ceil(train.fade_fraction * train.stage_epochs * per_epoch)
    if config.model.task_decoupling:
        step = max(step, train.decoupling_epochs * per_epoch)
    return min(step, train.epochs * per_epoch - 1)


def describe_schedule(model, step: int) -> str:
    """The training schedule at `step`, e.g. 'step 0: stage 1, alpha 1.00, decoupled'."""
    stage, alpha, decoupled = (v.numpy() for v in model.schedule(step))
    return (f"step {step}: stage {int(stage)}, alpha {float(alpha):.2f}, "
            f"{'decoupled' if bool(decoupled) else 'coupled'}")


def results_path(name: str, folder: str | None = None) -> str:
    """benchmarks/results/NAME.json (or FOLDER/NAME.json): where `name` keeps its figures."""
    return os.path.join(folder or RESULTS_DIR, f"{name}.json")


def save_results(name: str, results: dict, folder: str | None = None) -> str:
    """Writes `results` as benchmarks/results/NAME.json (or FOLDER/NAME.json), atomically;
    returns the path.

    Values JSON cannot hold (numpy scalars, paths) are written with str(); non-finite floats
    are written as null, so the file stays strict JSON.
    """
    import json

    from imuge_tf.io import write_text_atomic

    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: finite(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(item) for item in value]
        return value

    path = results_path(name, folder)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = json.dumps(finite(results), indent=2, default=str, allow_nan=False)
    write_text_atomic(path, text + "\n", force=True)
    return path


def load_results(name: str, folder: str | None = None) -> dict:
    """The figures benchmarks/results/NAME.json (or FOLDER/NAME.json) holds; a clear error if
    it was never written."""
    import json

    path = results_path(name, folder)
    if not os.path.exists(path):
        raise SystemExit(f"error: {os.path.relpath(path, REPO_ROOT)} does not exist; "
                         f"run {os.path.relpath(sys.argv[0], REPO_ROOT)} once without "
                         f"--render-only")
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def nulls_as_nan(rows) -> list[dict]:
    """`rows` (dicts of figures, as load_results gives them) with every null back as NaN:
    save_results writes a non-finite float as null, and a section shows it as 'nan'."""
    return [{key: float("nan") if value is None else value for key, value in row.items()}
            for row in rows]


def add_output_arguments(parser) -> None:
    """--render-only and --out, for a script that measures -> save_results -> publish."""
    parser.add_argument("--render-only", action="store_true",
                        help="re-render the BENCHMARKS.md section from the saved JSON; "
                             "measure nothing")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="write NAME.json and a BENCHMARKS.md into DIR instead of "
                             "benchmarks/results and the repository's BENCHMARKS.md (for "
                             "trial runs whose figures must not replace the real ones)")


def publish(name: str, render, folder: str | None = None) -> str:
    """Renders NAME.json with `render`, writes it as the section `name` and prints it.

    `folder` (a script's --out) holds both the JSON and the BENCHMARKS.md to write.
    """
    text = render(load_results(name, folder))
    path = update_section(name, text, os.path.join(folder, "BENCHMARKS.md")
                          if folder else BENCHMARKS_FILE)
    print(text)
    log(f"wrote the '{name}' section of {path}")
    return text


def require_unless_render_only(parser, args, *names: str) -> None:
    """An argparse error unless every option in `names` (e.g. "data") that measuring needs
    was given; nothing when only re-rendering."""
    if not args.render_only and not all(getattr(args, option) for option in names):
        options = " and ".join(f"--{option}" for option in names)
        parser.error(f"{options} {'is' if len(names) == 1 else 'are'} needed unless "
                     f"--render-only")


def measure_and_publish(name: str, args, measure, render) -> str:
    """A script's whole flow, for arguments from `add_output_arguments`: unless --render-only,
    `measure(args)` is saved as NAME.json; then that file is published."""
    if not args.render_only:
        save_results(name, measure(args), args.out)
    return publish(name, render, args.out)


def provenance() -> dict:
    """When, how and where a measurement starts; the caller adds load_average['after']."""
    return {"date": utc_now(), "command": command_line(), "machine": machine_facts(),
            "load_average": {"before": load_average()}}


def provenance_lines(results: dict, *details: str) -> list[str]:
    """The bullet list that opens a section, from `provenance()`'s keys; `details` are
    bullets of the script's own (config, data) put before the command."""
    facts, load = results["machine"], results["load_average"]
    return [
        f"- date: {results['date']}",
        f"- machine: {facts['cpus']} CPUs, {facts['cpu']}; {facts['os']}; load average "
        f"(1/5/15 min) {load['before']} before, {load['after']} after",
        f"- software: TensorFlow {facts.get('tensorflow')}, Keras {facts.get('keras')}, "
        f"Python {facts['python']}",
        *details,
        f"- command: `{results['command']}`",
    ]


def sync(outputs) -> None:
    """Fetches one number from each output tensor, so that the work is surely done before a
    timer stops (eager results may still be computing asynchronously)."""
    import tensorflow as tf

    for tensor in tf.nest.flatten(outputs):
        float(tf.reshape(tensor, [-1])[0])
