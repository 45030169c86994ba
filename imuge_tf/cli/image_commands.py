"""The image commands: immunize, verify, recover and tamper, each a batch over many photos."""

from __future__ import annotations

import json
import os

from imuge_tf.cli.batch import in_folder, json_ready, run_batch, write_outputs
from imuge_tf.cli.errors import (
    EXIT_BAD_INPUT,
    EXIT_NOT_IMMUNIZED,
    EXIT_OK,
    EXIT_TAMPERED,
    CommandError,
    one_line,
)

VERDICTS = ("intact", "tampered", "not_immunized")
VERIFY_SUFFIXES = {"mask": ".mask.png", "overlay": ".overlay.png", "json": ".json"}
# Names of imuge_tf.attacks.tamper.TAMPERS, repeated here so that parsing imports no TensorFlow
# (a test checks that both lists agree).
TAMPER_KINDS = ("donor", "colour", "clone", "copy_move", "splice", "removal")
TRUE_MASK_SUFFIX = ".true-mask.png"


def _whole_batch_code(reporter):
    return EXIT_BAD_INPUT if reporter.failed or not reporter.records else EXIT_OK


# ---------------------------------------------------------------------------------------------
# immunize


def run_immunize(args) -> int:
    from imuge_tf.io import ImageWriteError, encode_image, image_format

    suffix = "." + args.format
    # Refuse a lossy format before anything else happens.
    try:
        image_format("output" + suffix, allow_lossy=args.allow_lossy)
    except ImageWriteError as error:
        reason = str(error).split(": ", 1)[-1]
        raise CommandError(f"--format {args.format}: {reason}") from None

    def process(imuge, image, job, reporter):
        from imuge_tf.inference import AlreadyImmunizedError

        try:
            protected = imuge.immunize(image, force=args.reimmunize)
        except AlreadyImmunizedError:
            reporter.fail(job.source, f"{job.source}: already immunized with this key; "
                                      "immunizing it again would vouch for whatever it shows "
                                      "now (--reimmunize to do it anyway)")
            return
        path = job.outputs["image"]
        write_outputs(args, job, {path: encode_image(path, protected,
                                                     allow_lossy=args.allow_lossy)})
        reporter.done(job.source, output=path)

    reporter = run_batch(args, "immunize", in_folder(args.out, {"image": suffix}), process,
                         skipped=lambda job: ({"output": job.outputs["image"]}, None))
    summary = {"files": len(reporter.records), "failed": reporter.failed, "out": args.out}
    return reporter.finish(_whole_batch_code(reporter), summary,
                           reporter.counted("immunized", args.out))


# ---------------------------------------------------------------------------------------------
# verify


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
        raise CommandError(one_line(error)) from None
    return RemoteImuge(client)


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
            write_outputs(args, job, {
                mask: encode_image(mask, mask_to_image(result.mask)),
                shown: encode_image(shown, overlay(image, result.mask)),
                job.outputs["json"]: (json.dumps(json_ready(report), indent=2)
                                      + "\n").encode("utf-8")})
        reporter.done(job.source, **summary, outputs=job.outputs)
        reporter.say(_verdict_line(job.source, result.verdict, result.tampered_fraction))

    reporter = run_batch(args, "verify", in_folder(args.out, VERIFY_SUFFIXES), process,
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


# ---------------------------------------------------------------------------------------------
# recover


def run_recover(args) -> int:
    from imuge_tf.io import encode_image

    def process(imuge, image, job, reporter):
        result = imuge.verify(image)
        recovered = imuge.recover(image, result)
        path = job.outputs["image"]
        write_outputs(args, job, {path: encode_image(path, recovered)})
        reporter.done(job.source, verdict=result.verdict,
                      tampered_fraction=float(result.tampered_fraction), output=path)

    reporter = run_batch(args, "recover", in_folder(args.out, {"image": ".recovered.png"}),
                         process, skipped=lambda job: ({"output": job.outputs["image"]}, None))
    restored = sum(r.get("verdict") == "tampered" for r in reporter.records)
    text = reporter.counted("recovered", args.out)
    others = "the other processed ones" if reporter.skipped else "the others"
    text += f"; content restored in {restored} tampered photo(s), {others} copied unchanged"
    summary = {"files": len(reporter.records), "failed": reporter.failed,
               "tampered": restored, "out": args.out}
    return reporter.finish(_whole_batch_code(reporter), summary, text)


# ---------------------------------------------------------------------------------------------
# tamper


def default_masks_folder(out):
    """Where `imuge tamper` puts the true masks without --masks: OUT-masks, next to OUT."""
    trimmed = os.path.normpath(out)
    if os.path.basename(trimmed) in ("", ".", ".."):
        trimmed = os.path.abspath(trimmed)
    return trimmed + "-masks"


def _inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def run_tamper(args) -> int:
    from imuge_tf.io import encode_image, mask_to_image

    masks = args.masks if args.masks is not None else default_masks_folder(args.out)
    if _inside(masks, args.out):
        raise CommandError(f"--masks {masks} is inside --out {args.out}: `imuge verify "
                           f"{args.out}` would read the true masks as photos; choose a folder "
                           "outside it")
    kinds = TAMPER_KINDS if args.kind == "all" else (args.kind,)
    targets = {}
    for kind in kinds:
        targets[kind] = (args.out, f".{kind}.png")
        targets[f"{kind}_mask"] = (masks, f".{kind}{TRUE_MASK_SUFFIX}")

    def listed(job):
        return [{"kind": kind, "image": job.outputs[kind],
                 "true_mask": job.outputs[f"{kind}_mask"]} for kind in kinds]

    def process(_, image, job, reporter):
        from imuge_tf.attacks import cases

        mask, donor, seed = cases.tamper_case(image, args.seed, job.name)
        mask_png = encode_image(job.outputs[f"{kinds[0]}_mask"], mask_to_image(mask))
        written = {}
        for kind in kinds:
            tampered = cases.make_tamper(kind, image, mask, donor, seed)
            written[job.outputs[kind]] = encode_image(job.outputs[kind], tampered)
            written[job.outputs[f"{kind}_mask"]] = mask_png
        # Every version and its true mask as one unit: all of them or none.
        write_outputs(args, job, written)
        reporter.done(job.source, tampered_fraction=float(mask.mean()), outputs=listed(job))

    reporter = run_batch(args, "tamper", targets, process, load=lambda: None,
                         skipped=lambda job: ({"outputs": listed(job)}, None))
    text = reporter.counted("tampered", args.out)
    text += (f": {len(kinds)} version(s) of each ({', '.join(kinds)}); their true masks in "
             f"{masks}")
    summary = {"files": len(reporter.records), "failed": reporter.failed,
               "kinds": list(kinds), "out": args.out, "masks": masks}
    return reporter.finish(_whole_batch_code(reporter), summary, text)

