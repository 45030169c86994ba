"""End-to-end parity of the TFLite encoder variants with the Keras encoder.

    python benchmarks/export_parity.py [--model PATH] [--data DIR] [--limit N] [--no-write]

For each photo: immunize it with the Keras encoder and with each TFLite variant (fp32, fp16,
dynamic range, full int8; run by ai_edge_litert's Interpreter), paste a donor photo into an
object-shaped mask, then verify and recover with the Keras verifier and decoder. Reports per
variant the residual error against Keras (8-bit levels), how many immunized pixels differ,
the localization F1 and recovery PSNR (whole photo) and L-PSNR (inside the mask) with their
differences from the all-Keras path, verdict agreement, and whether the variant passes the
export's gate (F1 within 0.01, PSNR within 0.2 dB, residual not erased).

The model: --model, else the shipped demo weights (imuge_tf/pretrained/), else a freshly built
*untrained* demo-config model (said in the output). Photos: --data, else the photos bundled
with scikit-image. The table goes to the `export_parity` section of BENCHMARKS.md unless
--no-write.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    command_line,
    load_average,
    log,
    machine_facts,
    markdown_table,
    update_section,
    utc_now,
)

SECTION = "export_parity"


def resolve_model(path, scratch):
    """(Imuge, description): --model, the shipped weights, or an untrained demo model built
    into `scratch`."""
    from imuge_tf.inference import PRETRAINED_DIR, Imuge

    if path is not None:
        imuge = Imuge.load(path)
        return imuge, f"`{path}` (step {imuge.metadata.get('step')})"
    if os.path.isfile(os.path.join(PRETRAINED_DIR, "imuge.json")):
        imuge = Imuge.from_pretrained()
        return imuge, f"the shipped demo model (imuge_tf/pretrained, step " \
                      f"{imuge.metadata.get('step')})"
    from imuge_tf.config import load_config
    from imuge_tf.models.factory import build_imuge
    from imuge_tf.training import save_inference_networks

    log("no shipped weights: building an untrained demo-config model")
    config = load_config("demo")
    folder = os.path.join(scratch, "untrained-demo")
    save_inference_networks(build_imuge(config), config, folder, step=0)
    return Imuge.load(folder), ("a freshly built **untrained** demo-config model (no shipped "
                                "weights were found): the figures test the conversions, not "
                                "the model's quality")


def load_photos(data, limit):
    from imuge_tf.samples import sample_photos

    if data is None:
        photos = sample_photos()
        source = "the photos bundled with scikit-image"
    else:
        from imuge_tf.data import find_images
        from imuge_tf.io import read_image

        paths = sorted(find_images(data))
        photos = [read_image(path) for path in paths[: limit or len(paths)]]
        source = f"{len(photos)} photos from `{data}`"
    return photos[: limit or len(photos)], source


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, metavar="PATH",
                        help="work directory or inference/ folder (default: shipped weights, "
                             "else an untrained demo model)")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="photos to immunize (default: the bundled sample photos)")
    parser.add_argument("--limit", type=int, default=None, help="use at most N photos")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tamper masks")
    parser.add_argument("--no-int8", action="store_true", help="skip full int8")
    parser.add_argument("--no-write", action="store_true",
                        help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)

    from imuge_tf import export as ex

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="imuge-parity-") as scratch:
        imuge, description = resolve_model(args.model, scratch)
        photos, photo_source = load_photos(args.data, args.limit)
        size = imuge.image_size
        log(f"model: {description}; {len(photos)} photos; working size {size}")
        saved = ex.save_encoder(imuge.encoder, size, os.path.join(scratch, "encoder"))
        calibration = ex.representative_images(size, photos=photos)
        checks = calibration[: len(photos)]
        cases = ex.parity_cases(size, photos, seed=args.seed)
        log("the all-Keras path")
        reference = ex.end_to_end(imuge, imuge.encoder, cases)
        rows, results = [], {}
        variants = ex.REQUIRED_VARIANTS if args.no_int8 else ex.ENCODER_VARIANTS
        for variant in variants:
            withheld = ex.int8_withheld_reason(imuge) if variant == "int8" else None
            if withheld:
                rows.append([variant, "not converted", "", "", "", "", "", "", withheld])
                continue
            log(f"TFLite {variant}: converting")
            try:
                model = ex.convert_saved_model(saved, variant,
                                               calibration if variant == "int8" else None)
            except ex.ExportError as error:
                rows.append([variant, "conversion failed", "", "", "", "", "", "", str(error)])
                continue
            log(f"TFLite {variant}: immunize, verify, recover")
            runner = ex.TFLiteEncoder(model)
            error = ex.residual_error(imuge.encoder, runner, checks)
            gate_ok, reason = ex.residual_gate(variant, error,
                                               hidden_thumbnail=imuge.thumbnail_step > 0)
            parity = ex.compare_end_to_end(reference, ex.end_to_end(imuge, runner, cases))
            holds = gate_ok and parity["holds"]
            results[variant] = {"error": error, "parity": parity, "holds": holds}
            rows.append([
                variant, f"{len(model) / 1e6:.2f} MB",
                f"{error['max_levels']:.3g} / {error['p99_levels']:.3g} / "
                f"{error['rms_levels']:.3g}",
                f"{100 * parity['immunized_changed_share']:.2f} % (max "
                f"{parity['immunized_max_levels']})",
                f"{parity['f1']:.4f} ({parity['f1_delta']:+.4f})",
                f"{parity['psnr']:.2f} ({parity['psnr_delta_db']:+.3f})",
                f"{parity['l_psnr']:.2f} ({parity['l_psnr_delta_db']:+.3f})",
                f"{100 * parity['verdict_agreement']:.0f} %",
                "yes" if holds else f"**no**: {reason or 'end-to-end parity fails'}",
            ])

    headers = ["variant", "size", "residual error max / p99 / RMS (levels)",
               "immunized pixels != Keras", "F1 (vs Keras)", "PSNR dB (vs Keras)",
               "L-PSNR dB (vs Keras)", "same verdicts", "parity holds (shipped)"]
    keras_row = ["Keras", "", "", "", f"{reference['f1']:.4f}", f"{reference['psnr']:.2f}",
                 f"{reference['l_psnr']:.2f}", "", "reference"]
    table = markdown_table(headers, [keras_row, *rows])
    facts = machine_facts()
    body = "\n".join([
        "## Export parity: TFLite encoder variants vs Keras, end to end",
        "",
        f"Measured {utc_now()} by `{command_line()}` in {time.monotonic() - started:.0f} s.",
        f"Model: {description}; working size {imuge.image_size}.",
        f"Photos: {photo_source} ({len(photos)}), each immunized by the variant, a donor "
        "photo pasted into an object-shaped mask (10-30 % of the area), then verified and "
        "recovered by the Keras verifier and decoder. F1: localization pixel F1 of the mask; "
        "PSNR: recovered vs original photo; L-PSNR: the same inside the true mask; "
        "\"same verdicts\": tampered and untouched immunized photos get the Keras path's "
        "verdicts. Residual error: the variant's residual minus Keras', at the working size.",
        f"Gate (as `imuge export` applies it): |dF1| <= {ex.F1_TOLERANCE}, |dPSNR| <= "
        f"{ex.PSNR_TOLERANCE_DB} dB, the same verdicts, fp32 residual within "
        f"{ex.FP32_MAX_LEVELS} levels, other variants' residual error at most "
        f"{ex.QUANTIZED_MAX_LEVELS:g} levels and {ex.QUANTIZED_RMS_SHARE:.0%} of the residual's "
        "RMS; with a hidden thumbnail the 99th percentile of the residual error stands for its "
        "max (a cell on the neighbouring lattice point carries the same message).",
        "",
        table,
        "",
        f"Machine: {facts['cpu']}, {facts['cpus']} CPUs, load {load_average()}; TensorFlow "
        f"{facts.get('tensorflow')}, Keras {facts.get('keras')}.",
    ])
    print(body)
    if not args.no_write:
        log(f"wrote {update_section(SECTION, body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
