"""The `imuge` command (and `python train.py`, which is `imuge train`).

Subcommands: train, immunize, verify, recover, tamper, evaluate, demo, export, serve. The image
commands take
many files and folders per call, show a progress bar, report a file that fails in one line on
stderr and go on with the rest, and end with a summary (or one JSON document with --json).
Exit codes are listed in EXIT_CODES_HELP (`imuge --help`).

TensorFlow and Keras are imported inside the commands that need them, so `imuge --help` and
errors found before any model is loaded (bad arguments, outputs that already exist) are fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import textwrap
import traceback

EXIT_OK = 0
EXIT_INTERNAL = 1  # train: an unexpected error (Python's exit status after a traceback)
EXIT_TAMPERED = 1
EXIT_BAD_INPUT = 2
EXIT_NOT_IMMUNIZED = 3
EXIT_BUG = 4
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0    success; verify: every photo is intact
  1    verify: at least one photo is tampered
  2    bad arguments or input, or some file failed (one line each on stderr; the other
       files were still processed); verify: takes precedence over 1 and 3, since the
       check is incomplete
  3    verify: at least one photo is not immunized, and none is tampered
  4    unexpected internal error (a bug: the traceback is printed)
  130  interrupted
train keeps its own: 0 done, 1 unexpected error, 2 bad input, 130 interrupted.
"""

# Names of imuge_tf.attacks.tamper.TAMPERS, repeated here so that parsing imports no TensorFlow
# (a test checks that both lists agree).
TAMPER_KINDS = ("donor", "colour", "clone", "copy_move", "splice", "removal")
OUTPUT_FORMATS = ("png", "bmp", "tif", "tiff", "jpg", "jpeg", "webp")
# Tamper masks are drawn on a square canvas of at most this side, then scaled to the photo.
TAMPER_MASK_CANVAS = 512
DEFAULT_DEMO_DIR = "imuge-demo"


class CommandError(Exception):
    """An expected failure of a whole command: one line on stderr, exit code 2."""


# ---------------------------------------------------------------------------------------------
# train (unchanged)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="demo",
                        help="YAML config file, or a shipped one: smoke, demo, paper "
                             "(default: demo)")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="folder of training photos, searched recursively (default: the "
                             "sample photos bundled with scikit-image)")
    parser.add_argument("--workdir", default=None, metavar="DIR",
                        help="where checkpoints, logs and weights go; an interrupted run "
                             "resumes from here (default: runs/<config name>)")
    parser.add_argument("--strategy", default="default",
                        choices=("default", "mirrored", "multiworker"),
                        help="tf.distribute strategy; multiworker reads TF_CONFIG")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config field, e.g. "
                                                  "--set train.epochs=5 (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--init-from", default=None, metavar="WORKDIR",
                        help="start a new run from the network weights of another work "
                             "directory's latest checkpoint (fine-tuning; a fresh schedule "
                             "and fresh optimizers)")


def run_train(args) -> int:
    from imuge_tf.config import load_config
    from imuge_tf.samples import sample_photos
    from imuge_tf.training import train

    config = load_config(args.config, args.overrides)
    workdir = args.workdir or os.path.join("runs", config.name)
    images = args.data if args.data is not None else sample_photos()
    train(config, images, workdir, strategy_name=args.strategy,
          verbose=0 if args.quiet else "auto", init_from=args.init_from)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# Inputs, outputs, reporting


@dataclasses.dataclass
class Job:
    """One input file and the files the command will write for it."""

    source: str
    outputs: dict  # role -> path
    # --skip-existing: every output is there already (skip), or only some are (redo the
    # photo, replacing them).
    skip: bool = False
    replace: bool = False
    skipped: tuple | None = None  # a skipped job's (record fields, line to say or None)


def find_inputs(inputs, exclude=None):
    """Image files named by `inputs` (files, or folders searched recursively).

    Returns (files, problems): files as (path, name) pairs, where name is the output name
    without suffix (the file's stem, or its path relative to the folder given, so that a
    folder's structure is mirrored in the output folder); problems as (input, message) pairs
    for missing inputs and folders without images. A file named explicitly is taken whatever
    its suffix (reading it says whether it is an image); in folders, hidden files and folders
    are skipped and files count by suffix (imuge_tf.io.IMAGE_EXTENSIONS). The folder
    `exclude` (the output folder) is not searched: outputs of an earlier run inside an input
    folder are not inputs.
    """
    from imuge_tf.io import IMAGE_EXTENSIONS

    files, problems, seen = [], [], set()
    skipped = os.path.realpath(exclude) if exclude is not None else None

    def add(path, name):
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            files.append((path, name))

    for given in inputs:
        if os.path.isfile(given):
            add(given, os.path.splitext(os.path.basename(given))[0])
        elif os.path.isdir(given):
            found = []
            visited = set()
            for root, dirs, names in os.walk(given, followlinks=True):
                real = os.path.realpath(root)
                if real in visited:  # a symlink loop
                    dirs[:] = []
                    continue
                visited.add(real)
                dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                                 and os.path.realpath(os.path.join(root, d)) != skipped)
                for name in names:
                    if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                        found.append(os.path.join(root, name))
            if not found:
                problems.append((given, f"{given}: no image files in this folder"))
            for path in sorted(found):
                relative = os.path.relpath(path, given)
                add(path, os.path.splitext(relative)[0])
        elif os.path.exists(given):
            problems.append((given, f"{given}: not a regular file or folder"))
        else:
            problems.append((given, f"{given}: no such file or folder"))
    return files, problems


