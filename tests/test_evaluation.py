"""The evaluation protocol end to end: a quick run with a model from a smoke training run."""

import csv
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from imuge_tf.evaluation import (
    QUICK_ATTACKS,
    QUICK_TABLE2,
    TABLE1_METRICS,
    TABLE2_METRICS,
    TABLE2_SETTINGS,
    VERDICTS,
    format_table,
    load_photo,
    run_evaluation,
    telea_inpaint,
)
from imuge_tf.inference import Imuge
from imuge_tf.samples import sample_photo

UNIT_METRICS = ("f1", "iou", "auc", "detected", "flagged_immunized", "flagged_never_immunized")


@pytest.fixture(scope="module")
def imuge(untrained_model_dir):
    # The untrained smoke model of conftest: these tests check the protocol's plumbing and
    # behaviour (files, ranges, the Telea baseline), not what training achieves.
    return Imuge.load(untrained_model_dir)


@pytest.fixture(scope="module")
def evaluated(imuge, tmp_path_factory):
    folder = tmp_path_factory.mktemp("heldout")
    # Small files in two formats, plus one that cannot be read (skipped, not fatal).
    for name, fmt in (("coffee", "png"), ("chelsea", "jpg"), ("rocket", "png")):
        Image.fromarray(sample_photo(name)).resize((60, 48)).save(folder / f"{name}.{fmt}")
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path_factory.mktemp("evaluation")
    summary = run_evaluation(imuge, str(folder), str(out), quick=True, limit=4, seed=3,
                             progress=False)
    return summary, out


def test_load_photo_centre_crops_the_short_side_to_the_working_size():
    photo = np.zeros((40, 100, 3), np.uint8)
    photo[:, 30:70] = 255  # the centred 40 x 40 square is exactly the white band
    square = load_photo(photo, 32)
    assert square.shape == (32, 32, 3) and square.dtype == np.uint8
    # Away from the band's edges (Lanczos rings there): the square shows only the band.
    assert square[:, 3:-3].min() >= 250


def test_native_photos_keep_their_size_and_masks_follow_it():
    from imuge_tf.evaluation import TAMPER_MASK, _tamper_mask

    photo = sample_photo("coffee")
    np.testing.assert_array_equal(load_photo(photo), photo)
    mask = _tamper_mask((0, 1), (300, 500), **TAMPER_MASK)
    assert mask.shape == (300, 500)
    low, high = TAMPER_MASK["area_range"]
    assert low - 0.03 <= mask.mean() <= high + 0.03
    with pytest.raises(ValueError, match="size"):
        run_evaluation(None, [photo], "unused", size=4)


def test_photos_are_named_by_file_unless_two_names_clash(tmp_path):
    from imuge_tf.evaluation import _photo_sources

    array = np.zeros((8, 8, 3), np.uint8)
    names = [n for n, _ in _photo_sources(["a/x.png", "b/y.png", array])]
    assert names == ["x.png", "y.png", "array_2"]
    names = [n for n, _ in _photo_sources(["a/x.png", "b/x.png"])]
    assert names == ["a/x.png", "b/x.png"]


def test_telea_fills_only_inside_the_mask():
    image = load_photo(sample_photo("coffee"), 64)
    mask = np.zeros((64, 64), bool)
    mask[20:36, 24:40] = True
    holed = image.copy()
    holed[mask] = (0, 255, 0)
    filled = telea_inpaint(holed, mask)
    np.testing.assert_array_equal(filled[~mask], image[~mask])
    assert np.abs(filled[mask].astype(float) - image[mask]).mean() < \
        np.abs(holed[mask].astype(float) - image[mask]).mean()


@pytest.mark.slow
def test_quick_run_writes_every_file(evaluated):
    summary, out = evaluated
    for name in ("table.txt", "results.csv", "results.json", "figures/fig7.png",
                 "figures/jpeg_quality.png"):
        assert (out / name).is_file(), name
    for name in ("figures/fig7.png", "figures/jpeg_quality.png"):
        with Image.open(out / name) as figure:
            assert figure.format == "PNG" and min(figure.size) > 100
    assert not [p for p in os.listdir(out) if p.startswith(".tmp")]  # no temporary leftovers


@pytest.mark.slow
def test_summary_counts_photos_columns_and_skipped_files(evaluated):
    summary, out = evaluated
    assert summary["photos"] == 3
    assert [s["photo"] for s in summary["skipped"]] == ["broken.jpg"]
    assert list(summary["table1"]) == list(QUICK_ATTACKS)
    assert list(summary["table2"]) == list(QUICK_TABLE2)
    loaded = json.loads((out / "results.json").read_text())
    assert loaded["photos"] == 3 and loaded["settings"]["image_size"] == "native"
    assert loaded["settings"]["working_size"] == 32
    assert "their own size" in (out / "table.txt").read_text()
    assert loaded["settings"]["quick"] is True
    # The JSON (NaN as null) formats to the very table that was written.
    assert format_table(loaded) == (out / "table.txt").read_text()
    for attack in QUICK_ATTACKS:
        for category in ("tampered", "immunized_untampered", "never_immunized"):
            counts = loaded["verdicts"][category][attack]
            assert set(counts) == set(VERDICTS) and sum(counts.values()) == 3


@pytest.mark.slow
def test_csv_holds_one_finite_in_range_value_per_photo_setting_metric(evaluated):
    summary, out = evaluated
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected = 3 * (2 + len(QUICK_ATTACKS) * len(TABLE1_METRICS)
                    + len(QUICK_TABLE2) * len(TABLE2_METRICS))
    assert len(rows) == expected
    assert {r["photo"] for r in rows} == {"coffee.png", "chelsea.jpg", "rocket.png"}
    for row in rows:
        value = float(row["value"])
        if row["metric"] == "auc" and math.isnan(value):
            continue  # only for a one-class true mask
        assert math.isfinite(value), row
        if row["metric"] in UNIT_METRICS:
            assert 0.0 <= value <= 1.0, row
        elif row["metric"].startswith(("l_psnr", "psnr")):
            assert 0.0 < value <= 100.0, row
        elif row["metric"].startswith("ssim"):
            assert -1.0 <= value <= 1.0, row
        elif row["metric"] == "bce":
            assert value >= 0.0, row


@pytest.mark.slow
def test_means_are_consistent_and_the_protocol_behaves(evaluated):
    summary, _ = evaluated
    table1 = summary["table1"]
    for attack in QUICK_ATTACKS:
        scores = table1[attack]
        assert scores["imuge_effect"] == pytest.approx(
            scores["l_psnr_true_mask"] - scores["l_psnr_never_immunized"])
        assert summary["baseline"]["l_psnr_telea"][attack] == scores["l_psnr_telea"]
    # Inpainting from the surroundings beats leaving the pasted content in place (on the
    # never-immunized photo, so the check does not depend on the smoke encoder's residual).
    none = table1["none"]
    assert none["l_psnr_telea_never_immunized"] > none["l_psnr_tampered"] + 0.5
    # The Table 2 masks have the shares they were drawn for.
    targets = {name: (rst, rlt) for name, rst, rlt in TABLE2_SETTINGS}
    for name, row in summary["table2"].items():
        assert row["rst"] == pytest.approx(targets[name][0], abs=0.05)
        assert row["rlt"] == pytest.approx(targets[name][1], abs=0.05)
    assert 0.0 < summary["immunization"]["psnr_immunized"] <= 100.0
