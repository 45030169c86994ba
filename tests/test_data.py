"""The training input pipeline: finding, decoding and streaming photos."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from imuge_tf.data import (
    DataError,
    ReadStats,
    find_images,
    load_image,
    load_images,
    make_dataset,
    prepare_array,
)

SIZE = 48


def _copy(photo_dir, tmp_path):
    """A private copy of the shared photo folder, safe to add files to."""
    folder = tmp_path / "photos"
    shutil.copytree(photo_dir, folder)
    return folder


def _first(dataset):
    return {key: value.numpy() for key, value in next(iter(dataset)).items()}


def _solid_images(count=6):
    """Images of one flat grey level each (20, 40, ...), so a crop tells which image it is."""
    return [np.full((40, 60, 3), 20 * (i + 1), np.uint8) for i in range(count)]


def _levels(batch, key="image"):
    return [int(round(v * 255 / 20)) for v in batch[key].mean(axis=(1, 2, 3))]


# Finding files.


def test_find_images_is_recursive_sorted_and_format_aware(photo_dir, tmp_path):
    folder = _copy(photo_dir, tmp_path)
    shutil.copy(folder / "coffee.png", folder / "UPPER.JPG")  # content does not matter here
    (folder / "notes.txt").write_text("not an image")
    (folder / "._coffee.png").write_bytes(b"macOS metadata")
    (folder / ".cache").mkdir()
    shutil.copy(folder / "coffee.png", folder / ".cache" / "thumb.png")

    paths = find_images(folder)
    names = [os.path.relpath(p, folder) for p in paths]
    assert paths == sorted(paths)
    assert sorted(names) == sorted(
        [
            os.path.join("nested", "astronaut.jpg"),
            "coffee.png",
            "chelsea.bmp",
            "rocket.tiff",
            "immunohistochemistry.webp",
            "hubble_deep_field.jpg",
            "UPPER.JPG",
        ]
    )


def test_find_images_errors_name_the_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="not found: .*nowhere"):
        find_images(missing)
    a_file = tmp_path / "file.jpg"
    a_file.write_bytes(b"x")
    with pytest.raises(DataError, match="not a folder"):
        find_images(a_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="no images .* in folder: .*empty") as info:
        find_images(empty)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


# Loading.


def test_unreadable_files_are_skipped_and_counted(photo_dir, tmp_path):
    folder = _copy(photo_dir, tmp_path)
    rng = np.random.default_rng(0)
    (folder / "broken.jpg").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (folder / "empty.png").write_bytes(b"")
    jpeg = (folder / "hubble_deep_field.jpg").read_bytes()
    (folder / "nested" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])

    dataset, stats = make_dataset(folder, image_size=SIZE, batch_size=2)
    assert isinstance(stats, ReadStats)
    assert (stats.found, stats.loaded, stats.skipped) == (9, 6, 3)
    skipped = {os.path.basename(p) for p in stats.skipped_files}
    assert skipped == {"broken.jpg", "empty.png", "truncated.jpg"}
    assert set(stats.errors) == set(stats.skipped_files)
    assert "3 skipped" in stats.summary()
    assert _first(dataset)["image"].shape == (2, SIZE, SIZE, 3)


def test_no_readable_image_is_a_data_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"garbage")
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.raises(DataError, match="none of 2 image files could be read"):
        make_dataset(tmp_path, image_size=SIZE, batch_size=2)


def test_load_images_keeps_order_and_shows_progress_on_request(photo_dir, capsys):
    paths = find_images(photo_dir)
    images, stats = load_images(paths, 32, workers=3, progress=True)
    assert stats == ReadStats(found=6, loaded=6, skipped=0)
    # Same order as the paths: each matches a sequential load.
    for path, image in zip(paths, images):
        np.testing.assert_array_equal(image, load_image(path, 32))
    assert "loading images" in capsys.readouterr().err


def _two_colour(width=40, height=20):
    """Left half red, right half blue."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = (255, 0, 0)
    image[:, width // 2 :] = (0, 0, 255)
    return image


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp", "tiff"])
def test_exif_orientation_is_applied(tmp_path, fmt):
    path = tmp_path / f"rotated.{fmt}"
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers rotate this 90 degrees clockwise
    Image.fromarray(_two_colour()).save(path, exif=exif, quality=95)

    image = load_image(path, 16, load_size=100)
    assert image.shape == (40, 20, 3)  # portrait now
    # Rotated clockwise, the left (red) half is on top.
    np.testing.assert_allclose(image[:15].mean(axis=(0, 1)), (255, 0, 0), atol=20)
    np.testing.assert_allclose(image[-15:].mean(axis=(0, 1)), (0, 0, 255), atol=20)


def test_greyscale_and_one_bit_become_rgb(tmp_path):
    grey = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (20, 1))
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    Image.fromarray(grey > 100).save(tmp_path / "bits.bmp")

    image = load_image(tmp_path / "grey.png", 16, load_size=100)
    assert image.shape == (20, 25, 3) and image.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], grey)
    bits = load_image(tmp_path / "bits.bmp", 16, load_size=100)
    np.testing.assert_array_equal(bits[..., 0], np.where(grey > 100, 255, 0))


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_sixteen_bit_greyscale_is_scaled_to_eight_bits(tmp_path, fmt):
    levels = np.array([0, 257, 32896, 65535], np.uint16)
    deep = np.tile(np.repeat(levels, 5), (20, 1))
    path = tmp_path / f"deep.{fmt}"
    Image.fromarray(deep).save(path)
    assert Image.open(path).mode.startswith("I")

    image = load_image(path, 16, load_size=100)
    np.testing.assert_array_equal(image[0, ::5, 0], [0, 1, 128, 255])
    assert np.all(image[..., 0] == image[..., 2])


