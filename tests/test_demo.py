"""The one-photo demo with a model from a smoke training run."""

import math
import os
import subprocess
import sys

import pytest
from PIL import Image

from imuge_tf.demo import format_demo, run_demo
from imuge_tf.inference import Imuge


@pytest.fixture(scope="module")
def imuge(untrained_model_dir):
    # The untrained smoke model of conftest: these tests check the protocol's plumbing and
    # behaviour (files, ranges, the Telea baseline), not what training achieves.
    return Imuge.load(untrained_model_dir)


@pytest.mark.slow
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


def test_the_default_demo_folder_is_ignored_by_git():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isdir(os.path.join(root, ".git")):
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", "imuge-demo/demo.png"], cwd=root)
    assert ignored.returncode == 0


@pytest.mark.slow
def test_imuge_demo_twice_as_a_new_user_runs_it(tmp_path):
    """`imuge demo` with no flags, twice, in a fresh folder: the shipped model, the default
    output folder (the second run overwrites the first's), and no TensorFlow lines on stderr
    (only the tool's demo-key warning). A folder holding other files is refused: in
    test_cli.py, with the demo itself replaced."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",
                                                          "IMUGE_KEY")}
    for _ in range(2):
        result = subprocess.run([sys.executable, "-m", "imuge_tf.cli", "demo"], cwd=tmp_path,
                                capture_output=True, text=True, env=env, timeout=900)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "demo written to imuge-demo" in result.stdout
        assert all(line.startswith("warning: ") for line in result.stderr.splitlines()), (
            result.stderr[-2000:])
    assert (tmp_path / "imuge-demo" / "demo.png").is_file()
