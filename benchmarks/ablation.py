"""The training levers compared at an equal budget: one short run per arm, each
evaluated on held-out photos with real codecs.

    python benchmarks/ablation.py --data TRAIN_DIR --heldout HELDOUT_DIR [--epochs 4]

Every arm is `configs/demo.yaml` plus the overrides listed in ARMS, trained for the same
number of steps (`--epochs` x the config's 100 steps) in `--workroot/<arm>`. A finished arm is
not retrained (the work directory resumes, and a complete run has nothing to do), so the
script can be rerun to re-evaluate, or after raising --epochs to train every arm further.

Each arm is then evaluated with `imuge_tf.evaluation.run_evaluation` (quick columns: no
attack, JPEG 90, JPEG 50) on the held-out photos, and the table is printed and written to the
`ablation` section of BENCHMARKS.md. Columns: pixel F1 and AUC of the verifier; recovery
L-PSNR with the true mask, Telea's on the same mask, and the Imuge effect (the same pipeline
on the never-immunized photo subtracted); the share of pixels flagged on untampered immunized
photos and on never-immunized photos; PSNR(I, I_M); and, for the carrier arms, the median
strength of the carrier in the immunized photos (1 = as embedded; 0 = cancelled).
"""

import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (REPO_ROOT, command_line, log, machine_facts, markdown_table,  # noqa: E402,I001
                    update_section, utc_now)

# name -> (what it changes, config overrides on top of configs/demo.yaml). demo.yaml carries
# the carrier and the hidden thumbnail; the arms from before them turn them off (and put the
# fidelity hinge back at 36 dB), so that each arm's config stays what it was trained with.
NO_THUMBNAIL = ["model.hidden_thumbnail_step=0"]
BEFORE_CARRIER = ["model.carrier_amplitude=0", "loss.immunization_psnr_target=36"] + NO_THUMBNAIL
MILD_ATTACKS = ["attacks.skip_probability=0.25", "attacks.noise_stddev=0.02",
                "attacks.jpeg_quality_range=[70,95]"]
ARMS = {
    "demo": ("the demo config before the carrier and thumbnail (pre-fill, 8-bit I_M, PSNR "
             "hinge at 36 dB, never-immunized and residual-removal samples)", BEFORE_CARRIER),
    "mild": ("+ milder benign attacks (a quarter of samples unattacked, noise sigma 0.02 "
             "instead of 0.05, JPEG quality 70-95 instead of 50-95)",
             BEFORE_CARRIER + MILD_ATTACKS),
    "mild_shift": ("+ milder attacks + context shift (every U-Net also sees its input shifted "
                   "by half the image)",
                   BEFORE_CARRIER + MILD_ATTACKS + ["model.context_shift=true"]),
    "mild_shift_enc": ("+ milder attacks + context shift + E trained by L_cls from the first "
                       "step (weight 0.1)",
                       BEFORE_CARRIER + MILD_ATTACKS + ["model.context_shift=true",
                                                        "loss.encoder_classification_weight=0.1"]),
    "carrier_unprotected": ("the first arm + a fixed 4-level carrier added by E and read by V, "
                            "fidelity hinge at 34 dB instead of 36 (the carrier alone costs "
                            "36.2 dB); E free to cancel the carrier",
                            ["model.carrier_protect=false"] + NO_THUMBNAIL),
    "carrier": ("the previous arm, but E's learned residual cannot cancel the carrier (its "
                "local correlation with the pattern is removed)", NO_THUMBNAIL),
    "thumbnail": ("`configs/demo.yaml` as shipped: the carrier arm + a hidden thumbnail (I_M's "
                  "2 px cell means carry the cell means of the photo half an image away, QIM "
                  "step 6 levels; R's pre-fill reads it where it is intact)", []),
}
COLUMNS = ("none", "jpeg90")
MEASURES = (("f1", "F1", 3), ("auc", "AUC", 3), ("l_psnr_true_mask", "L-PSNR true mask", 2),
            ("l_psnr_telea", "Telea", 2), ("imuge_effect", "Imuge effect", 2),
            ("flagged_immunized", "flagged clean", 3),
            ("flagged_never_immunized", "flagged never-imm.", 3))


