"""Recovery from the self-embedded reference, at the photo's own resolution, after real JPEG.

For each photo of a folder (`--data`; BENCHMARKS.md names the one measured), at its native
size, through the public API (`Imuge.immunize` / `verify` / `recover`) and Pillow JPEG:

- 10 % object-shaped tampers (paste from another photo, removal filled by OpenCV Telea, clone
  of a shifted part of the same photo), lossless and after JPEG 95 ... 50: L-PSNR inside the
  true tamper of `Imuge.recover` with the verifier's own mask, next to OpenCV Telea on the true
  mask; the share of the tampered area whose record decoded;
- pastes of 10, 25 and 40 % of the photo after the same JPEG qualities;
- the Imuge effect: the same tamper on the never-immunized photo, both recovered inside the
  true mask (`Imuge.recover_with_mask`), lossless and after JPEG 90;
- the capacity of the design (bits per block, code rate, reference bits per megapixel).

    python benchmarks/reference_recovery.py --data FOLDER [--model DIR] [--limit N] [--quick]
        [--out DIR]
    python benchmarks/reference_recovery.py --render-only

Every figure goes to benchmarks/results/reference_recovery.json, and the `reference_recovery`
section of BENCHMARKS.md is rendered from that file (`--render-only` re-renders it without
measuring).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (quietens TensorFlow before it is imported)
import numpy as np  # noqa: E402
from native_quality import jpeg, tamper  # noqa: E402

NAME = "reference_recovery"
QUALITIES = (None, 95, 90, 80, 75, 70, 60, 50)  # None: lossless
TAMPERS = ("paste", "removal", "clone")
SHARES = (0.10, 0.25, 0.40)
TELEA_QUALITIES = (None, 90, 75)
PAPER = {"none": 27.1, "jpeg90": 26.1, "jpeg70": 23.9}  # L-PSNR, 256 px (paper, table 1)


def _label(quality):
    return "lossless" if quality is None else f"jpeg{quality}"


def _mask(height, width, share, seed):
    from imuge_tf.evaluation import _fixed_share_mask

    return _fixed_share_mask((seed, int(share * 100)), (height, width), share,
                             min(share, 0.10) if share <= 0.10 else share / 2)


def _decoded_share(imuge, received, tampered_mask, truth):
    import tensorflow as tf

    levels = tf.constant(received[None].astype(np.float32))
    mask = tf.constant(tampered_mask.astype(np.float32)[None, :, :, None])
    _, decoded, _, _ = imuge.pipeline.read_reference(levels, mask)
    return float(np.asarray(decoded)[0, :, :, 0][truth].mean())


def evaluate_photo(imuge, name, photo, donor, seed, qualities):
    from imuge_tf import scoring
    from imuge_tf.evaluation import telea_inpaint

    rng = np.random.default_rng(seed)
    height, width = photo.shape[:2]
    record = {"photo": name, "width": width, "height": height}
    immunized = imuge.immunize(photo)
    record["psnr"] = scoring.psnr(photo, immunized)
    cases = [(kind, 0.10) for kind in TAMPERS] + [("paste", share) for share in SHARES[1:]]
    for case, (kind, share) in enumerate(cases):
        truth = _mask(height, width, share, seed * len(cases) + case)
        tampered = tamper(kind, immunized, donor, truth, rng)
        never = tamper(kind, photo, donor, truth, rng) if share == 0.10 else None
        for quality in qualities:
            if kind != "paste" and quality not in TELEA_QUALITIES:
                continue
            key = f"{kind}_{int(share * 100)}_{_label(quality)}"
            received = tampered if quality is None else jpeg(tampered, quality)
            result = imuge.verify(received)
            recovered = imuge.recover(received, result)
            record[f"lpsnr_{key}"] = scoring.l_psnr(photo, recovered, truth)
            record[f"verdict_{key}"] = result.verdict
            record[f"f1_{key}"] = scoring.f1(result.mask, truth)
            record[f"decoded_{key}"] = _decoded_share(imuge, received, result.mask, truth)
            if quality in TELEA_QUALITIES:
                record[f"telea_{key}"] = scoring.l_psnr(
                    photo, telea_inpaint(received, truth), truth)
            if never is not None and quality in (None, 90):
                received_never = never if quality is None else jpeg(never, quality)
                record[f"true_mask_{key}"] = scoring.l_psnr(
                    photo, imuge.recover_with_mask(received, truth), truth)
                record[f"never_{key}"] = scoring.l_psnr(
                    photo, imuge.recover_with_mask(received_never, truth), truth)
        common.log(f"  {name}: {kind} {share:.0%} done")
    return record


def capacity():
    from imuge_tf.models import reference
    from imuge_tf.models.blockmark import DATA_COEFFICIENTS, DATA_STEP

    blocks_per_cell = reference.BLOCKS_PER_CELL**2
    carried = len(DATA_COEFFICIENTS) * blocks_per_cell
    record_bits = reference.RECORD_BITS
    per_megapixel = 1e6 / reference.CELL**2
    return {"data_coefficients": len(DATA_COEFFICIENTS), "data_step": DATA_STEP,
            "bits_per_block": len(DATA_COEFFICIENTS), "cell": reference.CELL,
            "record_bits": record_bits, "copies": reference.SLOTS,
            "code_rate": record_bits / carried,
            "carried_bits_per_mp": carried * per_megapixel,
            "reference_bits_per_mp": record_bits * per_megapixel}


def _mean(records, key):
    # A figure that was not finite is saved as null (common.save_results): left out, as NaN.
    values = [r[key] for r in records if r.get(key) is not None and np.isfinite(r[key])]
    return float(np.mean(values)) if values else float("nan")


def gains_over_telea(records) -> dict:
    """Imuge's L-PSNR minus Telea's, mean of paste / removal / clone at 10 %, by reception."""
    gains = {}
    for quality in TELEA_QUALITIES:
        values = [_mean(records, f"lpsnr_{k}_10_{_label(quality)}")
                  - _mean(records, f"telea_{k}_10_{_label(quality)}") for k in TAMPERS]
        gains[_label(quality)] = float(np.mean(values))
    return gains


def render(results) -> str:
    records, qualities, cap = results["records"], results["qualities"], results["capacity"]
    model = "Shipped model" if results["model"] is None else f"Model `{results['model']}`"
    lines = ["## Recovery from the self-embedded reference (`benchmarks/reference_recovery.py`)",
             "", f"{model}{' with its reference refiner' if results['refiner'] else ''}, "
             f"{len(records)} photos of `{results['data']}` at their native size (none used "
             "in training), public API, Pillow JPEG (4:2:0). "
             f"Measured {results['date']} with `{results['command']}`.", "",
             "Recovery with the verifier's own mask, L-PSNR (dB) inside the true tamper, "
             "mean over the photos; Telea: OpenCV on the true mask; decoded: share of the "
             "tampered area whose record was read.", ""]
    rows = []
    for kind in TAMPERS:
        for quality in qualities:
            key = f"{kind}_10_{_label(quality)}"
            if f"lpsnr_{key}" not in records[0]:
                continue
            imuge_db, telea_db = _mean(records, f"lpsnr_{key}"), _mean(records, f"telea_{key}")
            rows.append([kind, _label(quality), f"{imuge_db:.2f}",
                         "" if np.isnan(telea_db) else f"{telea_db:.2f}",
                         "" if np.isnan(telea_db) else f"{imuge_db - telea_db:+.2f}",
                         f"{_mean(records, f'decoded_{key}'):.1%}",
                         f"{_mean(records, f'f1_{key}'):.3f}"])
    lines.append(common.markdown_table(
        ["10 % tamper", "received as", "Imuge L-PSNR", "Telea", "gain", "decoded", "F1"], rows))
    gains = gains_over_telea(records)
    lines += ["", "Gain over Telea, mean of paste / removal / clone at 10 %: "
              + ", ".join(f"{label} {gain:+.2f} dB" for label, gain in gains.items())
              + f". The paper (256 px): L-PSNR {PAPER['none']} dB without attack, "
              f"{PAPER['jpeg90']} / {PAPER['jpeg70']} dB after JPEG 90 / 70.", ""]
    rows = []
    for share in SHARES:
        rows.append([f"{share:.0%}"] + [
            f"{_mean(records, f'lpsnr_paste_{int(share * 100)}_{_label(q)}'):.2f}"
            for q in qualities])
    lines.append(common.markdown_table(["paste share"] + [_label(q) for q in qualities], rows))
    rows = []
    for kind in TAMPERS:
        for quality in (None, 90):
            key = f"{kind}_10_{_label(quality)}"
            immunized_db, never_db = _mean(records, f"true_mask_{key}"), _mean(
                records, f"never_{key}")
            rows.append([kind, _label(quality), f"{immunized_db:.2f}", f"{never_db:.2f}",
                         f"{immunized_db - never_db:+.2f}"])
    lines += ["", "Imuge effect: the same tamper and true mask on the immunized and on the "
              "never-immunized photo.", ""]
    lines.append(common.markdown_table(
        ["10 % tamper", "received as", "immunized", "never immunized", "effect"], rows))
    lines += ["", f"Capacity: {cap['data_coefficients']} data coefficients per 8 x 8 block "
              f"(lattice step {cap['data_step']:g}), {cap['bits_per_block']} bits per block; "
              f"a {cap['record_bits']}-bit record per {cap['cell']} x {cap['cell']} cell in "
              f"{cap['copies']} copies: code rate {cap['code_rate']:.2f}, "
              f"{cap['carried_bits_per_mp']:,.0f} carried and "
              f"{cap['reference_bits_per_mp']:,.0f} reference bits per megapixel. Mean "
              f"PSNR(I, I_M) here {_mean(records, 'psnr'):.2f} dB."]
    return "\n".join(lines)


def measure(args) -> dict:
    from imuge_tf.evaluation import _donor_for
    from imuge_tf.inference import Imuge
    from imuge_tf.io import read_image

    results = common.provenance()
    imuge = Imuge.load(args.model) if args.model else Imuge.from_pretrained()
    paths = sorted(p for p in glob.glob(os.path.join(args.data, "*"))
                   if p.lower().endswith((".jpg", ".jpeg", ".png")))[:args.limit]
    qualities = TELEA_QUALITIES if args.quick else QUALITIES
    photos = [read_image(path) for path in paths]
    records = []
    for index, (path, photo) in enumerate(zip(paths, photos)):
        common.log(f"{os.path.basename(path)} {photo.shape[1]}x{photo.shape[0]}")
        donor = _donor_for(photo, photos[(index + 1) % len(photos)])
        records.append(evaluate_photo(imuge, os.path.basename(path), photo, donor, index,
                                      qualities))
    results["load_average"]["after"] = common.load_average()
    return {**results, "data": os.path.relpath(os.path.abspath(args.data), common.REPO_ROOT),
            "model": args.model, "refiner": imuge.refiner is not None,
            "qualities": list(qualities), "records": records,
            "gains": gains_over_telea(records), "capacity": capacity()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="folder of photos at native size")
    parser.add_argument("--model", default=None, help="model folder (default: shipped)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="lossless, JPEG 90 and 75 only")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    common.require_unless_render_only(parser, args, "data")
    common.measure_and_publish(NAME, args, measure, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