def plan_outputs(files, out_dir, suffixes, force, skip_existing=False):
    """Jobs for `files` with outputs `out_dir/<name><suffix>` for each role in `suffixes`.

    Returns (jobs, problems). A file is refused (a problem, not a job) when one of its outputs
    would overwrite an input (even with force), would be written for another input too, or
    already exists without `force` or `skip_existing`; checking this before any model is
    loaded keeps such mistakes fast and keeps inputs safe. With `skip_existing`, a file whose
    outputs all exist is a job marked `skip`, and one with only some of them a job marked
    `replace` (it is redone and those outputs are overwritten).
    """
    inputs = {os.path.realpath(path) for path, _ in files}
    claimed = {}
    jobs, problems = [], []
    for path, name in files:
        outputs = {} if out_dir is None else {
            role: os.path.join(out_dir, name + suffix) for role, suffix in suffixes.items()}
        problem = None
        for output in outputs.values():
            real = os.path.realpath(output)
            if real in inputs:
                problem = f"{path}: output {output} would overwrite an input; choose another --out"
            elif real in claimed:
                problem = f"{path}: output {output} is also the output of {claimed[real]}"
            elif not force and not skip_existing and os.path.lexists(output):
                problem = f"{path}: output {output} already exists (use --force to overwrite)"
            if problem:
                break
        if problem:
            problems.append((path, problem))
            continue
        for output in outputs.values():
            claimed[os.path.realpath(output)] = path
        job = Job(path, outputs)
        if skip_existing and outputs:
            job.skip = all(os.path.isfile(output) for output in outputs.values())
            job.replace = not job.skip and any(map(os.path.lexists, outputs.values()))
        jobs.append(job)
    return jobs, problems


def remove_leftovers(reporter, out_dir, folders):
    """Removes the temporary files that killed runs left in `folders` (see
    imuge_tf.io.remove_stale_partials) and says how many in one line on stderr."""
    from imuge_tf.io import remove_stale_partials

    removed = [path for folder in sorted(set(folders)) for path in remove_stale_partials(folder)]
    reporter.removed_leftovers = len(removed)
    if removed:
        print(f"removed {len(removed)} temporary file(s) left by interrupted runs in {out_dir}",
              file=sys.stderr, flush=True)


def _output_folders(files, out_dir, suffixes):
    return {os.path.dirname(os.path.join(out_dir, name + suffix))
            for _, name in files for suffix in suffixes.values()}


