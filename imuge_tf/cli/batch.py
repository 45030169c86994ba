"""Running one command over many photos: inputs, output planning, reporting, the batch loop.

A batch finds its input files (files and folders, searched recursively), plans every output
before any model is loaded (so that a mistake such as an existing output is reported at
once), removes the temporary files of killed runs, then processes each photo, reporting a
photo that fails in one line and going on with the rest.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys

from imuge_tf.cli.errors import CommandError, one_line


@dataclasses.dataclass
class Job:
    """One input file and the files the command will write for it."""

    source: str
    name: str  # the output name without suffix (see find_inputs)
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
    are skipped and files count by suffix (imuge_tf.io.IMAGE_EXTENSIONS). The folders in
    `exclude` (one path or several: the output folders) are not searched: outputs of an
    earlier run inside an input folder are not inputs.
    """
    from imuge_tf.io import IMAGE_EXTENSIONS

    if exclude is None:
        exclude = ()
    elif isinstance(exclude, (str, os.PathLike)):
        exclude = (exclude,)
    skipped = {os.path.realpath(path) for path in exclude if path is not None}
    files, problems, seen = [], [], set()

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
                                 and os.path.realpath(os.path.join(root, d)) not in skipped)
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


def in_folder(folder, suffixes):
    """Output targets {role: (folder, suffix)} for roles that all go to one folder."""
    return {role: (folder, suffix) for role, suffix in suffixes.items()}


def plan_outputs(files, targets, force, skip_existing=False):
    """Jobs for `files` with outputs `<folder>/<name><suffix>` for each role of `targets`
    ({role: (folder, suffix)}; a folder of None means no outputs).

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
        outputs = {role: os.path.join(folder, name + suffix)
                   for role, (folder, suffix) in targets.items() if folder is not None}
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
        job = Job(path, name, outputs)
        if skip_existing and outputs:
            job.skip = all(os.path.isfile(output) for output in outputs.values())
            job.replace = not job.skip and any(map(os.path.lexists, outputs.values()))
        jobs.append(job)
    return jobs, problems


def output_folders(files, targets):
    """Every folder the outputs of `files` go to (subfolders mirror the inputs')."""
    return {os.path.dirname(os.path.join(folder, name + suffix))
            for _, name in files for folder, suffix in targets.values() if folder is not None}


def remove_leftovers(reporter, where, folders):
    """Removes the temporary files that killed runs left in `folders` (see
    imuge_tf.io.remove_stale_partials) and says how many in one line on stderr, naming the
    output folders as `where`."""
    from imuge_tf.io import remove_stale_partials

    removed = [path for folder in sorted(set(folders)) for path in remove_stale_partials(folder)]
    reporter.removed_leftovers = len(removed)
    if removed:
        print(f"removed {len(removed)} temporary file(s) left by interrupted runs in {where}",
              file=sys.stderr, flush=True)


def json_ready(value):
    """Numpy scalars and arrays as Python values, NaN and infinities as None."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return json_ready(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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

    def counted(self, verb, out_dir):
        """E.g. 'immunized 3 of 5 file(s) into out (1 skipped: their outputs exist; 1 failed)'."""
        done = len(self.records) - self.failed - self.skipped
        text = f"{verb} {done} of {len(self.records)} file(s)"
        if out_dir:
            text += f" into {out_dir}"
        notes = []
        if self.skipped:
            notes.append(f"{self.skipped} skipped: their outputs exist")
        if self.failed:
            notes.append(f"{self.failed} failed")
        if notes:
            text += f" ({'; '.join(notes)})"
        return text

    def finish(self, code, summary, text):
        """Prints the summary line (or the JSON report) and returns the exit code."""
        if self.json:
            summary = {**summary, "skipped": self.skipped,
                       "removed_temporary_files": self.removed_leftovers}
            report = {"command": self.command, "exit_code": code, "summary": summary,
                      "files": self.records}
            print(json.dumps(json_ready(report), indent=2))
        else:
            print(text)
        return code


def print_result(args, command, fields, text):
    """A whole-run command's result: `text` for a person, or one JSON document with --json."""
    if getattr(args, "json", False):
        print(json.dumps(json_ready({"command": command, "exit_code": 0, **fields}), indent=2))
    else:
        print(text)


def load_model(args):
    """The Imuge of --model (a work directory or its inference/ folder, default the shipped
    one) with the key of --key-file ($IMUGE_KEY, else the public demo key, said in one
    warning line on stderr). Commands call it as `batch.load_model` so that tests can put a
    prepared model in its place."""
    import warnings

    from imuge_tf.inference import Imuge
    from imuge_tf.keys import DemoKeyWarning, KeyFileError, read_key_file

    key = None
    if getattr(args, "key_file", None):
        try:
            key = read_key_file(args.key_file)
        except KeyFileError as error:
            raise CommandError(f"--key-file: {one_line(error)}") from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DemoKeyWarning)
        imuge = Imuge.from_pretrained(key=key) if args.model is None else Imuge.load(
            args.model, key=key)
    if any(issubclass(w.category, DemoKeyWarning) for w in caught):
        print(f"warning: {caught[0].message}", file=sys.stderr, flush=True)
    return imuge


def make_folder(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise CommandError(f"cannot create output folder {path}: "
                           f"{error.strerror or error}") from None


def write_outputs(args, job, files):
    """Writes one photo's outputs ({path: bytes}) as a unit: all of them or none. A photo
    redone by --skip-existing because only some of its outputs were there replaces those."""
    from imuge_tf.io import write_files_atomic

    write_files_atomic(files, force=args.force or job.replace)


def run_batch(args, command, targets, process, load=None, skipped=None):
    """Runs `process(imuge, image, job, reporter)` on every input; returns the Reporter.

    `targets` are the outputs of each photo, {role: (folder, suffix)} (see in_folder).
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
    # Output folders in the order given (--out first), each once.
    folders = list(dict.fromkeys(folder for folder, _ in targets.values() if folder is not None))
    files, problems = find_inputs(args.inputs, exclude=folders)
    skip_existing = getattr(args, "skip_existing", False)
    jobs, more = plan_outputs(files, targets, getattr(args, "force", False), skip_existing)
    remove_leftovers(reporter, " and ".join(map(str, folders)), output_folders(files, targets))
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
    for folder in folders:
        make_folder(folder)
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
            reporter.fail(job.source, one_line(error))
        except Exception as error:  # noqa: BLE001 - one file must not stop the others
            reporter.fail(job.source, f"{job.source}: failed ({type(error).__name__}: "
                                      f"{one_line(error)})")
    return reporter
