"""Running a parsed command: TensorFlow kept quiet, and one way of turning errors into exit
codes for every command (expected errors: one line, exit 2; bugs: a traceback, exit 4)."""

from __future__ import annotations

import json
import sys
import traceback

from imuge_tf.cli import quiet
from imuge_tf.cli.errors import (
    EXIT_BAD_INPUT,
    EXIT_BUG,
    EXIT_INTERRUPTED,
    expected_errors,
    one_line,
)
from imuge_tf.cli.parser import build_parser, build_train_parser


def run(handler, args) -> int:
    """Runs `handler(args)` and returns its exit code, or the code of what stopped it."""
    try:
        return handler(args)
    except KeyboardInterrupt:
        note = getattr(args, "interrupted", None)
        if note is None:
            # Every file written so far is complete (writes are atomic); nothing half-written.
            resume = (" (rerun with --skip-existing to resume)"
                      if hasattr(args, "skip_existing") else "")
            note = f"the outputs written so far are complete{resume}"
        print(f"interrupted; {note}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - sorted into expected errors and bugs below
        if isinstance(error, expected_errors()):
            message = one_line(error)
            code = EXIT_BAD_INPUT
        else:
            traceback.print_exc()
            message = f"internal error ({type(error).__name__}: {one_line(error)})"
            code = EXIT_BUG
        print(f"error: {message}", file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps({"command": args.command, "exit_code": code, "error": message},
                             indent=2))
        return code


def _start(args) -> int:
    if not args.verbose:
        quiet.install()
    return run(args.handler, args)


def main(argv=None) -> int:
    """`imuge ...`."""
    return _start(build_parser().parse_args(argv))


def train_main(argv=None) -> int:
    """`python train.py ...`: the same as `imuge train ...`."""
    return _start(build_train_parser().parse_args(argv))
