"""The `imuge` command (and `python train.py`, which is `imuge train`).

Subcommands: train, immunize, verify, recover, tamper, evaluate, demo, export, serve. The
image commands take many files and folders per call, show a progress bar, report a file that
fails in one line on stderr and go on with the rest, and end with a summary (or one JSON
document with --json). The exit codes are listed once, in `imuge --help` (errors.py).

Modules, by responsibility:
  parser.py          the argument parsers (no TensorFlow is imported to build them)
  runner.py          main and train_main: errors turned into exit codes, one list for all
  quiet.py           TensorFlow's start-up lines held back unless --verbose
  errors.py          exit codes, CommandError and the errors that are expected
  batch.py           inputs, output planning, the Reporter and the batch loop; load_model
  image_commands.py  immunize, verify, recover, tamper
  model_commands.py  train, evaluate, demo, export, serve

TensorFlow and Keras are imported inside the commands that need them, so `imuge --help` and
errors found before any model is loaded (bad arguments, outputs that already exist) are fast.
"""

from imuge_tf.cli.batch import find_inputs
from imuge_tf.cli.errors import (
    EXIT_BAD_INPUT,
    EXIT_BUG,
    EXIT_CODES_HELP,
    EXIT_INTERRUPTED,
    EXIT_NOT_IMMUNIZED,
    EXIT_OK,
    EXIT_TAMPERED,
    CommandError,
)
from imuge_tf.cli.image_commands import TAMPER_KINDS, verify_exit_code
from imuge_tf.cli.parser import build_parser, build_train_parser
from imuge_tf.cli.runner import main, run, train_main

__all__ = [
    "EXIT_BAD_INPUT", "EXIT_BUG", "EXIT_CODES_HELP", "EXIT_INTERRUPTED", "EXIT_NOT_IMMUNIZED",
    "EXIT_OK", "EXIT_TAMPERED", "TAMPER_KINDS", "CommandError", "build_parser",
    "build_train_parser", "find_inputs", "main", "run", "train_main", "verify_exit_code",
]
