"""A non-editable install: the package with its shipped model and configs, used from any folder."""

import os
import subprocess
import sys

import pytest

# Real pip installs into a fresh environment: minutes.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def test_non_editable_install_runs_the_demo_and_finds_its_configs(tmp_path):
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), REPO], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    assert (target / "imuge_tf" / "configs" / "demo.yaml").is_file()
    assert (target / "imuge_tf" / "pretrained" / "imuge.json").is_file()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**ENV, "PYTHONPATH": str(target)}
    probe = subprocess.run(
        [sys.executable, "-c", "import imuge_tf, imuge_tf.config as c; print(imuge_tf.__file__);"
         " print(c.load_config('demo').name, c.load_config('smoke').name)"],
        capture_output=True, text=True, env=env, cwd=elsewhere, timeout=300)
    assert probe.returncode == 0, probe.stderr[-2000:]
    location, names = probe.stdout.strip().splitlines()[-2:]
    assert location.startswith(str(target)), location  # not the working tree
    assert names == "demo smoke"

    demo = subprocess.run([sys.executable, "-m", "imuge_tf.cli", "demo", "--out", "out"],
                          capture_output=True, text=True, env=env, cwd=elsewhere, timeout=600)
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert (elsewhere / "out" / "demo.png").is_file()
