"""TensorFlow's start-up lines kept off the terminal (unless `imuge --verbose`).

Importing TensorFlow and initializing its devices print lines from C++ that read like
failures but are not: absl's "All log messages before absl::InitializeLog()", cudart_stub.cc
and "failed call to cuInit" on a machine without a GPU. Some are written before TensorFlow's
logging reads TF_CPP_MIN_LOG_LEVEL, so that variable alone does not stop them. `install()`
makes the first `import tensorflow` of the process (whichever module asks for it first) run
with file descriptor 2 pointed at a temporary file, together with the device initialization
that prints the rest; the text is dropped when the import succeeds and written out when it
fails, so nothing that explains a failure is hidden. Python warnings and the absl and
TensorFlow loggers of TensorFlow and Keras are silenced for the rest of the command. The
tool's own `warning:` and `error:` lines are plain prints and stay.

Only the CLI calls `install()`: importing imuge_tf as a library changes nothing.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import sys
import tempfile
import warnings

# Modules whose Python warnings are noise to a user of the command (a regex on the name of
# the module that warns, as warnings.filterwarnings takes it).
NOISY_MODULES = r"(tensorflow|keras|absl|tf_keras|google\.protobuf|ml_dtypes|h5py)(\.|$)"


def install() -> None:
    """Quietens TensorFlow for the rest of this process (see the module docstring)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", module=NOISY_MODULES)
    if "tensorflow" in sys.modules:  # already imported (a test calling main): only the loggers
        quiet_loggers()
    elif not any(isinstance(finder, _QuietFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())


def quiet_loggers() -> None:
    """absl and TensorFlow's Python loggers down to errors."""
    with contextlib.suppress(ImportError):
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        tf.get_logger().setLevel(logging.ERROR)
        with contextlib.suppress(AttributeError):
            tf.autograph.set_verbosity(0)


@contextlib.contextmanager
def stderr_held_back():
    """Runs the block with file descriptor 2 (C++ and Python output alike) pointed at a
    temporary file; what was written there is dropped if the block succeeds and written to
    stderr if it raises."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as held:
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            _restore(saved)
            held.seek(0)
            sys.stderr.flush()
            with contextlib.suppress(OSError):
                os.write(2, held.read())
            raise
        _restore(saved)


def _restore(saved: int) -> None:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


class _QuietLoader(importlib.abc.Loader):
    """TensorFlow's own loader, run with stderr held back, then the devices initialized."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with stderr_held_back():
            self._loader.exec_module(module)
            # Device initialization prints the CUDA lines; done here, they are held back too.
            module.config.list_physical_devices()
        quiet_loggers()

    def __getattr__(self, name):  # resource readers and the like: the real loader's
        return getattr(self._loader, name)


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` once, as the other finders would, and hands it to _QuietLoader."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)  # one import only; the real finders do the rest
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _QuietLoader(spec.loader)
        return spec
