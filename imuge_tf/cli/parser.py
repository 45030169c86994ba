"""The argument parsers of `imuge` and `python train.py`.

Building them imports no TensorFlow (the handlers import what they need when they run), so
`imuge --help` and `imuge verify --help` answer at once. Every command has a one-line
description and help for every flag; the exit codes are listed once, in `imuge --help`.
"""

from __future__ import annotations

import argparse

from imuge_tf.cli import image_commands, model_commands
from imuge_tf.cli.errors import EXIT_CODES_HELP, SEE_EXIT_CODES

OUTPUT_FORMATS = ("png", "bmp", "tif", "tiff", "jpg", "jpeg", "webp")
INPUTS_HELP = ("image files, or folders searched recursively for .jpg, .jpeg, .png, .bmp, "
               ".tif, .tiff, .webp")
VERBOSE_HELP = "show TensorFlow's start-up and log lines on stderr (hidden by default)"


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


def _add_verbose(parser, top=False):
    # Accepted before and after the command; below the top level it only ever sets the flag,
    # so `imuge --verbose verify ...` is not undone by the subcommand's default.
    parser.add_argument("--verbose", action="store_true",
                        default=False if top else argparse.SUPPRESS, help=VERBOSE_HELP)


def _command(commands, name, description, handler, interrupted=None):
    """A subcommand with its one-line description and the pointer to the exit codes."""
    parser = commands.add_parser(name, help=description, description=description,
                                 epilog=SEE_EXIT_CODES)
    parser.set_defaults(handler=handler, interrupted=interrupted)
    _add_verbose(parser)
    return parser


def _add_model(parser):
    parser.add_argument("--model", default=None, metavar="PATH",
                        help="a training work directory or its inference/ folder "
                             "(default: the shipped demo weights)")
    parser.add_argument("--key-file", default=None, metavar="FILE",
                        help="the secret key, a file of at most 4 KB (default: $IMUGE_KEY, "
                             "else the public demo key, which anyone can forge verdicts with)")


def _add_json(parser):
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout (no progress bar)")


def _add_resume_flags(parser, note=""):
    # Exclusive: --force redoes every photo, --skip-existing keeps the complete ones.
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--force", action="store_true",
                       help="overwrite existing outputs (redo every photo)")
    group.add_argument("--skip-existing", action="store_true",
                       help="resume an interrupted batch: skip a photo whose outputs all "
                            f"exist{note}; a photo with only some of them is redone and "
                            "those are replaced; not with --force")


def _image_command(commands, name, description, handler, out_help, out_required=True,
                   resume_note="", model=True):
    parser = _command(commands, name, description, handler)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help=INPUTS_HELP)
    parser.add_argument("--out", required=out_required, default=None, metavar="DIR",
                        help=out_help)
    _add_resume_flags(parser, resume_note)
    if model:
        _add_model(parser)
    _add_json(parser)
    return parser


def _add_image_commands(commands):
    immunize = _image_command(
        commands, "immunize", "Write an immunized copy of each photo, stored losslessly.",
        image_commands.run_immunize,
        "output folder (created): OUT/<name>.<format>; a folder's structure is mirrored")
    immunize.add_argument("--format", default="png", choices=OUTPUT_FORMATS,
                          help="output format (default: png); jpg, jpeg and webp are lossy "
                               "and need --allow-lossy")
    immunize.add_argument("--allow-lossy", action="store_true",
                          help="allow a lossy output format although it destroys the "
                               "immunization (the hidden information is a few 8-bit levels)")
    immunize.add_argument("--reimmunize", action="store_true",
                          help="immunize photos that already carry this key's immunization "
                               "(refused by default)")

    verify = _image_command(
        commands, "verify", "Say whether each photo is intact, tampered or not immunized.",
        image_commands.run_verify,
        "also write OUT/<name>.mask.png (white = tampered), OUT/<name>.overlay.png (tampered "
        "area in red) and OUT/<name>.json (created; a folder's structure is mirrored)",
        out_required=False,
        resume_note=" (its verdict is read back from its .json report, so the exit code is "
                    "that of an uninterrupted run; needs --out)")
    verify.add_argument("--server", default=None, metavar="URL",
                        help="verify on a model server instead of a local model: "
                             "http://HOST:PORT (TF Serving REST or `imuge serve`) or "
                             "grpc://HOST:PORT (TF Serving gRPC); the same outputs and exit "
                             "codes")
    verify.add_argument("--server-model", default="imuge", metavar="NAME",
                        help="the model's name on the server (default: imuge)")

    _image_command(
        commands, "recover", "Restore the original content of the tampered areas of photos.",
        image_commands.run_recover,
        "output folder (created): OUT/<name>.recovered.png, the tampered areas reconstructed "
        "and everything else unchanged (intact photos are copied as they are)")

    tamper = _image_command(
        commands, "tamper", "Make demonstration tampers of photos, true masks kept apart.",
        image_commands.run_tamper,
        "folder for the tampered photos (created): OUT/<name>.<kind>.png, nothing else",
        resume_note=" (every kind asked for and its true mask)", model=False)
    tamper.add_argument("--masks", default=None, metavar="DIR",
                        help="folder for the true masks (created): "
                             f"MASKS/<name>.<kind>{image_commands.TRUE_MASK_SUFFIX}, white = "
                             "tampered; outside OUT, so that `imuge verify OUT` reads only "
                             "tampered photos (default: OUT-masks, next to OUT)")
    tamper.add_argument("--kind", default="donor", metavar="KIND",
                        choices=(*image_commands.TAMPER_KINDS, "all"),
                        help="what goes into the object-shaped mask: donor (part of another "
                             "photo), colour (a flat colour), clone (clone stamp), copy_move, "
                             "splice (colour-matched donor), removal (inpainted from the "
                             "surroundings), or all of them (default: donor)")
    tamper.add_argument("--seed", type=_seed, default=0,
                        help="random seed of the masks, donors and colours; with the photo's "
                             "name it fixes each photo's tamper (default: 0)")


