"""Photos that ship with scikit-image: the default data when no folder is given."""

import numpy as np

# Colour photos of scikit-image's data module that need no download.
SAMPLE_PHOTO_NAMES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "colorwheel",
)


def sample_photo(name: str) -> np.ndarray:
    """One bundled photo as an H x W x 3 uint8 array."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def sample_photos(names=SAMPLE_PHOTO_NAMES) -> list:
    """The bundled photos, in a fixed order."""
    return [sample_photo(name) for name in names]