def _json_ready(value):
    """Numpy scalars and arrays as Python values, NaN and infinities as None."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _json_ready(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _one_line(error):
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


class Reporter:
    """Progress bar, per-file lines and the final report of one command."""

    def __init__(self, args, command):
        self.command = command
        self.json = bool(getattr(args, "json", False))
        # A bar only for a person watching: not in JSON mode, not into a log file.
        self.show_progress = not self.json and sys.stderr.isatty()
        self.records = []
        self.removed_leftovers = 0

    def _write(self, text, stream):
        from tqdm.auto import tqdm

        # tqdm.write keeps the bar intact below the line.
        tqdm.write(text, file=stream)

    def say(self, text):
        """A line for a person (stdout); silent in JSON mode."""
        if not self.json:
            self._write(text, sys.stdout)

    def fail(self, path, message):
        self._write(f"error: {message}", sys.stderr)
        self.records.append({"input": path, "status": "failed", "error": message})

    def done(self, path, **fields):
        self.records.append({"input": path, "status": "ok", **fields})

    def skip(self, path, **fields):
        """A file left as it is (--skip-existing): its outputs were all there already."""
        self.records.append({"input": path, "status": "skipped", **fields})

    @property
    def failed(self):
        return sum(record["status"] == "failed" for record in self.records)

    @property
    def skipped(self):
        return sum(record["status"] == "skipped" for record in self.records)

    def progress(self, items, description):
        from tqdm.auto import tqdm

        return tqdm(items, desc=description, unit="img", file=sys.stderr,
                    disable=not self.show_progress)

    def finish(self, code, summary, text):
        """Prints the summary line (or the JSON report) and returns the exit code."""
        if self.json:
            summary = {**summary, "skipped": self.skipped,
                       "removed_temporary_files": self.removed_leftovers}
            report = {"command": self.command, "exit_code": code, "summary": summary,
                      "files": self.records}
            print(json.dumps(_json_ready(report), indent=2))
        else:
            print(text)
        return code


def load_model(args):
    """The Imuge of --model (a work directory or its inference/ folder, default the shipped
    one) with the key of --key-file ($IMUGE_KEY, else the public demo key, said in one
    warning line on stderr)."""
    import warnings

    from imuge_tf.inference import Imuge
    from imuge_tf.keys import DemoKeyWarning, KeyFileError, read_key_file

    key = None
    if getattr(args, "key_file", None):
        try:
            key = read_key_file(args.key_file)
        except KeyFileError as error:
            raise CommandError(f"--key-file: {_one_line(error)}") from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DemoKeyWarning)
        imuge = Imuge.from_pretrained(key=key) if args.model is None else Imuge.load(
            args.model, key=key)
    if any(issubclass(w.category, DemoKeyWarning) for w in caught):
        print(f"warning: {caught[0].message}", file=sys.stderr, flush=True)
    return imuge


def _make_folder(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise CommandError(f"cannot create output folder {path}: "
                           f"{error.strerror or error}") from None


def run_batch(args, command, suffixes, process, load=None, skipped=None):
    """Runs `process(imuge, image, job, reporter)` on every input; returns the Reporter.

    Problems found before the model loads (missing inputs, outputs that exist) and files that
    fail later are reported one line each; the other files are processed. `load()` gives what
    `process` receives as `imuge` (default: the model of --model). Temporary files of killed
    runs in the output folders are removed first. With --skip-existing, `skipped(job)` gives
    (fields of its record, a line to say or None) for a file whose outputs all exist, or None
    to redo it anyway (default: skip it, its record naming its outputs); the model is not
    loaded when every file is skipped.
    """
    from imuge_tf.io import ImageReadError, ImageWriteError, read_image

    reporter = Reporter(args, command)
    files, problems = find_inputs(args.inputs, exclude=args.out)
    out_dir = args.out
    skip_existing = getattr(args, "skip_existing", False)
    jobs, more = plan_outputs(files, out_dir, suffixes, getattr(args, "force", False),
                              skip_existing)
    if out_dir is not None:
        remove_leftovers(reporter, out_dir, _output_folders(files, out_dir, suffixes))
    for path, message in problems + more:
        reporter.fail(path, message)
    if not jobs:
        return reporter
    if skipped is None:
        def skipped(job):
            return {"outputs": job.outputs}, None
    for job in jobs:
        if job.skip:
            job.skipped = skipped(job)
            # Outputs all there but not usable as they are (e.g. an unreadable report):
            # the photo is redone and they are replaced.
            job.skip = job.skipped is not None
            job.replace = not job.skip
    if out_dir is not None:
        _make_folder(out_dir)
    imuge = None
    if not all(job.skip for job in jobs):
        imuge = load() if load is not None else load_model(args)
    for job in reporter.progress(jobs, command):
        if job.skip:
            fields, line = job.skipped
            reporter.skip(job.source, **fields)
            if line:
                reporter.say(line)
            continue
        try:
            image = read_image(job.source)
            process(imuge, image, job, reporter)
        except (ImageReadError, ImageWriteError) as error:
            reporter.fail(job.source, _one_line(error))
        except Exception as error:  # noqa: BLE001 - one file must not stop the others
            reporter.fail(job.source, f"{job.source}: failed ({type(error).__name__}: "
                                      f"{_one_line(error)})")
    return reporter


def _counted(reporter, verb, out_dir):
    done = len(reporter.records) - reporter.failed - reporter.skipped
    text = f"{verb} {done} of {len(reporter.records)} file(s)"
    if out_dir:
        text += f" into {out_dir}"
    notes = []
    if reporter.skipped:
        notes.append(f"{reporter.skipped} skipped: their outputs exist")
    if reporter.failed:
        notes.append(f"{reporter.failed} failed")
    if notes:
        text += f" ({'; '.join(notes)})"
    return text


def _write_outputs(args, job, files):
    """Writes one photo's outputs ({path: bytes}) as a unit: all of them or none. A photo
    redone by --skip-existing because only some of its outputs were there replaces those."""
    from imuge_tf.io import write_files_atomic

    write_files_atomic(files, force=args.force or job.replace)


# ---------------------------------------------------------------------------------------------
# immunize / verify / recover


def run_immunize(args) -> int:
    from imuge_tf.io import ImageWriteError, encode_image, image_format

    suffix = "." + args.format
    # Refuse a lossy format before anything else happens.
    try:
        image_format("output" + suffix, allow_lossy=args.allow_lossy)
    except ImageWriteError as error:
        reason = str(error).split(": ", 1)[-1]
        raise CommandError(f"--format {args.format}: {reason}") from None

    from imuge_tf.inference import AlreadyImmunizedError

    def process(imuge, image, job, reporter):
        try:
            protected = imuge.immunize(image, force=args.reimmunize)
        except AlreadyImmunizedError:
            reporter.fail(job.source, f"{job.source}: already immunized with this key; "
                                      "immunizing it again would vouch for whatever it shows "
                                      "now (--reimmunize to do it anyway)")
            return
        path = job.outputs["image"]
        _write_outputs(args, job, {path: encode_image(path, protected,
                                                      allow_lossy=args.allow_lossy)})
        reporter.done(job.source, output=path)

    reporter = run_batch(args, "immunize", {"image": suffix}, process,
                         skipped=lambda job: ({"output": job.outputs["image"]}, None))
    code = EXIT_BAD_INPUT if reporter.failed or not reporter.records else EXIT_OK
    summary = {"files": len(reporter.records), "failed": reporter.failed, "out": args.out}
    return reporter.finish(code, summary, _counted(reporter, "immunized", args.out))


VERIFY_SUFFIXES = {"mask": ".mask.png", "overlay": ".overlay.png", "json": ".json"}


def verify_exit_code(verdicts, failed):
    """The exit code of `imuge verify` for the verdicts found and the number of failed files."""
    if failed or not verdicts:
        return EXIT_BAD_INPUT
    if "tampered" in verdicts:
        return EXIT_TAMPERED
    if "not_immunized" in verdicts:
        return EXIT_NOT_IMMUNIZED
    return EXIT_OK


def _remote_model(args):
    """`imuge verify --server URL`: a RemoteImuge on a reachable server (else CommandError)."""
    from imuge_tf.serving_client import RemoteImuge, ServerError, connect

    try:
        client = connect(args.server, model=args.server_model)
        client.check()
    except (ValueError, ServerError) as error:
        raise CommandError(_one_line(error)) from None
    return RemoteImuge(client)


VERDICTS = ("intact", "tampered", "not_immunized")


def _verdict_line(source, verdict, tampered_fraction, note=""):
    share = 100.0 * float(tampered_fraction or 0.0)
    detail = f" ({share:.1f} % of the pixels)" if verdict == "tampered" else ""
    return f"{source}: {verdict}{detail}{note}"


def read_verify_report(job):
    """For --skip-existing: (record fields, line) of a photo from the JSON report an earlier
    `imuge verify` wrote for it, or None when that report is unreadable or has no verdict
    (the photo is then verified again)."""
    try:
        with open(job.outputs["json"], encoding="utf-8") as stream:
            report = json.load(stream)
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("verdict") not in VERDICTS:
        return None
    fields = {key: value for key, value in report.items() if key not in ("input", "outputs")}
    line = _verdict_line(job.source, fields["verdict"], fields.get("tampered_fraction"),
                         " (skipped: from its report)")
    return {**fields, "outputs": job.outputs}, line


def run_verify(args) -> int:
    from imuge_tf.io import encode_image, mask_to_image, overlay

    if args.server and args.model:
        raise CommandError("--server and --model: choose one (the server has its own model)")
    if args.skip_existing and args.out is None:
        raise CommandError("--skip-existing needs --out: without it verify writes no outputs "
                           "that could be skipped")

    def process(imuge, image, job, reporter):
        # A server gets the file's own bytes where it decodes them as read_image does.
        result = imuge.verify_file(job.source, image) if args.server else imuge.verify(image)
        summary = result.to_dict()
        if job.outputs:
            report = {"input": job.source, **summary,
                      "outputs": {k: v for k, v in job.outputs.items() if k != "json"}}
            mask, shown = job.outputs["mask"], job.outputs["overlay"]
            # All three are written as a unit, the report last: a JSON report means the image
            # outputs are complete (--skip-existing reads the verdict back from it).
            _write_outputs(args, job, {
                mask: encode_image(mask, mask_to_image(result.mask)),
                shown: encode_image(shown, overlay(image, result.mask)),
                job.outputs["json"]: (json.dumps(_json_ready(report), indent=2)
                                      + "\n").encode("utf-8")})
        reporter.done(job.source, **summary, outputs=job.outputs)
        reporter.say(_verdict_line(job.source, result.verdict, result.tampered_fraction))

    reporter = run_batch(args, "verify", VERIFY_SUFFIXES, process,
                         load=(lambda: _remote_model(args)) if args.server else None,
                         skipped=read_verify_report)
    # Skipped photos count with the verdicts of their reports: a resumed batch exits as the
    # uninterrupted one would have.
    verdicts = [r["verdict"] for r in reporter.records if r["status"] in ("ok", "skipped")]
    counts = {v: verdicts.count(v) for v in VERDICTS}
    code = verify_exit_code(verdicts, reporter.failed)
    checked = len(verdicts) - reporter.skipped
    text = f"verified {checked} of {len(reporter.records)} file(s)"
    if reporter.skipped:
        text += f", {reporter.skipped} skipped (verdicts from their reports)"
    text += (f": {counts['intact']} intact, {counts['tampered']} tampered, "
             f"{counts['not_immunized']} not immunized, {reporter.failed} failed")
    summary = {"files": len(reporter.records), "failed": reporter.failed, **counts,
               "out": args.out}
    return reporter.finish(code, summary, text)


def run_recover(args) -> int:
    from imuge_tf.io import encode_image

    def process(imuge, image, job, reporter):
        result = imuge.verify(image)
        recovered = imuge.recover(image, result)
        path = job.outputs["image"]
        _write_outputs(args, job, {path: encode_image(path, recovered)})
        reporter.done(job.source, verdict=result.verdict,
                      tampered_fraction=float(result.tampered_fraction), output=path)

    reporter = run_batch(args, "recover", {"image": ".recovered.png"}, process,
                         skipped=lambda job: ({"output": job.outputs["image"]}, None))
    code = EXIT_BAD_INPUT if reporter.failed or not reporter.records else EXIT_OK
    restored = sum(r.get("verdict") == "tampered" for r in reporter.records)
    text = _counted(reporter, "recovered", args.out)
    others = "the other processed ones" if reporter.skipped else "the others"
    text += f"; content restored in {restored} tampered photo(s), {others} copied unchanged"
    summary = {"files": len(reporter.records), "failed": reporter.failed,
               "tampered": restored, "out": args.out}
    return reporter.finish(code, summary, text)


# ---------------------------------------------------------------------------------------------
# tamper


def object_mask(seed, height, width):
    """A random object-shaped tamper mask (bool H x W) from imuge_tf.attacks.masks.

    Drawn on a square canvas (the masks module draws squares), scaled to the photo with
    bilinear interpolation and thresholded, so edges stay smooth on large photos.
    """
    import numpy as np
    import tensorflow as tf

    from imuge_tf.attacks.masks import random_tamper_mask

    side = max(16, min(TAMPER_MASK_CANVAS, max(height, width)))
    square = random_tamper_mask(tf.constant([seed, 0x7A3], tf.int64), side,
                                shapes=("rectangle", "ellipse", "polygon", "blob"))
    scaled = tf.image.resize(square[None], (height, width), method="bilinear")
    return np.asarray(scaled)[0, :, :, 0] >= 0.5


def donor_photo(seed, height, width):
    """A bundled photo (chosen by `seed`) scaled and centre-cropped to height x width."""
    import numpy as np
    from PIL import Image, ImageOps

    from imuge_tf.samples import SAMPLE_PHOTO_NAMES, sample_photo

    name = SAMPLE_PHOTO_NAMES[seed % len(SAMPLE_PHOTO_NAMES)]
    fitted = ImageOps.fit(Image.fromarray(sample_photo(name)), (width, height),
                          Image.Resampling.BICUBIC)
    return np.asarray(fitted, dtype=np.uint8)


def make_tamper(kind, image, mask, donor, seed):
    """`image` (uint8) tampered by `kind` inside `mask`; pixels outside the mask unchanged."""
    import numpy as np
    import tensorflow as tf

    from imuge_tf.attacks.tamper import TAMPERS

    images = tf.convert_to_tensor(image[None].astype(np.float32) / 255.0)
    donors = tf.convert_to_tensor(donor[None].astype(np.float32) / 255.0)
    masks = tf.constant(mask[None, :, :, None], tf.float32)
    seeds = tf.constant([[seed % 2**31, TAMPER_KINDS.index(kind)]], tf.int32)
    tampered = TAMPERS[kind](images, donors, masks, seeds)
    tampered = np.asarray(tf.round(tf.clip_by_value(tampered, 0.0, 1.0) * 255.0))[0]
    # The composite is exact outside a binary mask; copy those pixels anyway so that the
    # untouched area is bit-identical whatever the float rounding.
    return np.where(mask[..., None], tampered.astype(np.uint8), image)


def run_tamper(args) -> int:
    from imuge_tf.io import encode_image, mask_to_image, read_image

    reporter = Reporter(args, "tamper")
    kinds = TAMPER_KINDS if args.kind == "all" else (args.kind,)
    stem = os.path.splitext(os.path.basename(args.input))[0]
    files = [(args.input, stem)]
    suffixes = {}
    for kind in kinds:
        suffixes[kind] = f".{kind}.png"
        suffixes[f"{kind}_mask"] = f".{kind}.true-mask.png"
    jobs, problems = plan_outputs(files, args.out, suffixes, args.force, args.skip_existing)
    remove_leftovers(reporter, args.out, _output_folders(files, args.out, suffixes))
    if problems:
        raise CommandError(problems[0][1])
    job = jobs[0]
    outputs = job.outputs
    listed = [{"kind": kind, "image": outputs[kind], "true_mask": outputs[f"{kind}_mask"]}
              for kind in kinds]
    if job.skip:
        reporter.skip(args.input, outputs=listed)
        text = (f"skipped {args.input}: its {len(kinds)} tampered version(s) and true masks "
                f"are in {args.out} already")
        return reporter.finish(EXIT_OK, {"kinds": list(kinds), "tampered_fraction": None,
                                         "out": args.out}, text)
    image = read_image(args.input)
    height, width = image.shape[:2]
    _make_folder(args.out)
    mask = object_mask(args.seed, height, width)
    donor = donor_photo(args.seed, height, width)
    mask_png = encode_image(outputs[f"{kinds[0]}_mask"], mask_to_image(mask))
    written = {}
    for kind in reporter.progress(kinds, "tamper"):
        tampered = make_tamper(kind, image, mask, donor, args.seed)
        written[outputs[kind]] = encode_image(outputs[kind], tampered)
        written[outputs[f"{kind}_mask"]] = mask_png
    # Every version and its true mask as one unit: all of them or none.
    _write_outputs(args, job, written)
    share = float(mask.mean())
    reporter.done(args.input, tampered_fraction=share, outputs=listed)
    text = (f"wrote {len(kinds)} tampered version(s) of {args.input} into {args.out} "
            f"({100 * share:.1f} % of the pixels tampered; true masks in *.true-mask.png)")
    return reporter.finish(EXIT_OK, {"kinds": list(kinds), "tampered_fraction": share,
                                     "out": args.out}, text)


# ---------------------------------------------------------------------------------------------
# evaluate / demo


def _check_out_folder(path, force, marker):
    """Refuses an output folder that already holds results (its `marker` file), unless
    `force`."""
    if force or not os.path.exists(path):
        return
    if not os.path.isdir(path):
        raise CommandError(f"--out {path} exists and is not a folder")
    if os.path.exists(os.path.join(path, marker)):
        raise CommandError(f"output folder {path} already holds results ({marker}); use "
                           "--force to overwrite them")


def _scalars(mapping, prefix=""):
    """`key: value` lines for the numbers and strings of a nested summary."""
    lines = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            lines += _scalars(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
            shown = f"{value:.4g}" if isinstance(value, float) else value
            lines.append(f"  {prefix}{key}: {shown}")
    return lines


def run_evaluate(args) -> int:
    if not os.path.exists(args.data):
        raise CommandError(f"--data {args.data}: no such file or folder")
    files, problems = find_inputs([args.data])
    if problems:
        raise CommandError(problems[0][1])
    _check_out_folder(args.out, args.force, marker="results.json")
    imuge = load_model(args)
    from imuge_tf import evaluation

    reporter = Reporter(args, "evaluate")
    try:
        summary = evaluation.run_evaluation(
            imuge, [path for path, _ in files], args.out, limit=args.limit, seed=args.seed,
            quick=args.quick, size=args.size, progress=reporter.show_progress)
    except ValueError as error:  # unusable photos or arguments, as run_evaluation says
        raise CommandError(_one_line(error)) from None
    format_table = getattr(evaluation, "format_table", None)
    text = format_table(summary).rstrip("\n") + "\n" if format_table else ""
    text += f"evaluation written to {args.out}"
    if reporter.json:
        print(json.dumps(_json_ready({"command": "evaluate", "exit_code": EXIT_OK,
                                      "out": args.out, "summary": summary}), indent=2))
    else:
        print(text)
    return EXIT_OK


def run_demo(args) -> int:
    _check_out_folder(args.out, args.force, marker="demo.png")
    imuge = load_model(args)
    from imuge_tf import demo

    reporter = Reporter(args, "demo")
    metrics = demo.run_demo(imuge, args.out, progress=reporter.show_progress)
    if reporter.json:
        print(json.dumps(_json_ready({"command": "demo", "exit_code": EXIT_OK,
                                      "out": args.out, "metrics": metrics}), indent=2))
    else:
        print("\n".join([f"demo written to {args.out}", *_scalars(metrics)]))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# export / serve


def run_export(args) -> int:
    from imuge_tf.export import ExportError, check_out_dir, export_model, parse_camera_size

    try:
        # Refuse an output folder or camera size before the (slow) model load.
        check_out_dir(os.path.abspath(args.out), args.force)
        camera_size = parse_camera_size(args.camera_size) if args.camera_size else None
    except (ExportError, ValueError) as error:
        raise CommandError(_one_line(error)) from None
    imuge = load_model(args)
    reporter = Reporter(args, "export")

    def progress(message):
        if reporter.show_progress:
            print(f"export: {message}", file=sys.stderr, flush=True)

    try:
        manifest = export_model(imuge, args.out, force=args.force, int8=not args.no_int8,
                                camera_size=camera_size, progress=progress)
    except ExportError as error:
        raise CommandError(_one_line(error)) from None
    encoder = manifest["encoder"]
    lines = [f"exported to {args.out} (working size {manifest['image_size']})",
             f"  encoder SavedModel: {encoder['saved_model']}"]
    for variant, record in encoder["tflite"].items():
        error = record["residual_error"]
        lines.append(f"  encoder TFLite {variant}: {record['file']} ({record['bytes']:,} bytes; "
                     f"residual error max {error['max_levels']:.3g} / p99 "
                     f"{error['p99_levels']:.2g} levels vs Keras)")
    for variant, record in encoder["withheld"].items():
        lines.append(f"  encoder TFLite {variant}: not shipped ({record['reason']})")
    if "camera" in manifest:
        camera = manifest["camera"]
        lines.append(f"  camera TFLite (whole immunization, uint8 in and out): {camera['file']} "
                     f"({camera['bytes']:,} bytes; within {camera['parity']['max_levels']} "
                     "level(s) of Imuge.immunize)")
    serving = manifest["serving"]
    lines.append(f"  TF Serving model: {serving['version_dir']} (signatures "
                 f"{', '.join(serving['signatures'])}); serving/models.config, "
                 "serving/batching_parameters.txt")
    if reporter.json:
        print(json.dumps(_json_ready({"command": "export", "exit_code": EXIT_OK,
                                      "out": args.out, "manifest": manifest}), indent=2))
    else:
        print("\n".join(lines))
    return EXIT_OK


def run_serve(args) -> int:
    from imuge_tf.serve import serve

    def ready(server, grpc_port):
        text = (f"serving model '{server.model.name}' version {server.model.version} from "
                f"{server.model.path}\n  REST: {server.url}/v1/models/{server.model.name}")
        if grpc_port is not None:
            text += f"\n  gRPC: {server.server_address[0]}:{grpc_port}"
        print(text + "\n(Ctrl-C stops it)", flush=True)

    try:
        serve(args.model_dir, host=args.host, port=args.port, grpc_port=args.grpc_port,
              max_body_bytes=args.max_body_mb * 1024 * 1024, quiet=args.quiet, ready=ready,
              max_instances=args.max_instances)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# The parser


def _bounded_int(low, high=None, meaning=None):
    """An argparse type: an integer in [low, high], with a message naming the bound."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = meaning or f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value
    return parse