def test_alpha_and_palette_transparency_are_flattened_onto_white(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3] = (0, 128, 0)
    rgba[:, :15, 3] = 255  # left opaque green, right fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    image = load_image(tmp_path / "alpha.png", 16, load_size=100)
    np.testing.assert_array_equal(image[:, :15], np.full((20, 15, 3), (0, 128, 0)))
    np.testing.assert_array_equal(image[:, 15:], np.full((20, 15, 3), 255))

    palette = Image.fromarray(_two_colour(30, 20)).quantize(colors=2)
    palette.save(tmp_path / "palette.png")
    image = load_image(tmp_path / "palette.png", 16, load_size=100)
    np.testing.assert_array_equal(image, _two_colour(30, 20))
    red_index = palette.getpixel((0, 0))
    palette.save(tmp_path / "palette_transparent.png", transparency=red_index)
    image = load_image(tmp_path / "palette_transparent.png", 16, load_size=100)
    np.testing.assert_array_equal(image[:, :15], np.full((20, 15, 3), 255))
    np.testing.assert_array_equal(image[:, 15:], np.full((20, 15, 3), (0, 0, 255)))


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.fromarray(_two_colour()).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    image = load_image(tmp_path / "cmyk.jpg", 16, load_size=100)
    np.testing.assert_allclose(image[:, :15].mean(axis=(0, 1)), (255, 0, 0), atol=20)
    np.testing.assert_allclose(image[:, -15:].mean(axis=(0, 1)), (0, 0, 255), atol=20)


def test_images_are_scaled_to_load_size_but_never_below_image_size(tmp_path):
    gradient = np.linspace(0, 255, 900).astype(np.uint8)
    large = np.stack([np.tile(gradient, (1200, 1))] * 3, axis=-1)  # 1200 x 900, tall
    Image.fromarray(large).save(tmp_path / "large.jpg", quality=95)
    image = load_image(tmp_path / "large.jpg", 64)  # load_size 96: the JPEG draft path
    assert image.shape == (128, 96, 3)
    np.testing.assert_allclose(image[64, ::19, 1], gradient[::178], atol=12)

    assert load_image(tmp_path / "large.jpg", 64, load_size=200).shape == (267, 200, 3)
    assert prepare_array(np.zeros((30, 40, 3), np.uint8), 64).shape == (64, 85, 3)
    assert prepare_array(np.zeros((70, 80, 3), np.uint8), 64).shape == (70, 80, 3)
    assert prepare_array(np.zeros((70, 80), np.uint8), 64).shape == (70, 80, 3)
    with pytest.raises(ValueError, match="load_size"):
        load_image(tmp_path / "large.jpg", 64, load_size=32)
    with pytest.raises(ValueError, match="uint8"):
        prepare_array(np.zeros((70, 80, 3), np.float32), 64)


# The stream.