def _add_model_commands(commands):
    evaluate = _command(commands, "evaluate",
                        "Run the paper's evaluation protocol on held-out photos.",
                        model_commands.run_evaluate)
    evaluate.add_argument("--data", required=True, metavar="DIR",
                          help="folder of held-out photos (searched recursively)")
    evaluate.add_argument("--out", required=True, metavar="DIR",
                          help="output folder: table.txt, results.csv, results.json, figures/")
    evaluate.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                          help="evaluate at most N photos")
    evaluate.add_argument("--quick", action="store_true",
                          help="a few attacks and photos only: a fast check")
    evaluate.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    evaluate.add_argument("--size", type=_positive_int, default=None, metavar="S",
                          help="evaluate centred S x S squares instead of whole photos at "
                               "their own size")
    evaluate.add_argument("--force", action="store_true", help="overwrite earlier results")
    _add_model(evaluate)
    _add_json(evaluate)

    demo = _command(commands, "demo",
                    "Immunize, tamper, verify and recover a bundled photo; draw the result.",
                    model_commands.run_demo)
    demo.add_argument("--out", default=model_commands.DEFAULT_DEMO_DIR, metavar="DIR",
                      help="output folder (default: imuge-demo); an earlier demo's output "
                           "there is overwritten")
    demo.add_argument("--force", action="store_true",
                      help="write into a folder that holds files of something else")
    _add_model(demo)
    _add_json(demo)

    export = _command(commands, "export",
                      "Export TFLite and TF Serving models for deployment.",
                      model_commands.run_export)
    export.add_argument("--out", required=True, metavar="DIR",
                        help="output folder (layout in export/README.md)")
    export.add_argument("--force", action="store_true",
                        help="replace an earlier export in OUT")
    export.add_argument("--no-int8", action="store_true",
                        help="skip the full-int8 encoder (its calibration is the slow part)")
    export.add_argument("--camera-size", metavar="WIDTHxHEIGHT",
                        help="also write the camera TFLite model for photos of this size: "
                             "uint8 photo in, immunized photo out, builtin ops only")
    _add_model(export)
    _add_json(export)

    serve = _command(commands, "serve",
                     "Serve an export with TF Serving's REST API, for development.",
                     model_commands.run_serve)
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


TRAIN_DESCRIPTION = "Train a model, or resume the run in its work directory."
TRAIN_INTERRUPTED = "an interrupted training resumes from its work directory"


def build_parser() -> argparse.ArgumentParser:
    from imuge_tf import __version__

    parser = argparse.ArgumentParser(
        prog="imuge", description="Immunize photos against tampering; find and undo tampers.",
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"imuge {__version__}",
                        help="print the version and exit")
    _add_verbose(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = _command(commands, "train", TRAIN_DESCRIPTION, model_commands.run_train,
                     interrupted=TRAIN_INTERRUPTED)
    add_train_arguments(train)
    _add_image_commands(commands)
    _add_model_commands(commands)
    return parser


def build_train_parser() -> argparse.ArgumentParser:
    """`python train.py`: the flags of `imuge train`."""
    parser = argparse.ArgumentParser(prog="train.py", description=TRAIN_DESCRIPTION,
                                     epilog="exit codes: those of `imuge train` "
                                            "(see `imuge --help`)")
    add_train_arguments(parser)
    _add_verbose(parser, top=True)
    parser.set_defaults(handler=model_commands.run_train, interrupted=TRAIN_INTERRUPTED,
                        command="train")
    return parser


def subcommands(parser: argparse.ArgumentParser) -> dict:
    """{name: subparser} of a parser built by build_parser."""
    for action in parser._actions:  # argparse has no public way to reach the subparsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}
