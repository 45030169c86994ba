"""Quality of a trained work directory on held-out photos, through the training attack layer.

    python benchmarks/heldout_quality.py --workdir runs/demo --data HELDOUT_DIR [--batches 8]
        [--out DIR]
    python benchmarks/heldout_quality.py --render-only

Restores the latest checkpoint of the work directory and runs the full data flow at the last
progressive stage on photos the run never saw, with the attacks of its config. Reports, as
medians over batches:

- PSNR(I, I_M): how invisible the immunization is;
- verifier pixel F1 (threshold 0.5, pooled over the batch) and BCE against the true mask;
- L-PSNR: PSNR of the recovered image inside the true tampered area, with the decoder given
  the predicted mask (the inference path) and the true mask (as in task decoupling);
- the same L-PSNR when the photo was never immunized (the encoder skipped): the difference is
  the "Imuge effect", what the hidden information adds over plain inpainting.

The figures go to benchmarks/results/heldout_quality.json, and the `heldout_quality` section
of BENCHMARKS.md is rendered from that file (`--render-only` re-renders it without measuring).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (quietens TensorFlow before it is imported)

NAME = "heldout_quality"
# Key in the results -> row label, in the section's row order.
MEASURES = (
    ("l_psnr_predicted_mask", "L-PSNR, predicted mask"),
    ("psnr_immunized", "PSNR(I, I_M)"),
    ("verifier_f1", "verifier F1"),
    ("verifier_bce", "verifier BCE"),
    ("psnr_recovered", "PSNR(I, I_R)"),
    ("l_psnr_true_mask", "L-PSNR, true mask"),
    ("l_psnr_never_immunized", "L-PSNR, true mask, never immunized"),
    ("imuge_effect", "Imuge effect (dB)"),
)


def restore(workdir):
    import tensorflow as tf
    import yaml

    from imuge_tf.config import config_from_dict
    from imuge_tf.models.factory import build_imuge, compile_imuge

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


def measure_batch(model, batch) -> dict:
    """Figures of one batch, with and without immunization (same attacks and masks)."""
    import tensorflow as tf

    from imuge_tf import scoring
    from imuge_tf.metrics import masked_psnr, psnr

    stage, alpha = tf.constant(4), tf.constant(1.0)

    def local_psnr(outputs):
        # Mean over the samples that have a tampered area; the others carry no L-PSNR.
        local, has_area = masked_psnr(batch["image"], outputs["recovered"], outputs["true_mask"])
        return float(tf.reduce_sum(local) / tf.reduce_sum(has_area))

    outputs = model.forward(batch, stage, alpha, tf.constant(False))
    bce = tf.keras.losses.binary_crossentropy(outputs["true_mask"], outputs["predicted_mask"])
    figures = {
        "l_psnr_predicted_mask": local_psnr(outputs),
        "psnr_immunized": float(tf.reduce_mean(psnr(batch["image"], outputs["immunized"]))),
        "verifier_f1": scoring.pooled_f1(outputs["predicted_mask"].numpy(),
                                         outputs["true_mask"].numpy()),
        "verifier_bce": float(tf.reduce_mean(bce)),
        "psnr_recovered": float(tf.reduce_mean(psnr(batch["image"], outputs["recovered"]))),
        "l_psnr_true_mask": local_psnr(model.forward(batch, stage, alpha, tf.constant(True))),
    }
    # Never immunized: the encoder is bypassed, everything else is the same.
    encoder_call = model.immunize
    model.immunize = lambda images, training=False: images
    try:
        never = model.forward(batch, stage, alpha, tf.constant(True))
    finally:
        model.immunize = encoder_call
    figures["l_psnr_never_immunized"] = local_psnr(never)
    figures["imuge_effect"] = figures["l_psnr_true_mask"] - figures["l_psnr_never_immunized"]
    return figures


def measure(args) -> dict:
    from imuge_tf.data import make_dataset

    config, model, path = restore(args.workdir)
    dataset, stats = make_dataset(args.data, image_size=config.model.image_size,
                                  batch_size=config.train.batch_size, seed=12345)
    rows = [measure_batch(model, batch) for batch in dataset.take(args.batches)]
    return {
        "date": common.utc_now(),
        "command": common.command_line(),
        "machine": common.machine_facts(),
        "load_average": common.load_average(),
        "config": config.name,
        "checkpoint": os.path.basename(path),
        "step": int(model.optimizer.iterations.numpy()),
        "photos": stats.loaded,
        "data": args.data,
        "batches": len(rows),
        "batch_size": config.train.batch_size,
        "medians": {key: statistics.median(row[key] for row in rows) for key, _ in MEASURES},
    }


def render(results) -> str:
    machine = ", ".join(f"{key} {value}" for key, value in results["machine"].items())
    lines = [
        "## Held-out quality (`benchmarks/heldout_quality.py`)",
        "",
        f"- work directory: config `{results['config']}`, checkpoint `{results['checkpoint']}`"
        f" (step {results['step']})",
        f"- held-out photos: {results['photos']} from `{results['data']}` (never trained on); "
        f"{results['batches']} batches of {results['batch_size']}, the config's training "
        "attacks (one tamper + one benign attack per sample, some skipped), last progressive "
        "stage",
        f"- date: {results['date']}; machine: {machine}; load average "
        f"{results['load_average']}",
        f"- command: `{results['command']}`",
        "",
        common.markdown_table(["measure", "median over batches"],
                              [[label, f"{results['medians'][key]:.3f}"]
                               for key, label in MEASURES]),
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="training work directory (with checkpoints/)")
    parser.add_argument("--data", help="folder of held-out photos")
    parser.add_argument("--batches", type=int, default=8)
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    common.require_unless_render_only(parser, args, "workdir", "data")
    common.measure_and_publish(NAME, args, measure, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
