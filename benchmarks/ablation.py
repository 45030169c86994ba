"""The training levers compared at an equal budget: one short run per arm, each
evaluated on held-out photos with real codecs.

    python benchmarks/ablation.py --data TRAIN_DIR --heldout HELDOUT_DIR [--epochs 4] [--out DIR]
    python benchmarks/ablation.py --render-only

Every arm is `configs/demo.yaml` plus the overrides listed in ARMS, trained for the same
number of steps (`--epochs` x the config's steps per epoch) in `--workroot/<arm>`. A finished
arm is not retrained (the work directory resumes, and a complete run has nothing to do), so the
script can be rerun to re-evaluate, or after raising --epochs to train every arm further.

Each arm is then evaluated with `imuge_tf.evaluation.run_evaluation` (quick columns: no
attack, JPEG 90, JPEG 50) on the held-out photos; the table shows no attack and JPEG 90.
Columns: pixel F1 and AUC of the verifier; recovery L-PSNR with the true mask, Telea's on the
same mask, and the Imuge effect (the same pipeline on the never-immunized photo subtracted);
the share of pixels flagged on untampered immunized photos and on never-immunized photos;
PSNR(I, I_M); and, for the carrier arms, the median strength of the carrier in the immunized
photos (1 = as embedded; 0 = cancelled).

The figures go to benchmarks/results/ablation.json, and the `ablation` section of
BENCHMARKS.md is rendered from that file (`--render-only` re-renders it without training or
evaluating).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (quietens TensorFlow before it is imported)

NAME = "ablation"
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
                            "fidelity hinge at 34 dB instead of 36 (room for the carrier's own "
                            "cost); E free to cancel the carrier",
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
    command = [sys.executable, os.path.join(common.REPO_ROOT, "train.py"), "--config", "demo",
               "--data", args.data, "--workdir", workdir, "--quiet",
               "--set", f"train.epochs={args.epochs}"]
    for override in overrides:
        command += ["--set", override]
    common.log(f"{name}: training (or resuming) in {workdir}")
    with open(f"{workdir}.log", "a") as stream:
        result = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SystemExit(f"{name}: training failed (exit {result.returncode}); see "
                         f"{workdir}.log")
    return workdir


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


def measure_arm(name, args) -> tuple[dict, tuple]:
    """The arm's figures, and what they were evaluated on: (photos, size as the evaluation's
    settings name it)."""
    from imuge_tf.evaluation import run_evaluation
    from imuge_tf.inference import Imuge

    description, overrides = ARMS[name]
    workdir = train_arm(name, overrides, args)
    common.log(f"{name}: evaluating on {args.heldout}")
    imuge = Imuge.load(workdir)
    summary = run_evaluation(imuge, args.heldout, os.path.join(workdir, "evaluation"),
                             limit=args.limit, seed=args.seed, quick=True, progress=False)
    figures = {"description": description, "overrides": overrides,
               "psnr_immunized": summary["immunization"]["psnr_immunized"],
               "carrier_strength": carrier_strength(imuge, args.heldout, args.limit),
               "scores": {column: {key: summary["table1"][column][key]
                                   for key, _, _ in MEASURES} for column in COLUMNS}}
    return figures, (summary["photos"], summary["settings"].get("image_size"))


def measure(args) -> dict:
    from imuge_tf.config import load_config

    os.makedirs(args.workroot, exist_ok=True)
    train = load_config("demo").train
    arms, evaluated = {}, set()
    for name in args.arms:
        arms[name], on = measure_arm(name, args)
        evaluated.add(on)
    # Every arm sees the same photos; should that ever differ, the section must not hide it.
    if len(evaluated) != 1:
        raise SystemExit(f"error: the arms were evaluated on different photos: {evaluated}")
    photos, size = evaluated.pop()
    return {"date": common.utc_now(), "command": common.command_line(),
            "machine": common.machine_facts(), "epochs": args.epochs,
            "steps_per_epoch": train.steps_per_epoch, "batch_size": train.batch_size,
            "data": args.data, "heldout": args.heldout, "photos": photos, "image_size": size,
            "arms": arms}


def _evaluated_at(size) -> str:
    return "at their own size" if size == "native" else f"at {size} px"


def _figure(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def render(results) -> str:
    arms = results["arms"]
    notes = [f"- `{name}`: {arm['description']}; overrides "
             f"`{' '.join(arm['overrides']) or '(none)'}`" for name, arm in arms.items()]
    header = ["arm", "PSNR(I, I_M)", "carrier strength"] + [
        f"{label} ({column})" for column in COLUMNS for _, label, _ in MEASURES]
    rows = []
    for name, arm in arms.items():
        row = [name, _figure(arm["psnr_immunized"], 2), _figure(arm["carrier_strength"], 2)]
        for column in COLUMNS:
            row += [_figure(arm["scores"][column][key], digits) for key, _, digits in MEASURES]
        rows.append(row)
    return "\n".join([
        "## Ablation of the training levers at an equal budget (`benchmarks/ablation.py`)",
        "",
        f"Each arm: `configs/demo.yaml` plus its overrides, {results['epochs']} x "
        f"{results['steps_per_epoch']} steps of {results['batch_size']} photos from "
        f"`{results['data']}`; evaluated on {results['photos']} held-out photos from "
        f"`{results['heldout']}` {_evaluated_at(results['image_size'])} (donor tamper of "
        f"10-30 %, then no attack or real JPEG 90). {results['date']}; "
        f"{results['machine']['cpu']}. Command: `{results['command']}`.",
        "",
        *notes,
        "",
        common.markdown_table(header, rows),
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="folder of training photos")
    parser.add_argument("--heldout", help="folder of held-out photos")
    parser.add_argument("--workroot",
                        default=os.path.join(common.REPO_ROOT, "workdirs", "ablation"))
    parser.add_argument("--epochs", type=int, default=4, help="budget per arm, in epochs of "
                        "the demo config")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--limit", type=int, default=9, help="held-out photos to evaluate")
    parser.add_argument("--seed", type=int, default=0)
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    common.require_unless_render_only(parser, args, "data", "heldout")
    common.measure_and_publish(NAME, args, measure, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
