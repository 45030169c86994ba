"""Installs imuge-tf: the `imuge_tf` package and the `imuge` command."""

from setuptools import find_packages, setup

setup(
    name="imuge-tf",
    version="0.1.0",
    description=(
        "Immunized images (Imuge, ACM MM 2021) on Keras 3 / TensorFlow: tamper "
        "localization and content recovery that survive JPEG, resizing and more."
    ),
    python_requires=">=3.10",
    packages=find_packages(include=["imuge_tf", "imuge_tf.*"]),
    include_package_data=True,
    package_data={"imuge_tf": ["pretrained/*", "configs/*.yaml"]},
    install_requires=[
        "tensorflow==2.21.*",
        "keras==3.15.*",
        "numpy",
        "pillow",
        "pyyaml",
        "tqdm",
        "tensorboard",
        "scikit-image",
        "scipy",
        "opencv-python-headless",
        "matplotlib",
        # Runs the TFLite encoder (tf.lite.Interpreter is deprecated).
        "ai-edge-litert",
        # Serving client and config protos; it requires tensorflow>=2.21,<3, which the pin
        # above already satisfies, so it installs no other TensorFlow.
        "tensorflow-serving-api==2.21.*",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "ruff"],
    },
    entry_points={"console_scripts": ["imuge=imuge_tf.cli:main"]},
)
