"""The `imuge` command (and `python train.py`, which is `imuge train`).

Exit codes: 0 success, 1 unexpected internal error, 2 bad input (arguments, config, data,
work directory), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


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


def run_train(args) -> int:
    from imuge_tf.config import load_config
    from imuge_tf.samples import sample_photos
    from imuge_tf.training import train

    config = load_config(args.config, args.overrides)
    workdir = args.workdir or os.path.join("runs", config.name)
    images = args.data if args.data is not None else sample_photos()
    train(config, images, workdir, strategy_name=args.strategy,
          verbose=0 if args.quiet else "auto")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imuge", description="Immunize photos against tampering; find and undo tampers.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train_parser = commands.add_parser("train", help="train (or resume) a model")
    add_train_arguments(train_parser)
    train_parser.set_defaults(handler=run_train)
    return parser


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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run(args.handler, args)


def train_main(argv=None) -> int:
    """`python train.py ...`: the same as `imuge train ...`."""
    parser = argparse.ArgumentParser(prog="train.py", description="Train (or resume) Imuge.")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    return run(run_train, args)


if __name__ == "__main__":
    sys.exit(main())
