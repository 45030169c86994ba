"""Quality of a trained work directory on held-out photos, through the training attack layer.

    python benchmarks/heldout_quality.py --workdir runs/demo --data HELDOUT_DIR [--batches 8]

Restores the latest checkpoint of the work directory and runs the full data flow at the last
progressive stage on photos the run never saw, with the attacks of its config. Reports, as
medians over batches:

- PSNR(I, I_M): how invisible the immunization is;
- verifier pixel F1 (threshold 0.5) and BCE against the true mask;
- L-PSNR: PSNR of the recovered image inside the true tampered area, with the decoder given
  the predicted mask (the inference path) and the true mask (as in task decoupling);
- the same L-PSNR when the photo was never immunized (the encoder skipped): the difference is
  the "Imuge effect", what the hidden information adds over plain inpainting.

Figures go to the `heldout_quality` section of BENCHMARKS.md unless --no-write.
"""

import argparse
import os
import statistics
import sys

import numpy as np
import tensorflow as tf
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import command_line, load_average, machine_facts, update_section, utc_now  # noqa: E402

from imuge_tf.config import config_from_dict  # noqa: E402
from imuge_tf.data import make_dataset  # noqa: E402
from imuge_tf.metrics import masked_psnr, psnr  # noqa: E402
from imuge_tf.models.factory import build_imuge, compile_imuge  # noqa: E402


def restore(workdir):
    with open(os.path.join(workdir, "config.yaml"), encoding="utf-8") as stream:
        config = config_from_dict(yaml.safe_load(stream))
    model = compile_imuge(build_imuge(config), config)
    checkpoint = tf.train.Checkpoint(model=model, generator_optimizer=model.optimizer,
                                     discriminator_optimizer=model.discriminator_optimizer)
    path = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    if path is None:
        raise SystemExit(f"error: no checkpoint in {workdir}/checkpoints")
    checkpoint.restore(path).expect_partial()
    return config, model, path


def pixel_f1(predicted, true):
    predicted, true = np.asarray(predicted) > 0.5, np.asarray(true) > 0.5
    tp = np.logical_and(predicted, true).sum()
    denominator = predicted.sum() + true.sum()
    return 1.0 if denominator == 0 else 2.0 * tp / denominator


def measure(model, batch):
    """Figures of one batch, with and without immunization (same attacks and masks)."""
    stage, alpha = tf.constant(4), tf.constant(1.0)
    figures = {}
    for label, decoupled in (("predicted mask", False), ("true mask", True)):
        outputs = model.forward(batch, stage, alpha, tf.constant(decoupled))
        local, has_area = masked_psnr(batch["image"], outputs["recovered"], outputs["true_mask"])
        figures[f"L-PSNR, {label}"] = float(tf.reduce_sum(local) / tf.reduce_sum(has_area))
        if not decoupled:
            figures["PSNR(I, I_M)"] = float(tf.reduce_mean(psnr(batch["image"],
                                                                outputs["immunized"])))
            figures["verifier F1"] = pixel_f1(outputs["predicted_mask"], outputs["true_mask"])
            bce = tf.keras.losses.binary_crossentropy(outputs["true_mask"],
                                                      outputs["predicted_mask"])
            figures["verifier BCE"] = float(tf.reduce_mean(bce))
            figures["PSNR(I, I_R)"] = float(tf.reduce_mean(psnr(batch["image"],
                                                                outputs["recovered"])))
    # Never immunized: the encoder is bypassed, everything else is the same.
    encoder_call = model.immunize
    model.immunize = lambda images, training=False: images
    try:
        outputs = model.forward(batch, stage, alpha, tf.constant(True))
    finally:
        model.immunize = encoder_call
    local, has_area = masked_psnr(batch["image"], outputs["recovered"], outputs["true_mask"])
    figures["L-PSNR, true mask, never immunized"] = float(
        tf.reduce_sum(local) / tf.reduce_sum(has_area))
    figures["Imuge effect (dB)"] = (figures["L-PSNR, true mask"]
                                    - figures["L-PSNR, true mask, never immunized"])
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data", required=True, help="folder of held-out photos")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    config, model, path = restore(args.workdir)
    dataset, stats = make_dataset(args.data, image_size=config.model.image_size,
                                  batch_size=config.train.batch_size, seed=12345)
    rows = [measure(model, batch) for batch in dataset.take(args.batches)]
    medians = {key: statistics.median(row[key] for row in rows) for key in rows[0]}

    step = int(model.optimizer.iterations.numpy())
    lines = [
        "## Held-out quality (`benchmarks/heldout_quality.py`)",
        "",
        f"- work directory: config `{config.name}`, checkpoint `{os.path.basename(path)}` "
        f"(step {step})",
        f"- held-out photos: {stats.loaded} from `{args.data}` (never trained on); "
        f"{args.batches} batches of {config.train.batch_size}, the config's training attacks "
        "(one tamper + one benign attack per sample, some skipped), last progressive stage",
        f"- date: {utc_now()}; machine: "
        + ", ".join(f"{k} {v}" for k, v in machine_facts().items())
        + f"; load average {load_average()}",
        f"- command: `{command_line()}`",
        "",
        "| measure | median over batches |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value:.3f} |" for key, value in medians.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        update_section("heldout_quality", text)


if __name__ == "__main__":
    main()