def test_batches_have_the_promised_types_shapes_and_contents(photos):
    dataset, stats = make_dataset(list(photos.values()), image_size=SIZE, batch_size=4, seed=1)
    assert (stats.found, stats.loaded, stats.skipped) == (6, 6, 0)
    batch = _first(dataset)
    assert batch["image"].shape == (4, SIZE, SIZE, 3) and batch["image"].dtype == np.float32
    assert batch["donor"].shape == (4, SIZE, SIZE, 3) and batch["donor"].dtype == np.float32
    assert batch["mask"].shape == (4, SIZE, SIZE, 1) and batch["mask"].dtype == np.float32
    assert batch["seed"].shape == (4, 2) and batch["seed"].dtype == np.int32
    for key in ("image", "donor"):
        assert 0.0 <= batch[key].min() and batch[key].max() <= 1.0
        assert batch[key].std() > 0.05  # real photo content, not a constant
    assert set(np.unique(batch["mask"])) <= {0.0, 1.0}
    assert np.all(batch["mask"].sum(axis=(1, 2, 3)) > 0)
    for image, donor in zip(batch["image"], batch["donor"]):
        assert np.abs(image - donor).mean() > 0.02
    assert len({tuple(s) for s in batch["seed"]}) == 4


def test_mask_arguments_reach_the_masks():
    dataset, _ = make_dataset(
        _solid_images(),
        image_size=32,
        batch_size=6,
        mask_area_range=(0.25, 0.25),
        mask_largest_range=(0.25, 0.25),
        mask_max_regions=1,
        mask_shapes=("rectangle",),
    )
    shares = _first(dataset)["mask"].mean(axis=(1, 2, 3))
    assert abs(shares.mean() - 0.25) < 0.02
    np.testing.assert_allclose(shares, 0.25, atol=0.06)
    with pytest.raises(ValueError, match="area_range"):
        make_dataset(_solid_images(), image_size=32, batch_size=2, mask_area_range=(0.5, 0.1))


def test_same_seed_same_stream_other_seed_other_stream(photos):
    images = list(photos.values())
    first = _first(make_dataset(images, image_size=SIZE, batch_size=2, seed=7)[0])
    again = _first(make_dataset(images, image_size=SIZE, batch_size=2, seed=7)[0])
    other = _first(make_dataset(images, image_size=SIZE, batch_size=2, seed=8)[0])
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
        assert not np.array_equal(first[key], other[key])


def test_every_pass_shows_each_image_once_in_a_new_order():
    dataset, _ = make_dataset(_solid_images(), image_size=16, batch_size=6, seed=3)
    iterator = iter(dataset)
    passes = [_levels({k: v.numpy() for k, v in next(iterator).items()}) for _ in range(3)]
    for levels in passes:
        assert sorted(levels) == [1, 2, 3, 4, 5, 6]
    assert len({tuple(levels) for levels in passes}) > 1


def test_one_pass_without_repeat_and_donors_from_other_images():
    dataset, _ = make_dataset(_solid_images(), image_size=16, batch_size=2, repeat=False)
    batches = [{k: v.numpy() for k, v in b.items()} for b in dataset]
    assert len(batches) == 3
    assert sorted(sum((_levels(b) for b in batches), [])) == [1, 2, 3, 4, 5, 6]
    for batch in batches:
        assert all(i != d for i, d in zip(_levels(batch), _levels(batch, "donor")))
    with pytest.raises(DataError, match="no full batch"):
        make_dataset(_solid_images(), image_size=16, batch_size=8, repeat=False)


def _context(pipeline, pipelines=2):
    return tf.distribute.InputContext(
        num_input_pipelines=pipelines, input_pipeline_id=pipeline, num_replicas_in_sync=pipelines
    )


def test_input_pipelines_split_one_global_stream(photos):
    images = list(photos.values())
    whole = _first(make_dataset(images, image_size=32, batch_size=8, seed=5)[0])
    for pipeline in (0, 1):
        dataset, _ = make_dataset(
            images, image_size=32, batch_size=8, seed=5, input_context=_context(pipeline)
        )
        part = _first(dataset)
        assert part["image"].shape == (4, 32, 32, 3)  # the per-replica batch
        for key in part:
            np.testing.assert_array_equal(part[key], whole[key][pipeline::2])


def test_input_pipelines_without_repeat_share_six_images():
    levels = []
    for pipeline in (0, 1):
        dataset, _ = make_dataset(
            _solid_images(),
            image_size=16,
            batch_size=2,
            repeat=False,
            input_context=_context(pipeline),
        )
        for batch in dataset:
            levels += _levels({"image": batch["image"].numpy()})
    assert sorted(levels) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"batch_size": 0}, ValueError),
        ({"image_size": 4}, ValueError),
        ({"seed": "one"}, ValueError),
        ({"load_size": 8}, ValueError),
    ],
)
def test_bad_arguments_raise(kwargs, error):
    arguments = {"image_size": 16, "batch_size": 2, **kwargs}
    with pytest.raises(error):
        make_dataset(_solid_images(), **arguments)


def test_empty_image_list_is_a_data_error():
    with pytest.raises(DataError):
        make_dataset([], image_size=16, batch_size=2)