_positive_int = _bounded_int(1)
_port = _bounded_int(0, 65535, "a port 0..65535")
_seed = _bounded_int(0)


def _wrap(text):
    # The raw formatter keeps the exit-code table as written; descriptions are wrapped here.
    return textwrap.fill(text, 88)


def _add_common(parser, model=True):
    if model:
        parser.add_argument("--model", default=None, metavar="PATH",
                            help="a training work directory or its inference/ folder "
                                 "(default: the shipped demo weights)")
        parser.add_argument("--key-file", default=None, metavar="FILE",
                            help="the secret key, a file of at most 4 KB (default: "
                                 "$IMUGE_KEY, else the public demo key, which anyone can "
                                 "forge verdicts with)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout (no progress bar)")


def _add_image_command(commands, name, help_text, description, out_required=True,
                       resume_note=""):
    parser = commands.add_parser(name, help=help_text, description=_wrap(description),
                                 epilog=EXIT_CODES_HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, or folders searched recursively for .jpg, .jpeg, "
                             ".png, .bmp, .tif, .tiff, .webp")
    parser.add_argument("--out", required=out_required, default=None, metavar="DIR",
                        help="output folder (created); a folder's structure is mirrored")
    _add_resume_flags(parser, resume_note)
    _add_common(parser)
    return parser


