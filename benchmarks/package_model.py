"""Ships a trained work directory as the package's demo model (imuge_tf/pretrained/).

    python benchmarks/package_model.py --workdir workdirs/demo --heldout HELDOUT_DIR \
        --command "python train.py --config demo --data /tmp/photos/train --workdir workdirs/demo"

1. copies the work directory's inference networks (encoder/verifier/decoder .keras and
   imuge.json) into imuge_tf/pretrained/;
2. calibrates the verdict thresholds on the held-out photos (`imuge_tf.inference.calibrate`:
   untampered immunized and never-immunized photos under the benign attacks of
   `inference.CALIBRATION_ATTACKS`, and pasted photos) and stores
   them in the shipped imuge.json;
3. writes imuge_tf/pretrained/TRAINING.md: the training command, the config, the per-epoch
   log (read from the run's TensorBoard events), the calibration, and the file sizes.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import log, machine_facts, markdown_table, utc_now  # noqa: E402,I001

COLUMNS = (("epoch_stage", "stage", 0), ("epoch_decoupled", "decoupled", 0),
           ("epoch_L_G", "L_G", 4), ("epoch_L_R", "L_R", 4), ("epoch_L_C", "L_C", 3),
           ("epoch_L_cls", "L_cls", 3), ("epoch_psnr_immunized", "PSNR(I, I_M)", 2),
           ("epoch_psnr_recovered", "PSNR(I, I_R)", 2), ("epoch_l_psnr", "L-PSNR", 2))
CALIBRATION_SIZES = (128, 256)  # square crops: the working size and twice it (any-size path)


def epoch_log(workdir):
    """{tag: {epoch: value}} from the run's TensorBoard training events."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(workdir, "logs", "train"),
                              size_guidance={"tensors": 0})
    events.Reload()
    values = {}
    for tag in events.Tags()["tensors"]:
        values[tag] = {event.step: float(tf.make_ndarray(event.tensor_proto))
                       for event in events.Tensors(tag)}
    return values


def log_table(values):
    epochs = sorted(values.get("epoch_L_G", {}))
    rows = []
    for epoch in epochs:
        rows.append([epoch + 1] + [
            f"{values[tag][epoch]:.{digits}f}" if epoch in values.get(tag, {}) else "-"
            for tag, _, digits in COLUMNS])
    return markdown_table(["epoch"] + [label for _, label, _ in COLUMNS], rows)


