"""The training levers compared at an equal budget (issue 6): one short run per arm, each
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
photos and on never-immunized photos; and PSNR(I, I_M).
"""

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (REPO_ROOT, command_line, log, machine_facts, markdown_table,  # noqa: E402,I001
                    update_section, utc_now)

# name -> (what it changes, config overrides on top of configs/demo.yaml)
MILD_ATTACKS = ["attacks.skip_probability=0.25", "attacks.noise_stddev=0.02",
                "attacks.jpeg_quality_range=[70,95]"]
ARMS = {
    "demo": ("configs/demo.yaml before issue 6 (pre-fill, 8-bit I_M, PSNR hinge at 36 dB, "
             "never-immunized and residual-removal samples)", []),
    "mild": ("+ milder benign attacks (a quarter of samples unattacked, noise sigma 0.02 "
             "instead of 0.05, JPEG quality 70-95 instead of 50-95)", MILD_ATTACKS),
    "mild_shift": ("+ milder attacks + context shift (every U-Net also sees its input shifted "
                   "by half the image)", MILD_ATTACKS + ["model.context_shift=true"]),
    "mild_shift_enc": ("+ milder attacks + context shift + E trained by L_cls from the first "
                       "step (weight 0.1)",
                       MILD_ATTACKS + ["model.context_shift=true",
                                       "loss.encoder_classification_weight=0.1"]),
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
    started = time.monotonic()
    with open(f"{workdir}.log", "a") as stream:
        result = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SystemExit(f"{name}: training failed (exit {result.returncode}); see "
                         f"{workdir}.log")
    return workdir, time.monotonic() - started


def evaluate_arm(workdir, args):
    from imuge_tf.evaluation import run_evaluation
    from imuge_tf.inference import Imuge

    imuge = Imuge.load(workdir)
    summary = run_evaluation(imuge, args.heldout, os.path.join(workdir, "evaluation"),
                             limit=args.limit, seed=args.seed, quick=True, progress=False)
    return summary


def arm_row(name, summary):
    row = [name, f"{summary['immunization']['psnr_immunized']:.2f}"]
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
        workdir, seconds = train_arm(name, overrides, args)
        log(f"{name}: evaluating on {args.heldout}")
        summary = evaluate_arm(workdir, args)
        rows.append(arm_row(name, summary))
        notes.append(f"- `{name}`: {description}; overrides "
                     f"`{' '.join(overrides) or '(none)'}`")
    header = ["arm", "PSNR(I, I_M)"] + [f"{label} ({column})" for column in COLUMNS
                                        for _, label, _ in MEASURES]
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