def train_arm(name, overrides, args):
    workdir = os.path.join(args.workroot, name)
    command = [sys.executable, os.path.join(REPO_ROOT, "train.py"), "--config", "demo",
               "--data", args.data, "--workdir", workdir, "--quiet",
               "--set", f"train.epochs={args.epochs}"]
    for override in overrides:
        command += ["--set", override]
    log(f"{name}: training (or resuming) in {workdir}")
    with open(f"{workdir}.log", "a") as stream:
        result = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SystemExit(f"{name}: training failed (exit {result.returncode}); see "
                         f"{workdir}.log")
    return workdir


def evaluate_arm(workdir, args):
    from imuge_tf.evaluation import run_evaluation
    from imuge_tf.inference import Imuge

    imuge = Imuge.load(workdir)
    summary = run_evaluation(imuge, args.heldout, os.path.join(workdir, "evaluation"),
                             limit=args.limit, seed=args.seed, quick=True, progress=False)
    return imuge, summary


def carrier_strength(imuge, heldout, limit):
    """Median strength of the carrier (24 px window, 1 = as embedded) over the immunized
    held-out photos, saved with 8 bits; None for a model without a carrier."""
    import numpy as np

    from imuge_tf.data import find_images
    from imuge_tf.evaluation import load_photo
    from imuge_tf.models.carrier import CarrierReader

    if getattr(imuge.encoder, "carrier", "none") != "embed":
        return None
    reader = CarrierReader(imuge.encoder.carrier_amplitude)
    strengths = []
    for path in find_images(heldout)[:limit]:
        immunized = imuge.immunize(load_photo(path, imuge.image_size))
        strength = reader(immunized[None].astype(np.float32) / 255.0)
        strengths.append(float(np.median(np.asarray(strength)[..., -1])))
    return float(np.median(strengths))


def arm_row(name, summary, strength):
    row = [name, f"{summary['immunization']['psnr_immunized']:.2f}",
           "-" if strength is None else f"{strength:.2f}"]
    for column in COLUMNS:
        scores = summary["table1"][column]
        row += [f"{scores[key]:.{digits}f}" for key, _, digits in MEASURES]
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder of training photos")
    parser.add_argument("--heldout", required=True, help="folder of held-out photos")
    parser.add_argument("--workroot", default=os.path.join(REPO_ROOT, "workdirs", "ablation"))
    parser.add_argument("--epochs", type=int, default=4, help="budget per arm, in epochs of "
                        "the demo config (100 steps of 8 images)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--limit", type=int, default=9, help="held-out photos to evaluate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)
    os.makedirs(args.workroot, exist_ok=True)

    rows, notes = [], []
    for name in args.arms:
        description, overrides = ARMS[name]
        workdir = train_arm(name, overrides, args)
        log(f"{name}: evaluating on {args.heldout}")
        imuge, summary = evaluate_arm(workdir, args)
        rows.append(arm_row(name, summary, carrier_strength(imuge, args.heldout, args.limit)))
        notes.append(f"- `{name}`: {description}; overrides "
                     f"`{' '.join(overrides) or '(none)'}`")
    header = ["arm", "PSNR(I, I_M)", "carrier strength"] + [
        f"{label} ({column})" for column in COLUMNS for _, label, _ in MEASURES]
    body = "\n".join([
        f"Each arm: `configs/demo.yaml` plus its overrides, {args.epochs} x 100 steps of 8 "
        f"photos from `{args.data}`; evaluated on {args.limit} held-out photos from "
        f"`{args.heldout}` at 128 px (donor tamper of 10-30 %, then no attack or real JPEG 90). "
        f"{utc_now()}; {machine_facts()['cpu']}. Command: `{command_line()}`.", "",
        *notes, "",
        markdown_table(header, rows),
    ])
    print(body)
    if not args.no_write:
        update_section("ablation", "## Ablation of the training levers at an equal budget "
                       "(`benchmarks/ablation.py`)\n\n" + body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