def half_parity(full, half, photos):
    """How far the float16-stored model is from the float32 one, on the same photos."""
    import numpy as np

    from imuge_tf.scoring import psnr

    immunize_levels, differing, probability, recovered_psnr = [], [], [], []
    for photo in photos:
        a, b = full.immunize(photo), half.immunize(photo)
        immunize_levels.append(int(np.abs(a.astype(int) - b.astype(int)).max()))
        differing.append(float(np.mean(a != b)))
        probability.append(float(np.abs(full.probability(a) - half.probability(a)).max()))
        mask = np.zeros(photo.shape[:2], bool)
        mask[photo.shape[0] // 4: photo.shape[0] // 2, photo.shape[1] // 4: photo.shape[1] // 2] \
            = True
        recovered_psnr.append(psnr(full.recover_with_mask(a, mask),
                                   half.recover_with_mask(a, mask)))
    return {"immunized_max_level_difference": max(immunize_levels),
            "immunized_differing_pixels_max_share": round(max(differing), 4),
            "probability_max_difference": round(max(probability), 5),
            "recovered_min_psnr_between_the_two_db": round(min(recovered_psnr), 2)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--heldout", required=True, help="held-out photos for calibration")
    parser.add_argument("--command", required=True, help="the exact training command")
    parser.add_argument("--notes", default="", help="extra text for TRAINING.md")
    args = parser.parse_args(argv)

    from imuge_tf.data import find_images
    from imuge_tf.evaluation import load_photo
    from imuge_tf.inference import (
        CALIBRATION_ATTACKS,
        HALF_SUFFIX,
        PRETRAINED_DIR,
        Imuge,
        calibrate,
        save_half,
    )

    source = os.path.join(args.workdir, "inference")
    os.makedirs(PRETRAINED_DIR, exist_ok=True)
    for name in os.listdir(PRETRAINED_DIR):  # a clean folder: no stale weights
        if name != "TRAINING.md":
            os.remove(os.path.join(PRETRAINED_DIR, name))
    full = Imuge.load(source)
    # float16 storage halves the files (3 x 12.8 MB of float32 is over the 25 MB budget);
    # the parity below shows what it costs.
    with open(os.path.join(source, "imuge.json")) as handle:
        metadata = json.load(handle)
    metadata["networks"] = {}
    for name in ("encoder", "verifier", "decoder"):
        filename = f"{name}{HALF_SUFFIX}"
        save_half(getattr(full, name), os.path.join(PRETRAINED_DIR, filename))
        metadata["networks"][name] = filename
    with open(os.path.join(PRETRAINED_DIR, "imuge.json"), "w") as handle:
        json.dump(metadata, handle, indent=2)
    log(f"stored {source} in float16 in {PRETRAINED_DIR}")

    imuge = Imuge.load(PRETRAINED_DIR)
    paths = sorted(find_images(args.heldout))
    parity = half_parity(full, imuge, [load_photo(path, 256) for path in paths])
    log(f"float16 parity: {parity}")
    photos = [load_photo(path, size) for path in paths for size in CALIBRATION_SIZES]
    report = calibrate(imuge, photos)
    log(f"thresholds: {report['thresholds']}")

    with open(os.path.join(PRETRAINED_DIR, "imuge.json")) as handle:
        metadata = json.load(handle)
    sizes = {name: os.path.getsize(os.path.join(PRETRAINED_DIR, name))
             for name in sorted(os.listdir(PRETRAINED_DIR)) if not name.endswith(".md")}
    total_mb = sum(sizes.values()) / 1e6

    def stats(key):
        values = report[key]
        return f"min {min(values):.4f}, median {sorted(values)[len(values) // 2]:.4f}, " \
               f"max {max(values):.4f}"

    text = "\n".join([
        "# The shipped demo model",
        "",
        f"Packaged {utc_now()} by `benchmarks/package_model.py` from `{args.workdir}` "
        f"(step {metadata['step']}), on {machine_facts().get('cpu', 'a CPU')}.",
        "",
        "## How it was trained",
        "",
        "```bash",
        "python benchmarks/split_photos.py --data PHOTOS --out /tmp/photos",
        args.command,
        "```",
        "",
        f"Config `{metadata['config_name']}` (configs/demo.yaml, resolved in imuge.json), "
        f"{metadata['image_size']} px. Training photos: 64 of the 73 in shared/data/photos "
        "(Debian wallpapers, licences in its SOURCES.md); every 8th file in sorted order and "
        "scikit-image's photos are held out.",
        "",
        args.notes,
        "",
        "## The training log (epoch means of the training batches)",
        "",
        log_table(epoch_log(args.workdir)),
        "",
        "L_C is the fidelity hinge: the mean shortfall in dB of PSNR(I, I_M) below the config's "
        "target, before its weight. PSNR(I, I_M) is before attacks; PSNR(I, I_R) and L-PSNR "
        "(inside the true tampered area) are of the recovery from the attacked batch.",
        "",
        "## Verdict calibration",
        "",
        f"On {len(paths)} held-out photos as centred squares of {CALIBRATION_SIZES} px, "
        f"under {', '.join(CALIBRATION_ATTACKS)} (real codecs; "
        "`imuge_tf.inference.calibrate`): share of pixels flagged "
        "(probability > 0.5) on untampered immunized photos: "
        f"{stats('untampered_immunized_flagged')}; "
        f"on never-immunized photos: {stats('never_immunized_flagged')}; on immunized photos "
        f"with a pasted patch: {stats('tampered_flagged')}.",
        f"Stored thresholds: `{json.dumps(report['thresholds'])}`.",
        "",
        "## float16 storage",
        "",
        "The weights are stored in float16 (`*.f16.npz`, one array per variable, keyed by its "
        "Keras variable path and loaded by name) and run in float32. Against the "
        f"float32 model on {len(paths)} held-out photos at 256 px: `{json.dumps(parity)}`. "
        "With a hidden thumbnail, a residual a fraction of a level away can put a cell's mean "
        "on the neighbouring lattice point, which carries the same message, so a few cells "
        "differ by a lattice step or more; the recovered photos are what counts.",
        "",
        "## Files",
        "",
        markdown_table(["file", "bytes"], [[name, f"{size:,}"] for name, size in sizes.items()])
        + f"\n\nTotal {total_mb:.1f} MB (limit 25 MB).",
        "",
    ])
    with open(os.path.join(PRETRAINED_DIR, "TRAINING.md"), "w") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
