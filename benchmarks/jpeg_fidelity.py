"""How close the attack layer's JPEG is to the real codec, and what the attack layer costs.

    python benchmarks/jpeg_fidelity.py [--photos N] [--data DIR] [--config demo] [--repeats 3]
        [--steps 4] [--attack-calls 10] [--skip-cost] [--out DIR] [--render-only]

1. Fidelity: PSNR (`imuge_tf.scoring.psnr`) against Pillow's libjpeg (decode(encode(x, q)),
   4:2:0, Pillow's default decoder: `imuge_tf.attacks.evaluation.jpeg_attack`) at QF 10, 30,
   50, 70, 90 and 95 on whole photos (the bundled scikit-image photos, or those in `--data`),
   the median and the minimum over the photos, of `simulate_jpeg` (the differentiable model
   used in training), `straight_through_jpeg` (whose forward pass is `real_jpeg`), TF's codec
   (`tf.image.adjust_jpeg_quality`), TF's encoder decoded with the accurate IDCT, and the input
   itself (the JPEG error, for scale). Aim: `simulate_jpeg` >= 40 dB on every photo from QF 30
   up (QF 10 is reported, not judged).
2. Cost: `tf.function` of `AttackPipeline(**attack_arguments(config))` forward + backward (the
   gradient of a fixed random projection of the attacked batch w.r.t. the immunized input)
   against `tf.function(model.train_step)` of the same config, on the same `make_dataset`
   batches; the first calls of each (tracing) are not timed. The train step is timed at stage 1
   (step 0: the cheapest step, so the largest share) and at the final stage (step counter moved
   forward). Attack and train-step timings alternate in rounds, so background load hits both
   alike. With the config's `real_jpeg_probability` and with 0.5. Aim: 15 % of a step or less.

Figures go to benchmarks/results/jpeg_fidelity.json, and the `jpeg_fidelity` section of
BENCHMARKS.md is rendered from that file (`--render-only`: render without measuring). Minutes on
2 busy CPU cores; timings on a shared machine are noisy, so medians and the load are kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

import common
import numpy as np
import tensorflow as tf
from PIL import Image

from imuge_tf import scoring
from imuge_tf.attacks.evaluation import jpeg_attack
from imuge_tf.attacks.jpeg import simulate_jpeg, straight_through_jpeg
from imuge_tf.attacks.pipeline import AttackPipeline
from imuge_tf.config import load_config
from imuge_tf.data import find_images, make_dataset
from imuge_tf.models.factory import attack_arguments, build_imuge, compile_imuge
from imuge_tf.samples import SAMPLE_PHOTO_NAMES, sample_photos
from imuge_tf.training import _dataset_arguments

SECTION = "jpeg_fidelity"
QUALITIES = (10, 30, 50, 70, 90, 95)
FIDELITY_AIM_DB = 40
FIDELITY_AIM_FROM_QF = 30
COST_AIM_PERCENT = 15
REAL_JPEG_PROBABILITY = 0.5
EXCLUDED_CALLS = 2
BATCHES = 6  # distinct batches cycled through, drawn once before timing
CODECS = ("simulate_jpeg", "straight_through_jpeg", "TF adjust_jpeg_quality",
          "TF, accurate IDCT", "input (JPEG error)")


# --------------------------------------------------------------------------------------------
# 1. Fidelity
# --------------------------------------------------------------------------------------------


def _to_uint8(batch) -> np.ndarray:
    return np.clip(np.rint(batch[0].numpy() * 255.0), 0, 255).astype(np.uint8)


def codec_outputs(image: np.ndarray, quality: int) -> dict:
    """The photo through each codec (uint8, same size), keyed like CODECS."""
    floats = tf.constant(image[None].astype(np.float32) / 255.0)
    return {
        "simulate_jpeg": _to_uint8(simulate_jpeg(floats, quality)),
        "straight_through_jpeg": _to_uint8(straight_through_jpeg(floats, quality)),
        "TF adjust_jpeg_quality":
            tf.image.adjust_jpeg_quality(tf.constant(image), quality).numpy(),
        # The same encoder, decoded with libjpeg's accurate integer IDCT (JDCT_ISLOW, Pillow's
        # default) instead of tf.io.decode_jpeg's default fast one (JDCT_IFAST).
        "TF, accurate IDCT": tf.io.decode_jpeg(tf.io.encode_jpeg(image, quality=quality),
                                               dct_method="INTEGER_ACCURATE").numpy(),
        "input (JPEG error)": image,
    }


def _psnr(output: np.ndarray, reference: np.ndarray) -> float:
    # scoring.psnr caps at MAX_PSNR, which a large photo reaches with a single pixel value off
    # by one; the table says "identical" only for byte-for-byte equality (inf here, written
    # to the JSON as null).
    if np.array_equal(output, reference):
        return float("inf")
    return scoring.psnr(output, reference)


def fidelity(photos: list, names: list) -> dict:
    """Per QF, each codec's median and minimum PSNR against Pillow over the photos, and the
    photo where simulate_jpeg comes off worst."""
    scores = {(codec, quality): [] for codec in CODECS for quality in QUALITIES}
    for index, (name, image) in enumerate(zip(names, photos)):
        common.log(f"fidelity {index + 1}/{len(photos)}: {name} {image.shape[1]}x"
                   f"{image.shape[0]}")
        for quality in QUALITIES:
            reference, _ = jpeg_attack(image, quality)
            for codec, output in codec_outputs(image, quality).items():
                scores[codec, quality].append(_psnr(output, reference))
    rows = []
    for quality in QUALITIES:
        rows.append({
            "quality": quality,
            "psnr_db": {codec: {"median": statistics.median(scores[codec, quality]),
                                "min": min(scores[codec, quality])} for codec in CODECS},
            "simulate_jpeg_worst": names[int(np.argmin(scores["simulate_jpeg", quality]))]})
    return {"codecs": list(CODECS), "rows": rows,
            "note": "dB against Pillow's decode; null: byte-for-byte identical to it"}


# --------------------------------------------------------------------------------------------
# 2. Cost of the attack layer
# --------------------------------------------------------------------------------------------


def attack_forward_backward(pipeline: AttackPipeline, shape):
    """tf.function: the attack layer forward and the gradient w.r.t. the immunized input."""
    upstream = tf.random.stateless_normal(shape, seed=[1, 2])

    @tf.function
    def step(batch):
        immunized = batch["image"]
        with tf.GradientTape() as tape:
            tape.watch(immunized)
            outputs = pipeline(immunized, batch["donor"], batch["mask"], batch["seed"])
            projection = tf.reduce_sum(outputs["attacked"] * upstream)
        return tape.gradient(projection, immunized), outputs["mask"]

    return step


def _time_calls(function, batches, start: int, count: int) -> list:
    """Milliseconds of each of `count` calls, cycling through `batches` from `start`."""
    milliseconds = []
    for index in range(start, start + count):
        began = time.perf_counter()
        common.sync(function(batches[index % len(batches)]))
        milliseconds.append(1000 * (time.perf_counter() - began))
    return milliseconds


def attack_cost(config, batches, args, label: str) -> dict:
    """Attack layer and train step times at the first and the final stage for `config`."""
    pipeline = AttackPipeline(**attack_arguments(config))
    attack = attack_forward_backward(pipeline, batches[0]["image"].shape)
    common.log(f"[{label}] tracing the attack layer")
    _time_calls(attack, batches, 0, EXCLUDED_CALLS)

    common.log(f"[{label}] building the model, tracing the train step")
    model = compile_imuge(build_imuge(config), config)
    train_step = tf.function(model.train_step)

    def step_function(batch):
        return train_step(batch)["L_G"]

    _time_calls(step_function, batches, 0, EXCLUDED_CALLS)
    phases = []
    final_step = common.final_stage_step(config)
    for phase, at_step in (("stage 1 (start)", 0), ("final stage", final_step)):
        model.optimizer.iterations.assign(at_step)
        schedule = common.describe_schedule(model, at_step)
        if at_step:  # the first call in a new stage runs its branch for the first time
            _time_calls(step_function, batches, 0, 1)
        attack_ms, step_ms = [], []
        for round_index in range(args.repeats):
            common.log(f"[{label}] {phase}: round {round_index + 1}/{args.repeats}")
            attack_ms += _time_calls(attack, batches, round_index, args.attack_calls)
            step_ms += _time_calls(step_function, batches, round_index, args.steps)
            model.optimizer.iterations.assign(at_step)  # stay in the stage being measured
        attack_spread, step_spread = common.spread(attack_ms), common.spread(step_ms)
        phases.append({"phase": phase, "schedule": schedule,
                       "attack_ms": dataclasses.asdict(attack_spread),
                       "train_step_ms": dataclasses.asdict(step_spread),
                       "percent_of_step": 100 * attack_spread.median / step_spread.median})
    return {"label": label, "real_jpeg_probability": pipeline.real_jpeg_probability,
            "phases": phases}


def measure_cost(args, photos) -> dict:
    config = load_config(args.config)
    dataset, _ = make_dataset(photos, **_dataset_arguments(config), seed=0)
    iterator = iter(dataset)
    batches = [next(iterator) for _ in range(BATCHES)]
    settings = [(f"real_jpeg_probability {config.attacks.real_jpeg_probability:g} (config)",
                 config)]
    if config.attacks.real_jpeg_probability != REAL_JPEG_PROBABILITY:
        override = f"attacks.real_jpeg_probability={REAL_JPEG_PROBABILITY}"
        settings.append((f"real_jpeg_probability {REAL_JPEG_PROBABILITY:g}",
                         load_config(args.config, overrides=[override])))
    return {"config": {"name": config.name, "image_size": config.model.image_size,
                       "batch_size": config.train.batch_size},
            "batches": BATCHES, "rounds": args.repeats, "attack_calls": args.attack_calls,
            "train_steps": args.steps, "excluded_calls": EXCLUDED_CALLS,
            "settings": [attack_cost(setting, batches, args, label)
                         for label, setting in settings]}


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def load_photos(args) -> tuple[list, list, str]:
    """(photos, names, description): whole uint8 RGB photos, at most `--photos` of them."""
    if args.data:
        photos, names = [], []
        for path in find_images(args.data):
            if args.photos and len(photos) >= args.photos:
                break
            try:
                with Image.open(path) as image:
                    photos.append(np.asarray(image.convert("RGB")))
                names.append(path)
            except (OSError, ValueError) as error:
                common.log(f"skipping {path}: {error}")
        if not photos:
            raise SystemExit(f"no readable image in {args.data}")
        return photos, names, f"{len(photos)} photos from {args.data}"
    names = list(SAMPLE_PHOTO_NAMES[: args.photos or None])
    photos = sample_photos(names)
    return photos, names, f"{len(photos)} bundled scikit-image photos ({', '.join(names)})"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=0,
                        help="use the first N photos only (default: all)")
    parser.add_argument("--data", default=None,
                        help="folder of photos (default: the bundled scikit-image photos)")
    parser.add_argument("--config", default="demo", help="config for the cost part (demo)")
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds per stage")
    parser.add_argument("--steps", type=int, default=4, help="train steps timed per round")
    parser.add_argument("--attack-calls", type=int, default=10,
                        help="attack-layer calls timed per round")
    parser.add_argument("--skip-cost", action="store_true",
                        help="measure the fidelity only (part 1)")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    for name in ("repeats", "steps", "attack_calls"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.photos < 0:
        parser.error("--photos must be >= 0")
    return args


def measure(args) -> dict:
    results = common.provenance()
    results["niceness"] = os.nice(0)
    results["aims"] = {"fidelity_db": FIDELITY_AIM_DB, "fidelity_from_quality":
                       FIDELITY_AIM_FROM_QF, "attack_percent_of_step": COST_AIM_PERCENT}
    photos, names, results["data"] = load_photos(args)
    results["fidelity"] = fidelity(photos, names)
    results["cost"] = None if args.skip_cost else measure_cost(args, photos)
    results["load_average"]["after"] = common.load_average()
    return results


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _db(value) -> str:
    return "identical" if value is None or value == float("inf") else f"{value:.1f}"


def _ms(figures: dict) -> str:
    return f"{figures['median']:.0f} ({figures['low']:.0f}-{figures['high']:.0f})"


def render(results) -> str:
    """The `jpeg_fidelity` section of BENCHMARKS.md from the saved figures."""
    aims, table = results["aims"], results["fidelity"]
    rows = []
    for row in table["rows"]:
        cells = [f"{_db(row['psnr_db'][c]['median'])} / {_db(row['psnr_db'][c]['min'])}"
                 for c in table["codecs"]]
        worst = row["psnr_db"]["simulate_jpeg"]["min"]
        if row["quality"] < aims["fidelity_from_quality"]:
            verdict = "n/a"
        else:
            verdict = "PASS" if worst is None or worst >= aims["fidelity_db"] else "FAIL"
        rows.append([row["quality"], *cells, f"{verdict} (worst: {row['simulate_jpeg_worst']})"])
    lines = [
        "## JPEG fidelity and attack-layer cost (`benchmarks/jpeg_fidelity.py`)",
        "",
        *common.provenance_lines(results, f"- data: {results['data']}"),
        "",
        "PSNR against Pillow's libjpeg (`decode(encode(x, quality=q))`, 4:2:0, Pillow's "
        "default decoder) on whole photos, median / min over the photos, in dB. "
        "`straight_through_jpeg`'s forward pass is `real_jpeg` (TF's encoder, decoded with "
        "the accurate IDCT); `tf.image.adjust_jpeg_quality` decodes with the fast IDCT; "
        "\"TF, accurate IDCT\" is TF's encoder decoded with `dct_method=\"INTEGER_ACCURATE\"`; "
        "\"input\" is the JPEG error itself, for scale. Aim: `simulate_jpeg` >= "
        f"{aims['fidelity_db']:.0f} dB on every photo at QF >= {aims['fidelity_from_quality']}.",
        "",
        common.markdown_table(["QF", *table["codecs"],
                               f"simulate_jpeg >= {aims['fidelity_db']:.0f} dB (min)"], rows),
    ]
    cost = results["cost"]
    if cost:
        config, aim = cost["config"], aims["attack_percent_of_step"]
        rows = [[setting["label"], f"{phase['phase']} (`{phase['schedule']}`)",
                 _ms(phase["attack_ms"]), _ms(phase["train_step_ms"]),
                 f"{phase['percent_of_step']:.1f} %",
                 "PASS" if phase["percent_of_step"] <= aim else "FAIL"]
                for setting in cost["settings"] for phase in setting["phases"]]
        lines += [
            "",
            "Attack layer `AttackPipeline(**attack_arguments(config))` in a `tf.function`, "
            "forward + backward (gradient w.r.t. the immunized input), against "
            f"`tf.function(model.train_step)` of the same config; config `{config['name']}` "
            f"({config['image_size']} px, batch {config['batch_size']}), {cost['batches']} "
            f"batches from `make_dataset(..., seed=0)` cycled; per stage {cost['rounds']} rounds "
            f"of {cost['attack_calls']} attack calls then {cost['train_steps']} train steps; "
            f"first {cost['excluded_calls']} calls of each function excluded. Aim: attack layer "
            f"<= {aim:.0f} % of a train step. Run at niceness {results['niceness']}; on a shared "
            "machine the timings are noisy (see the load average): medians, with the range.",
            "",
            common.markdown_table(
                ["attack layer", "train step at", "attack fwd+bwd ms, median (range)",
                 "train step ms, median (range)", "share", f"aim <= {aim:.0f} %"], rows),
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    common.measure_and_publish(SECTION, parse_args(argv), measure, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
