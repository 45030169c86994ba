"""Training input pipeline: image folders -> batches of crops, donor crops, tamper masks, seeds.

Photo collections here are small (tens to a few hundred photos), so every file is decoded once,
host-side with Pillow, scaled down to a working size and kept in memory as uint8. The tf.data
stream then draws random crops from that memory: nothing is decoded again per epoch.

Every random choice (which image, crop, flip, donor, mask, attack seed) is stateless and derived
from `seed` and the element's position in the stream, so a stream is reproducible for a seed,
different for another seed, and pipelines of a distributed run split one global stream.
"""

import concurrent.futures
import dataclasses
import os

import numpy as np
import tensorflow as tf
from PIL import ExifTags, Image, ImageOps

from imuge_tf.attacks.masks import DEFAULT_SHAPES, random_tamper_mask, validate_mask_arguments
from imuge_tf.io import IMAGE_EXTENSIONS, to_rgb

# Show a progress bar only when loading takes noticeable time.
PROGRESS_MIN_FILES = 32
# Loaded images start at multiples of this many bytes in the shared buffer: an aligned slice of
# a tensor's first dimension is a view in TensorFlow, not a copy.
_ALIGN_BYTES = 64


class DataError(ValueError):
    """Training data that cannot be used: a missing folder, no images, nothing readable."""


@dataclasses.dataclass
class ReadStats:
    """What loading found: files found, images loaded, files skipped (unreadable) and why."""

    found: int = 0
    loaded: int = 0
    skipped: int = 0
    skipped_files: list = dataclasses.field(default_factory=list)
    errors: dict = dataclasses.field(default_factory=dict)

    def summary(self):
        """One line for logs, e.g. 'loaded 72 of 73 images (1 skipped: a.jpg)'."""
        text = f"loaded {self.loaded} of {self.found} images"
        if self.skipped:
            names = ", ".join(os.path.basename(p) for p in self.skipped_files[:5])
            more = ", ..." if self.skipped > 5 else ""
            text += f" ({self.skipped} skipped: {names}{more})"
        return text


