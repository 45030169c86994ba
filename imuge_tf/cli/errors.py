"""Exit codes, the exit-code table of `imuge --help`, and which errors are expected."""

from __future__ import annotations

import sys

EXIT_OK = 0
EXIT_TAMPERED = 1
EXIT_BAD_INPUT = 2
EXIT_NOT_IMMUNIZED = 3
EXIT_BUG = 4
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes (every command, train included):
  0    success; verify: every photo is intact
  1    verify: at least one photo is tampered
  2    bad arguments or input, or some file failed (one line each on stderr; the other
       files were still processed); verify: takes precedence over 1 and 3, since the
       check is incomplete; train: also a run that diverged
  3    verify: at least one photo is not immunized, and none is tampered
  4    unexpected internal error (a bug: the traceback is printed)
  130  interrupted
"""
SEE_EXIT_CODES = "exit codes: see `imuge --help`"


class CommandError(Exception):
    """An expected failure of a whole command: one line on stderr, exit code 2."""


# Errors that mean bad input or a broken environment, not a bug: one line, exit code 2.
# Named by module so that none is imported to be checked: only a module already imported
# can have raised its error, and importing imuge_tf.data, say, would load TensorFlow just to
# print a message.
EXPECTED_ERRORS = (
    ("imuge_tf.io", "ImageReadError"),
    ("imuge_tf.io", "ImageWriteError"),
    ("imuge_tf.inference", "ModelNotFoundError"),
    ("imuge_tf.keys", "KeyFileError"),
    ("imuge_tf.config", "ConfigError"),
    ("imuge_tf.data", "DataError"),
    ("imuge_tf.training", "TrainingError"),
    ("imuge_tf.export", "ExportError"),
)


def expected_errors() -> tuple:
    """The exception types of EXPECTED_ERRORS that are loaded, with CommandError and OSError."""
    errors = [CommandError, OSError]
    for module, name in EXPECTED_ERRORS:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(getattr(loaded, name, None), type):
            errors.append(getattr(loaded, name))
    return tuple(errors)


def one_line(error) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
