"""How close the attack layer's JPEG is to the real codec, and what the attack layer costs.

    python benchmarks/jpeg_fidelity.py [--photos N] [--data DIR] [--repeats 3]
        [--steps 4] [--attack-calls 10] [--no-write]

Measures, prints, and writes into its section of BENCHMARKS.md:

1. Fidelity: PSNR against Pillow's libjpeg (decode(encode(x, quality=q)), 4:2:0, Pillow's
   default decoder; `imuge_tf.attacks.evaluation.jpeg_attack`) at QF 10, 30, 50, 70, 90, 95 on
   whole real photos (the bundled scikit-image photos, or every image in `--data DIR`), per QF
   the median and the minimum over the photos, of
   - `simulate_jpeg` (the differentiable model used in training),
   - `straight_through_jpeg` (its forward pass is `real_jpeg`: TF's encoder, accurate IDCT),
   - TF's codec itself on the uint8 photo (`tf.image.adjust_jpeg_quality`), for reference,
   - TF's encoder decoded with `tf.io.decode_jpeg(..., dct_method="INTEGER_ACCURATE")`
     (libjpeg's accurate IDCT, which Pillow uses; TF's default is the fast one),
   - and, for scale, the JPEG error itself (the input photo against Pillow's decode).
   Aim: `simulate_jpeg` at 40 dB or more at every QF from 30 up, judged on the minimum over the
   photos (QF 10 is reported, not judged).
2. Cost of the attack layer as a share of a train step of the demo config (aim: 15 % or less):
   the median time of `tf.function` of `AttackPipeline(**attack_arguments(config))` forward +
   backward (the gradient of a fixed random projection of the attacked batch with respect to
   the immunized input) on demo-sized batches from
   `make_dataset(photos, image_size=128, batch_size=8, seed=0)`, against the median time of
   `tf.function(model.train_step)` of the same config (`build_imuge` + `compile_imuge`) on the
   same batches. The first 2 calls of each function are excluded (tracing the train step takes
   most of a minute). The train step is timed at progressive stage 1 (step 0, the cheapest
   step, so the largest share) and at the final stage (its step counter moved forward, as in
   `train_throughput.py`). Attack and train-step timings alternate in rounds, so background
   load hits both alike. Everything is done twice: with the config's
   `real_jpeg_probability` (0 in the demo config) and with 0.5.

Runs in about 5 to 8 minutes on 2 busy CPU cores. Timings on a shared machine are noisy: the
load average before and after is recorded, and medians are reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import common
import numpy as np
import tensorflow as tf
from PIL import Image

from imuge_tf.attacks.evaluation import jpeg_attack
from imuge_tf.attacks.jpeg import simulate_jpeg, straight_through_jpeg
from imuge_tf.attacks.pipeline import AttackPipeline
from imuge_tf.config import load_config
from imuge_tf.data import find_images, make_dataset
from imuge_tf.models.factory import attack_arguments, build_imuge, compile_imuge
from imuge_tf.samples import SAMPLE_PHOTO_NAMES, sample_photos

SECTION = "jpeg_fidelity"
QUALITIES = (10, 30, 50, 70, 90, 95)
FIDELITY_AIM_DB = 40.0
FIDELITY_AIM_FROM_QF = 30
COST_SHARE_AIM = 0.15
REAL_JPEG_PROBABILITY = 0.5
EXCLUDED_CALLS = 2
BATCHES = 6  # distinct batches cycled through, drawn once before timing
CODECS = ("simulate_jpeg", "straight_through_jpeg", "TF adjust_jpeg_quality",
          "TF, accurate IDCT", "input (JPEG error)")


# --------------------------------------------------------------------------------------------
# 1. Fidelity
# --------------------------------------------------------------------------------------------


def psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


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


def fidelity(photos: list, names: list) -> dict:
    """{codec: {quality: [PSNR per photo]}} against Pillow, and the worst photo per cell."""
    values = {codec: {q: [] for q in QUALITIES} for codec in CODECS}
    for index, (name, image) in enumerate(zip(names, photos)):
        common.log(f"fidelity {index + 1}/{len(photos)}: {name} {image.shape[1]}x"
                   f"{image.shape[0]}")
        for quality in QUALITIES:
            reference, _ = jpeg_attack(image, quality)
            for codec, output in codec_outputs(image, quality).items():
                values[codec][quality].append(psnr(output, reference))
    return values


def summarize_fidelity(values: dict, names: list) -> dict:
    summary = {}
    for codec, by_quality in values.items():
        summary[codec] = {}
        for quality, psnrs in by_quality.items():
            worst = int(np.argmin(psnrs))
            summary[codec][quality] = {"median": statistics.median(psnrs), "min": psnrs[worst],
                                       "worst": names[worst]}
    return summary


def verdict(quality: int, minimum: float) -> str:
    if quality < FIDELITY_AIM_FROM_QF:
        return "n/a"
    return "PASS" if minimum >= FIDELITY_AIM_DB else "FAIL"


def _db(value: float) -> str:
    return "identical" if value == float("inf") else f"{value:.1f}"


# --------------------------------------------------------------------------------------------
# 2. Cost of the attack layer
# --------------------------------------------------------------------------------------------


def _sync(outputs) -> None:
    """Fetches one number from each output, so the work is surely done."""
    for tensor in tf.nest.flatten(outputs):
        float(tf.reshape(tensor, [-1])[0])


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
    """Seconds of each of `count` calls, cycling through `batches` from position `start`."""
    seconds = []
    for index in range(start, start + count):
        began = time.perf_counter()
        _sync(function(batches[index % len(batches)]))
        seconds.append(time.perf_counter() - began)
    return seconds


def attack_cost(config, batches, args, label: str) -> dict:
    """Attack layer and train step medians at the first and the final stage for `config`."""
    arguments = attack_arguments(config)
    pipeline = AttackPipeline(**arguments)
    attack = attack_forward_backward(pipeline, batches[0]["image"].shape)
    common.log(f"[{label}] tracing the attack layer")
    began = time.perf_counter()
    _time_calls(attack, batches, 0, EXCLUDED_CALLS)
    attack_first = time.perf_counter() - began

    common.log(f"[{label}] building the model, tracing the train step")
    model = compile_imuge(build_imuge(config), config)
    train_step = tf.function(model.train_step)
    began = time.perf_counter()
    _time_calls(lambda batch: train_step(batch)["L_G"], batches, 0, EXCLUDED_CALLS)
    trace_seconds = time.perf_counter() - began

    step_function = lambda batch: train_step(batch)["L_G"]  # noqa: E731
    phases = []
    final_step = common.final_stage_step(config)
    for phase, at_step in (("stage 1 (start)", 0), ("final stage", final_step)):
        model.optimizer.iterations.assign(at_step)
        schedule = common.describe_schedule(model, at_step)
        if at_step:  # the first call in a new stage runs its branch for the first time
            _time_calls(step_function, batches, 0, 1)
        attack_seconds, step_seconds = [], []
        for round_index in range(args.repeats):
            common.log(f"[{label}] {phase}: round {round_index + 1}/{args.repeats}")
            attack_seconds += _time_calls(attack, batches, round_index, args.attack_calls)
            step_seconds += _time_calls(step_function, batches, round_index, args.steps)
            model.optimizer.iterations.assign(at_step)
        attack_median = statistics.median(attack_seconds)
        step_median = statistics.median(step_seconds)
        phases.append({"phase": phase, "schedule": schedule,
                       "attack": common.spread(attack_seconds),
                       "step": common.spread(step_seconds),
                       "share": attack_median / step_median})
    return {"label": label, "real_jpeg_probability": pipeline.real_jpeg_probability,
            "attack_first_calls": attack_first, "trace_seconds": trace_seconds,
            "phases": phases}


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def load_photos(args) -> tuple[list, list, str]:
    """(photos, names, label): whole uint8 RGB photos, at most `--photos` of them."""
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
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md")
    args = parser.parse_args(argv)
    for name in ("repeats", "steps", "attack_calls"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.photos < 0:
        parser.error("--photos must be >= 0")
    return args


def run(args) -> dict:
    started = time.perf_counter()
    results = {"args": args, "load_before": common.load_average(), "niceness": os.nice(0)}
    photos, names, results["data_label"] = load_photos(args)
    results["fidelity"] = summarize_fidelity(fidelity(photos, names), names)
    results["cost"] = []
    if not args.skip_cost:
        config = load_config(args.config)
        results["config"] = config
        size, batch_size = config.model.image_size, config.train.batch_size
        data = config.data
        dataset, _ = make_dataset(
            photos, image_size=size, batch_size=batch_size, seed=0,
            load_size=data.load_size or None, mask_area_range=data.mask_area_range,
            mask_largest_range=data.mask_largest_range, mask_max_regions=data.mask_max_regions,
            mask_shapes=data.mask_shapes)
        iterator = iter(dataset)
        batches = [next(iterator) for _ in range(BATCHES)]
        settings = [(f"real_jpeg_probability {config.attacks.real_jpeg_probability:g} "
                     "(config)", config)]
        if config.attacks.real_jpeg_probability != REAL_JPEG_PROBABILITY:
            override = f"attacks.real_jpeg_probability={REAL_JPEG_PROBABILITY}"
            settings.append((f"real_jpeg_probability {REAL_JPEG_PROBABILITY:g}",
                             load_config(args.config, overrides=[override])))
        for label, setting in settings:
            results["cost"].append(attack_cost(setting, batches, args, label))
    results["load_after"] = common.load_average()
    results["seconds"] = time.perf_counter() - started
    return results


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def fidelity_rows(results) -> list:
    fidelity_summary = results["fidelity"]
    rows = []
    for quality in QUALITIES:
        row = [quality]
        for codec in CODECS:
            cell = fidelity_summary[codec][quality]
            row.append(f"{_db(cell['median'])} / {_db(cell['min'])}")
        simulation = fidelity_summary["simulate_jpeg"][quality]
        row.append(f"{verdict(quality, simulation['min'])} (worst: {simulation['worst']})")
        rows.append(row)
    return rows


FIDELITY_HEADERS = ["QF", *CODECS, f"simulate_jpeg >= {FIDELITY_AIM_DB:.0f} dB (min)"]


def cost_rows(results) -> list:
    rows = []
    for cost in results["cost"]:
        for phase in cost["phases"]:
            share = phase["share"]
            rows.append([cost["label"], f"{phase['phase']} (`{phase['schedule']}`)",
                         f"{1000 * phase['attack'].median:.0f} "
                         f"({1000 * phase['attack'].low:.0f}-{1000 * phase['attack'].high:.0f})",
                         f"{1000 * phase['step'].median:.0f} "
                         f"({1000 * phase['step'].low:.0f}-{1000 * phase['step'].high:.0f})",
                         f"{100 * share:.1f} %",
                         "PASS" if share <= COST_SHARE_AIM else "FAIL"])
    return rows


COST_HEADERS = ["attack layer", "train step at", "attack fwd+bwd ms, median (range)",
                "train step ms, median (range)", "share", f"aim <= {100 * COST_SHARE_AIM:.0f} %"]


def _plain_table(headers, rows) -> list:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    return ["   " + line.rstrip() for line in lines]


def _cost_setup(results) -> str:
    args, config = results["args"], results["config"]
    return (f"config `{config.name}` ({config.model.image_size} px, batch "
            f"{config.train.batch_size}), {BATCHES} batches from `make_dataset(..., seed=0)` "
            f"cycled; per stage {args.repeats} rounds of {args.attack_calls} attack calls then "
            f"{args.steps} train steps; first {EXCLUDED_CALLS} calls of each function excluded")


def report_text(results) -> str:
    facts = common.machine_facts()
    lines = [
        f"jpeg_fidelity: data: {results['data_label']}",
        f"machine: {facts['cpus']} CPUs, {facts['cpu']}; TensorFlow {facts.get('tensorflow')}; "
        f"load average before {results['load_before']}, after {results['load_after']}; "
        f"niceness {results['niceness']}",
        "",
        "1. PSNR against Pillow's libjpeg (4:2:0), whole photos, median / min over photos (dB)",
        *_plain_table(FIDELITY_HEADERS, fidelity_rows(results)),
    ]
    if results["cost"]:
        lines += ["", "2. attack layer (forward + backward) vs train step: " + _cost_setup(results)]
        lines += _plain_table(COST_HEADERS, cost_rows(results))
        for cost in results["cost"]:
            lines.append(f"   [{cost['label']}] first {EXCLUDED_CALLS} calls: attack layer "
                         f"{cost['attack_first_calls']:.1f} s, train step "
                         f"{cost['trace_seconds']:.0f} s (excluded)")
    lines += ["", "timings are noisy: another process shares the CPUs (see the load average)",
              f"total run time {results['seconds']:.0f} s"]
    return "\n".join(lines)


def report_markdown(results) -> str:
    facts = common.machine_facts()
    lines = [
        "## JPEG fidelity and attack-layer cost (`benchmarks/jpeg_fidelity.py`)",
        "",
        f"- date: {common.utc_now()}",
        f"- machine: {facts['cpus']} CPUs, {facts['cpu']}; {facts['os']}; load average "
        f"(1/5/15 min) {results['load_before']} before, {results['load_after']} after",
        f"- software: TensorFlow {facts.get('tensorflow')}, Keras {facts.get('keras')}, "
        f"Python {facts['python']}",
        f"- data: {results['data_label']}",
        f"- command: `{common.command_line()}`",
        "",
        "PSNR against Pillow's libjpeg (`decode(encode(x, quality=q))`, 4:2:0, Pillow's "
        "default decoder) on whole photos, median / min over the photos, in dB. "
        "`straight_through_jpeg`'s forward pass is `real_jpeg` (TF's encoder, decoded with "
        "the accurate IDCT); `tf.image.adjust_jpeg_quality` decodes with the fast IDCT; "
        "\"TF, accurate IDCT\" is TF's encoder decoded with "
        "`dct_method=\"INTEGER_ACCURATE\"`; \"input\" is the "
        "JPEG error itself, for scale. "
        f"Aim: `simulate_jpeg` >= {FIDELITY_AIM_DB:.0f} dB on every photo at QF "
        f">= {FIDELITY_AIM_FROM_QF}.",
        "",
        common.markdown_table(FIDELITY_HEADERS, fidelity_rows(results)),
    ]
    if results["cost"]:
        lines += [
            "",
            "Attack layer `AttackPipeline(**attack_arguments(config))` in a `tf.function`, "
            "forward + backward (gradient w.r.t. the immunized input), against "
            "`tf.function(model.train_step)` of the same config; "
            + _cost_setup(results) + f". Aim: attack layer <= {100 * COST_SHARE_AIM:.0f} % of "
            f"a train step. Run at niceness {results['niceness']}; on a shared machine the "
            "timings are noisy (see the load average): medians, with the range.",
            "",
            common.markdown_table(COST_HEADERS, cost_rows(results)),
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    results = run(args)
    print(report_text(results))
    if not args.no_write:
        path = common.update_section(SECTION, report_markdown(results))
        common.log(f"wrote the '{SECTION}' section of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