def _add_resume_flags(parser, note=""):
    # Exclusive: --force redoes every photo, --skip-existing keeps the complete ones.
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--force", action="store_true",
                       help="overwrite existing outputs (redo every photo)")
    group.add_argument("--skip-existing", action="store_true",
                       help="resume an interrupted batch: skip a photo whose outputs all "
                            f"exist{note}; a photo with only some of them is redone and "
                            "those are replaced; not with --force")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imuge", description="Immunize photos against tampering; find and undo tampers.",
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    from imuge_tf import __version__

    parser.add_argument("--version", action="version", version=f"imuge {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train_parser = commands.add_parser("train", help="train (or resume) a model")
    add_train_arguments(train_parser)
    train_parser.set_defaults(handler=run_train, runner=run)

    immunize = _add_image_command(
        commands, "immunize", "immunize photos (lossless output)",
        "Writes an immunized copy of each photo as OUT/<name>.<format>. Immunized photos must "
        "be stored losslessly: the hidden information is a few 8-bit levels.")
    immunize.add_argument("--format", default="png", choices=OUTPUT_FORMATS,
                          help="output format (default: png); jpg, jpeg and webp are lossy "
                               "and need --allow-lossy")
    immunize.add_argument("--allow-lossy", action="store_true",
                          help="allow a lossy output format although it destroys the "
                               "immunization")
    immunize.add_argument("--reimmunize", action="store_true",
                          help="immunize photos that already carry this key's immunization "
                               "(refused by default)")
    immunize.set_defaults(handler=run_immunize, runner=run_image_command)

    verify = _add_image_command(
        commands, "verify", "verdict and tamper mask of received photos",
        "Prints intact / tampered / not_immunized for each photo. With --out, also writes "
        "OUT/<name>.mask.png (white = tampered), OUT/<name>.overlay.png (tampered area in red) "
        "and OUT/<name>.json.", out_required=False,
        resume_note=" (its verdict is read back from its .json report, so the exit code is "
                    "that of an uninterrupted run; needs --out)")
    verify.add_argument("--server", default=None, metavar="URL",
                        help="verify on a model server instead of a local model: "
                             "http://HOST:PORT (TF Serving REST or `imuge serve`) or "
                             "grpc://HOST:PORT (TF Serving gRPC); the same outputs and exit "
                             "codes")
    verify.add_argument("--server-model", default="imuge", metavar="NAME",
                        help="the model's name on the server (default: imuge)")
    verify.set_defaults(handler=run_verify, runner=run_image_command)

    recover = _add_image_command(
        commands, "recover", "restore the original content of tampered areas",
        "Verifies each photo and writes OUT/<name>.recovered.png: the tampered areas "
        "reconstructed, everything else unchanged (intact photos are copied as they are).")
    recover.set_defaults(handler=run_recover, runner=run_image_command)

    tamper = commands.add_parser(
        "tamper", help="make demo tampers of an (immunized) photo",
        description=_wrap("Tampers a photo inside a random object-shaped mask and writes "
                    "OUT/<name>.<kind>.png and the true mask OUT/<name>.<kind>.true-mask.png. "
                    "Kinds: donor (content of another photo), colour (a flat colour), clone "
                    "(clone stamp), copy_move, splice (colour-matched donor), removal "
                    "(inpainted from the surroundings)."),
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    tamper.add_argument("input", metavar="INPUT", help="the photo to tamper with")
    tamper.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    tamper.add_argument("--kind", default="donor", choices=(*TAMPER_KINDS, "all"),
                        help="what to paste into the mask (default: donor)")
    tamper.add_argument("--seed", type=_seed, default=0,
                        help="random seed of the mask, donor and colours (default: 0)")
    _add_resume_flags(tamper, " (every kind asked for and its true mask)")
    _add_common(tamper, model=False)
    tamper.set_defaults(handler=run_tamper, runner=run_image_command)

    evaluate = commands.add_parser(
        "evaluate", help="the paper's evaluation protocol on held-out photos",
        description=_wrap("Immunizes, tampers, attacks (JPEG, resizing, cropping, blur, noise), "
                    "verifies and recovers held-out photos at their own size (or, with "
                    "--size, as centred squares); writes table.txt, results.csv, "
                    "results.json and figures/ under OUT."),
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.add_argument("--data", required=True, metavar="DIR",
                          help="folder of held-out photos (searched recursively)")
    evaluate.add_argument("--out", required=True, metavar="DIR", help="output folder")
    evaluate.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                          help="evaluate at most N photos")
    evaluate.add_argument("--quick", action="store_true",
                          help="a few attacks and photos only: a fast check")
    evaluate.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    evaluate.add_argument("--size", type=_positive_int, default=None, metavar="S",
                          help="evaluate centred S x S squares instead of whole photos at "
                               "their own size")
    evaluate.add_argument("--force", action="store_true", help="overwrite earlier results")
    _add_common(evaluate)
    evaluate.set_defaults(handler=run_evaluate, runner=run_image_command)

    demo = commands.add_parser(
        "demo", help="immunize, tamper, verify and recover a sample photo",
        description=_wrap("Runs the whole pipeline on a bundled photo and writes a panel "
                          "figure."),
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--out", default=DEFAULT_DEMO_DIR, metavar="DIR",
                      help=f"output folder (default: {DEFAULT_DEMO_DIR})")
    demo.add_argument("--force", action="store_true", help="overwrite earlier results")
    _add_common(demo)
    demo.set_defaults(handler=run_demo, runner=run_image_command)

    export = commands.add_parser(
        "export", help="export for deployment: TFLite encoder, TF Serving verifier/decoder",
        description=_wrap("Writes the working-scale encoder as TFLite (fp32, fp16, and the "
                          "int8 variants whose residual error passes their gate) and as a "
                          "SavedModel; with --camera-size, the camera model that does the whole "
                          "immunization of a full-size photo; and the verifier + decoder as "
                          "one TF Serving SavedModel with models.config, batching parameters "
                          "and warm-up requests, under OUT (layout in export/README.md)."),
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    export.add_argument("--out", required=True, metavar="DIR", help="output folder")
    export.add_argument("--force", action="store_true",
                        help="replace an earlier export in OUT")
    export.add_argument("--no-int8", action="store_true",
                        help="skip the full-int8 encoder (its calibration is the slow part)")
    export.add_argument("--camera-size", metavar="WIDTHxHEIGHT",
                        help="also write the camera TFLite model for photos of this size: "
                             "uint8 photo in, immunized photo out, builtin ops only")
    _add_common(export)
    export.set_defaults(handler=run_export, runner=run_image_command)

    serve = commands.add_parser(
        "serve", help="a local TF Serving-compatible REST server (development)",
        description=_wrap("Serves an exported verifier + decoder with TF Serving's REST API "
                          "(predict, status, metadata), for development and tests; use "
                          "tensorflow/serving in production (export/README.md)."),
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--model-dir", required=True, metavar="DIR",
                       help="the model folder of an export, holding numbered versions: "
                            "EXPORT/serving/imuge")
    serve.add_argument("--port", type=_port, default=8501,
                       help="REST port (default: 8501; 0 picks a free one)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--grpc-port", type=_port, default=None,
                       help="also serve TF Serving's gRPC Predict on this port")
    serve.add_argument("--max-body-mb", type=_positive_int, default=32, metavar="MB",
                       help="refuse request bodies larger than this (default: 32)")
    serve.add_argument("--max-instances", type=_positive_int, default=16, metavar="N",
                       help="refuse predict requests with more instances (images) "
                            "than this (default: 16)")
    serve.add_argument("--quiet", action="store_true", help="no log line per request")
    serve.set_defaults(handler=run_serve, runner=run_image_command)
    return parser


# ---------------------------------------------------------------------------------------------
# Running


def _known_errors():
    from imuge_tf.config import ConfigError
    from imuge_tf.data import DataError
    from imuge_tf.training import TrainingError

    return (ConfigError, DataError, TrainingError)


def run(handler, args) -> int:
    """Runs a command; bad input becomes one line on stderr and exit code 2."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted; an interrupted training resumes from its work directory",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except _known_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _expected_errors():
    """Exception types that mean bad input, not a bug: they get one line, not a traceback.

    Only modules already imported can have raised their errors, so nothing is imported here
    (importing imuge_tf.data would load TensorFlow just to print an error).
    """
    errors = [CommandError, OSError]
    for module, name in (("imuge_tf.io", "ImageReadError"), ("imuge_tf.io", "ImageWriteError"),
                         ("imuge_tf.inference", "ModelNotFoundError"),
                         ("imuge_tf.config", "ConfigError"), ("imuge_tf.data", "DataError"),
                         ("imuge_tf.training", "TrainingError")):
        loaded = sys.modules.get(module)
        if loaded is not None and hasattr(loaded, name):
            errors.append(getattr(loaded, name))
    return tuple(errors)


def run_image_command(handler, args) -> int:
    """Runs an image command: expected errors are one line and exit 2, bugs exit 4."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return handler(args)
    except KeyboardInterrupt:
        # Every file written so far is complete (writes are atomic); nothing half-written.
        resume = (" (rerun with --skip-existing to resume)"
                  if hasattr(args, "skip_existing") else "")
        print(f"interrupted; the outputs written so far are complete{resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - sorted into expected errors and bugs below
        if isinstance(error, _expected_errors()):
            message = _one_line(error)
            code = EXIT_BAD_INPUT
        else:
            traceback.print_exc()
            message = f"internal error ({type(error).__name__}: {_one_line(error)})"
            code = EXIT_BUG
        print(f"error: {message}", file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps({"command": args.command, "exit_code": code, "error": message},
                             indent=2))
        return code


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.runner(args.handler, args)


def train_main(argv=None) -> int:
    """`python train.py ...`: the same as `imuge train ...`."""
    parser = argparse.ArgumentParser(prog="train.py", description="Train (or resume) Imuge.")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    return run(run_train, args)


if __name__ == "__main__":
    sys.exit(main())