def find_images(data_dir):
    """Image files under `data_dir`, recursively, as a sorted list of paths.

    Files count by extension (IMAGE_EXTENSIONS, any case); hidden files and folders (names
    starting with '.', such as macOS '._photo.jpg' companions) are ignored.
    Raises DataError when the folder is missing, is not a folder, or holds no images.
    """
    data_dir = os.fspath(data_dir)
    if not os.path.exists(data_dir):
        raise DataError(f"image folder not found: {data_dir}")
    if not os.path.isdir(data_dir):
        raise DataError(f"not a folder: {data_dir}")
    paths = []
    seen = set()
    for root, dirs, files in os.walk(data_dir, followlinks=True):
        # Linked folders are followed, but each real folder is read once (no symlink loops).
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(os.path.join(root, name))
    if not paths:
        kinds = ", ".join(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
        raise DataError(f"no images ({kinds}) in folder: {data_dir}")
    return sorted(paths)


def _default_load_size(image_size):
    return int(round(1.5 * image_size))


def _check_sizes(image_size, load_size):
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise ValueError(f"image_size must be an int, got {image_size!r}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if load_size is None:
        return int(image_size), _default_load_size(image_size)
    if isinstance(load_size, bool) or not isinstance(load_size, (int, np.integer)):
        raise ValueError(f"load_size must be an int or None, got {load_size!r}")
    if load_size < image_size:
        raise ValueError(f"load_size ({load_size}) must be >= image_size ({image_size})")
    return int(image_size), int(load_size)


def _target_size(width, height, image_size, load_size):
    """(width, height) after scaling the shorter side into [image_size, load_size], or None."""
    short = min(width, height)
    if short > load_size:
        target = load_size
    elif short < image_size:
        target = image_size
    else:
        return None
    scale = target / short
    if width <= height:
        return target, max(target, round(height * scale))
    return max(target, round(width * scale)), target


def _resize(image, size):
    """`image` resized to `size` (width, height); unchanged when size is None or its size."""
    if size is None or image.size == tuple(size):
        return image
    if size[0] < image.width:
        return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image.resize(size, Image.Resampling.BICUBIC)


# EXIF orientations that turn the stored image by 90 degrees (width and height swap).
_QUARTER_TURNS = (5, 6, 7, 8)


def load_image(path, image_size, load_size=None):
    """Decodes one image file to an oriented RGB uint8 array, scaled for training.

    EXIF orientation is applied; CMYK, palette, alpha, greyscale and 16-bit images become 8-bit
    RGB. The shorter side is scaled down to `load_size` (default 1.5 x image_size) when longer,
    up to `image_size` when shorter, and kept otherwise. Raises whatever Pillow raises for a file
    it cannot read.
    """
    image_size, load_size = _check_sizes(image_size, load_size)
    with Image.open(path) as image:
        turned = image.getexif().get(ExifTags.Base.Orientation, 1) in _QUARTER_TURNS
        width, height = image.size[::-1] if turned else image.size
        # The final size comes from the original one: the draft below rounds sizes up.
        size = _target_size(width, height, image_size, load_size)
        if image.format == "JPEG" and size is not None and size[0] < width:
            # Let the JPEG decoder scale down by up to 8x in the DCT domain: much faster on
            # large photos, and it keeps both sides at least as large as requested.
            image.draft(None, size[::-1] if turned else size)
        image = ImageOps.exif_transpose(image)
        image = _resize(to_rgb(image), size)
        return np.asarray(image, dtype=np.uint8).copy()


def prepare_array(array, image_size, load_size=None):
    """An already decoded image (uint8 HxW, HxWx1, HxWx3 or HxWx4) as RGB scaled for training."""
    image_size, load_size = _check_sizes(image_size, load_size)
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"images must be uint8 arrays, got {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    elif array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.ndim != 3 or array.shape[-1] != 3 or min(array.shape[:2]) < 1:
        raise ValueError(f"images must be H x W x 3 arrays, got shape {array.shape}")
    size = _target_size(array.shape[1], array.shape[0], image_size, load_size)
    if size is None:
        return np.ascontiguousarray(array)
    return np.asarray(_resize(Image.fromarray(array), size), dtype=np.uint8)


def load_images(paths, image_size, load_size=None, *, workers=None, progress=None):
    """Decodes files in parallel with `load_image`; unreadable files are skipped and counted.

    Returns (images, stats): the loaded arrays in the order of `paths`, and a ReadStats.
    A progress bar is shown for PROGRESS_MIN_FILES files or more when writing to a terminal
    (progress=True forces it, False hides it). Raises DataError when nothing could be loaded.
    """
    image_size, load_size = _check_sizes(image_size, load_size)
    paths = [os.fspath(p) for p in paths]
    stats = ReadStats(found=len(paths))
    if not paths:
        raise DataError("no image files to load")

    def read(path):
        try:
            return load_image(path, image_size, load_size), None
        except Exception as error:  # noqa: BLE001 - Pillow raises many types for bad files
            return None, f"{type(error).__name__}: {error}"

    if workers is None:
        workers = min(16, (os.cpu_count() or 1) + 4)
    if progress is None:
        disable = None if len(paths) >= PROGRESS_MIN_FILES else True
    else:
        disable = not progress
    images = []
    # Pillow releases the GIL while decoding and resizing, so threads load in parallel.
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(read, paths)
        try:
            from tqdm.auto import tqdm

            results = tqdm(
                results, total=len(paths), desc="loading images", unit="img", disable=disable
            )
        except ImportError:
            pass
        for path, (image, error) in zip(paths, results):
            if image is None:
                stats.skipped_files.append(path)
                stats.errors[path] = error
            else:
                images.append(image)
    stats.loaded = len(images)
    stats.skipped = len(stats.skipped_files)
    if not images:
        first = stats.skipped_files[0]
        raise DataError(
            f"none of {stats.found} image files could be read (e.g. {first}: {stats.errors[first]})"
        )
    return images, stats


def _image_store(images):
    """Packs images of different sizes into one flat uint8 tensor plus offsets and shapes."""
    offsets, heights, widths = [], [], []
    position = 0
    for image in images:
        offsets.append(position)
        heights.append(image.shape[0])
        widths.append(image.shape[1])
        position += -(-image.size // _ALIGN_BYTES) * _ALIGN_BYTES
    buffer = np.zeros(position, np.uint8)
    for image, offset in zip(images, offsets):
        buffer[offset : offset + image.size] = image.reshape(-1)
    return (
        tf.constant(buffer),
        tf.constant(offsets, tf.int64),
        tf.constant(heights, tf.int64),
        tf.constant(widths, tf.int64),
    )


def _seed_pair(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}")
    # Any int (negative, huge) maps to a valid int64 stateless seed.
    return tf.constant([int(seed) % (2**63), 0x1A5EED], tf.int64)


def make_dataset(
    images_or_dir,
    *,
    image_size,
    batch_size,
    seed=0,
    load_size=None,
    mask_area_range=(0.10, 0.30),
    mask_largest_range=(0.06, 0.16),
    mask_max_regions=4,
    mask_shapes=DEFAULT_SHAPES,
    input_context=None,
    repeat=True,
):
    """The training stream: batches of crops, donor crops, tamper masks and attack seeds.

    Args:
      images_or_dir: a folder of images (searched recursively) or a list of uint8 arrays.
      image_size: side S of the square crops.
      batch_size: the GLOBAL batch size; with `input_context` each pipeline batches
        `input_context.get_per_replica_batch_size(batch_size)`.
      seed: int; the whole stream is a function of it (use e.g. base_seed + epoch on resume).
      load_size: shorter side images are scaled to in memory (default 1.5 x image_size).
      mask_*: arguments of `imuge_tf.attacks.masks.random_tamper_mask`.
      input_context: a tf.distribute.InputContext or None. Pipeline p of P takes elements
        p, p + P, p + 2P, ... of the global stream, so pipelines draw different samples.
      repeat: True for an endless stream; False for one pass in which every image is drawn
        once (split among pipelines), ending with the last full batch.

    Each element is a dict of batched tensors:
      "image": float32 [B, S, S, 3] in [0, 1], a random crop with random horizontal flip;
      "donor": float32 [B, S, S, 3], a crop of another image (when there are several), for
        content-replacement tampers;
      "mask": float32 [B, S, S, 1], binary tamper mask, 1 = tampered;
      "seed": int32 [B, 2], a per-sample stateless seed for the attack layer.
    Images are shuffled by a fresh random permutation for every pass over them.

    Returns (dataset, ReadStats). Raises DataError for unusable data (no folder, no readable
    image, too few images for one batch when repeat is False) and ValueError for bad arguments.
    """
    image_size, load_size = _check_sizes(image_size, load_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise ValueError(f"batch_size must be an int, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    mask_args = validate_mask_arguments(
        image_size, mask_area_range, mask_largest_range, mask_max_regions, mask_shapes
    )[1:]
    base_seed = _seed_pair(seed)

    if isinstance(images_or_dir, (str, os.PathLike)):
        images, stats = load_images(find_images(images_or_dir), image_size, load_size)
    else:
        images = [prepare_array(a, image_size, load_size) for a in images_or_dir]
        if not images:
            raise DataError("make_dataset got an empty list of images")
        stats = ReadStats(found=len(images), loaded=len(images))

    if input_context is None:
        pipeline, pipelines, local_batch = 0, 1, int(batch_size)
    else:
        pipeline = int(input_context.input_pipeline_id)
        pipelines = int(input_context.num_input_pipelines)
        local_batch = int(input_context.get_per_replica_batch_size(batch_size))

    count = len(images)
    if not repeat and len(range(pipeline, count, pipelines)) < local_batch:
        raise DataError(
            f"{count} images over {pipelines} input pipeline(s) make no full batch of "
            f"{local_batch}; use repeat=True or a smaller batch"
        )

    element = _element_fn(images, image_size, base_seed, mask_args)
    if repeat:
        positions = tf.data.Dataset.counter(start=pipeline, step=pipelines, dtype=tf.int64)
    else:
        positions = tf.data.Dataset.range(pipeline, count, pipelines, output_type=tf.int64)
    dataset = positions.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(
        local_batch,
        drop_remainder=True,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return dataset.prefetch(tf.data.AUTOTUNE), stats


def _element_fn(images, image_size, base_seed, mask_args):
    """The map function: global stream position (int64) -> one sample dict."""
    buffer, offsets, heights, widths = _image_store(images)
    count = len(images)
    area_range, largest_range, max_regions, shapes = mask_args
    size = image_size
    order_root = tf.random.experimental.stateless_fold_in(base_seed, tf.constant(1, tf.int64))
    sample_root = tf.random.experimental.stateless_fold_in(base_seed, tf.constant(2, tf.int64))

    def crop(index, seed):
        height, width = heights[index], widths[index]
        pixels = tf.slice(buffer, [offsets[index]], [height * width * 3])
        image = tf.reshape(pixels, tf.stack([height, width, 3]))
        u = tf.random.stateless_uniform([3], seed)
        top = tf.cast(u[0] * tf.cast(height - size + 1, tf.float32), tf.int64)
        left = tf.cast(u[1] * tf.cast(width - size + 1, tf.float32), tf.int64)
        # u < 1 keeps top <= height - size; the clip guards float rounding on huge images.
        top = tf.clip_by_value(top, 0, height - size)
        left = tf.clip_by_value(left, 0, width - size)
        begin = tf.stack([top, left, tf.constant(0, tf.int64)])
        patch = tf.slice(image, begin, tf.constant([size, size, 3], tf.int64))
        patch = tf.cond(u[2] < 0.5, lambda: tf.reverse(patch, [1]), lambda: patch)
        return tf.cast(patch, tf.float32) / 255.0

    @tf.autograph.experimental.do_not_convert  # plain TF ops: nothing for AutoGraph to do
    def element(position):
        # Pass number `lap` over the images uses its own random permutation of them.
        lap, slot = position // count, position % count
        order_seed = tf.random.experimental.stateless_fold_in(order_root, lap)
        order = tf.argsort(tf.random.stateless_uniform([count], order_seed))
        index = tf.cast(order[slot], tf.int64)

        seeds = tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(sample_root, position), 5
        )
        if count > 1:
            step = tf.random.stateless_uniform([], seeds[0], minval=1, maxval=count, dtype=tf.int64)
            donor_index = (index + step) % count
        else:
            donor_index = index
        mask = random_tamper_mask(
            seeds[3],
            size,
            area_range=area_range,
            largest_range=largest_range,
            max_regions=max_regions,
            shapes=shapes,
        )
        attack_seed = tf.random.stateless_uniform(
            [2], seeds[4], minval=None, maxval=None, dtype=tf.int32
        )
        return {
            "image": crop(index, seeds[1]),
            "donor": crop(donor_index, seeds[2]),
            "mask": mask,
            "seed": attack_seed,
        }

    return element
