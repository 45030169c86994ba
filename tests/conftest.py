"""Shared fixtures: real photos from scikit-image, written to real files."""

import os

# Keep TensorFlow quiet and single-process friendly in tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from PIL import Image

from imuge_tf.samples import sample_photo

# Colour photos bundled with scikit-image (no network needed).
PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
               "hubble_deep_field")


def load_photo(name: str) -> np.ndarray:
    """A bundled photo as an H x W x 3 uint8 array."""
    return sample_photo(name)


@pytest.fixture(scope="session")
def photos() -> dict:
    return {name: load_photo(name) for name in PHOTO_NAMES}


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> str:
    """A folder of real image files in several formats, one of them in a subfolder."""
    root = tmp_path_factory.mktemp("photos")
    (root / "nested").mkdir()
    formats = ["jpg", "png", "bmp", "tiff", "webp", "jpg"]
    for i, (name, fmt) in enumerate(zip(PHOTO_NAMES, formats)):
        folder = root / "nested" if i == 0 else root
        Image.fromarray(load_photo(name)).save(folder / f"{name}.{fmt}")
    return str(root)


@pytest.fixture(scope="session")
def untrained_model_dir(tmp_path_factory) -> str:
    """Inference weights of an untrained smoke-config model (with pre-fill on), written the
    way training writes them: fast to make, for tests of plumbing rather than quality."""
    import keras

    from imuge_tf.config import load_config
    from imuge_tf.models.factory import build_imuge
    from imuge_tf.training import save_inference_networks

    keras.utils.set_random_seed(0)  # the same weights in every session
    config = load_config("smoke", ["model.decoder_prefill=true"])
    folder = tmp_path_factory.mktemp("untrained") / "inference"
    save_inference_networks(build_imuge(config), config, str(folder), step=0)
    return str(folder)
