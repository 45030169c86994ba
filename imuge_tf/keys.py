"""The secret key that immunization and verification share.

Everything a verdict rests on is keyed: the block mark's lattice, the self-embedded
reference's whitening and placement (`models/blockmark.py`, `models/reference.py`). Whoever
holds the key can make any photo verify `intact`; whoever does not cannot. The key is, in
this order: the one passed in (`Imuge.from_pretrained(key=...)`, `imuge ... --key-file F`),
the environment variable IMUGE_KEY, or the public demo key, with which anyone can forge
verdicts (a one-line warning says so).
"""

import os
import warnings

KEY_ENV = "IMUGE_KEY"
MAX_KEY_FILE_BYTES = 4096
DEMO_KEY_WARNING = (
    "imuge uses the public demo key: anyone can make a photo verify as intact with it; set "
    f"{KEY_ENV} or pass a key file (--key-file) for verdicts others cannot forge")


class DemoKeyWarning(UserWarning):
    """Immunizing or verifying with the public demo key."""


class KeyFileError(ValueError):
    """A key file that cannot be used (missing, empty, too large)."""


def read_key_file(path: str) -> bytes:
    """The key stored in a file: its bytes, without surrounding whitespace (a trailing newline
    from an editor is not part of the key)."""
    try:
        size = os.path.getsize(path)
        if size > MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"key file {path} is {size} bytes; a key file holds at most "
                               f"{MAX_KEY_FILE_BYTES} (is it the right file?)")
        with open(path, "rb") as handle:
            key = handle.read().strip()
    except OSError as error:
        raise KeyFileError(f"cannot read key file {path}: {error.strerror or error}") from None
    if not key:
        raise KeyFileError(f"key file {path} is empty")
    return key


def resolve_key(key=None):
    """(key, is_demo): `key` if given (bytes or str), else $IMUGE_KEY, else None (the public
    demo key, with a DemoKeyWarning)."""
    if key is None:
        key = os.environ.get(KEY_ENV) or None
    if key is None:
        warnings.warn(DEMO_KEY_WARNING, DemoKeyWarning, stacklevel=3)
        return None, True
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, bytes | bytearray) or not key:
        raise ValueError("a key must be a non-empty str or bytes")
    return bytes(key), False
