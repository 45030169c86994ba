"""The one-photo demo with a model from a smoke training run."""

import math

import pytest
from PIL import Image

from imuge_tf.demo import format_demo, run_demo
from imuge_tf.inference import Imuge


@pytest.fixture(scope="module")
def imuge(untrained_model_dir):
    # The untrained smoke model of conftest: these tests check the protocol's plumbing and
    # behaviour (files, ranges, the Telea baseline), not what training achieves.
    return Imuge.load(untrained_model_dir)


def test_demo_writes_the_panel_figure_and_returns_scores(imuge, tmp_path):
    metrics = run_demo(imuge, str(tmp_path / "demo"), progress=False)
    with Image.open(tmp_path / "demo" / "demo.png") as figure:
        assert figure.format == "PNG" and figure.size[0] > 600
    assert metrics["figure"] == str(tmp_path / "demo" / "demo.png")
    # Not square and larger than the working size: the facade's any-size path.
    assert (metrics["height"], metrics["width"]) == (40, 48)
    assert metrics["verdict"] in ("intact", "tampered", "not_immunized")
    assert 0.03 < metrics["true_fraction"] < 0.2
    for key in ("f1", "iou", "auc", "tampered_fraction", "ssim_immunized"):
        assert 0.0 <= metrics[key] <= 1.0, key
    for key in ("psnr_immunized", "psnr_shared", "l_psnr_tampered", "l_psnr_recovered",
                "l_psnr_recovered_true_mask", "l_psnr_telea", "l_psnr_tampered_lossless",
                "l_psnr_recovered_lossless", "l_psnr_recovered_true_mask_lossless",
                "l_psnr_telea_lossless"):
        assert math.isfinite(metrics[key]) and 0 < metrics[key] <= 100, key
    assert metrics["verdict_lossless"] in ("intact", "tampered", "not_immunized")
    # The tampered area holds the cat, not the astronaut: far from the original.
    assert metrics["l_psnr_tampered"] < 20
    text = format_demo(metrics)
    assert metrics["verdict"] in text and "Telea" in text and "as PNG" in text
