"""Latency of the deployables: the working-scale encoder per runtime and the served verifier +
decoder (the 12-megapixel figures, camera model included, are benchmarks/native_quality.py's).

    python benchmarks/latency.py [--model PATH] [--repeats 7] [--sizes 128 256] [--out DIR]
    python benchmarks/latency.py --render-only

- Encoder, one 1 x S x S x 3 image, at each --sizes (the networks are fully convolutional, so
  the same weights run at 256 px; the TFLite models are converted at each size): Keras (eager
  call and tf.function), the exported SavedModel, TFLite fp32 / fp16 / dynamic range run by
  ai_edge_litert's Interpreter.
- Verifier + decoder: the TF Serving SavedModel called in process (no HTTP): serving_default
  on PNG bytes of the bundled photos, one per call and batches of --batch; verify_tensor on
  batches at the working size; and the Keras facade (verify + recover) for comparison.

Every figure is the median of --repeats timed runs after warm-up runs (the range is shown).
The model: --model, else the shipped demo weights, else a freshly built *untrained*
demo-config model (said in the output; latency does not depend on training). The figures go
to benchmarks/results/latency.json, and the `latency` section of BENCHMARKS.md is rendered
from that file (`--render-only` re-renders it without measuring).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (quietens TensorFlow before it is imported)

NAME = "latency"
WARMUP = 2


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

    common.log("no shipped weights: building an untrained demo-config model")
    config = load_config("demo")
    folder = os.path.join(scratch, "untrained-demo")
    save_inference_networks(build_imuge(config), config, folder, step=0)
    return Imuge.load(folder), ("a freshly built **untrained** demo-config model (no shipped "
                                "weights were found): the figures test the conversions, not "
                                "the model's quality")


def timed(function, repeats, inner=1, warmup=WARMUP) -> dict:
    """Milliseconds per call of `function` over `repeats` runs (each run: `inner` calls,
    averaged): median, low, high."""
    for _ in range(warmup):
        function()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            function()
        runs.append(1000.0 * (time.perf_counter() - start) / inner)
    result = common.spread(runs)
    return {"median": result.median, "low": result.low, "high": result.high}


def encoder_at(imuge, compiled, size, repeats, threads, scratch) -> list[dict]:
    """The encoder on one 1 x size x size x 3 image, per runtime."""
    import tensorflow as tf

    from imuge_tf import export as ex

    image = ex.representative_images(size, count=1)[0]
    tensor = tf.constant(image)
    common.log(f"encoder at {size} px: Keras")
    results = {
        "Keras (eager call)": timed(lambda: imuge.pipeline.encoder(tensor, training=False).numpy(),
                                    repeats, inner=3),
        "Keras (tf.function)": timed(lambda: compiled(tensor).numpy(), repeats, inner=3),
    }
    saved = ex.save_encoder(imuge.pipeline.encoder, size,
                            os.path.join(scratch, f"encoder-{size}"))
    serve = tf.saved_model.load(saved).signatures["serving_default"]
    common.log(f"encoder at {size} px: SavedModel")
    results["SavedModel (serving_default)"] = timed(
        lambda: serve(image=tensor)["residual"].numpy(), repeats, inner=3)
    for variant in ("fp32", "fp16", "dynamic"):
        common.log(f"encoder at {size} px: TFLite {variant}")
        runner = ex.TFLiteEncoder(ex.convert_saved_model(saved, variant), num_threads=threads)
        results[f"TFLite {variant}"] = timed(lambda r=runner: r(image), repeats, inner=3)
    return [{"size": size, "runtime": runtime, "ms": ms} for runtime, ms in results.items()]


def measure_serving(imuge, repeats, batch, scratch) -> dict:
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    from imuge_tf import export as ex
    from imuge_tf.samples import sample_photos

    common.log("verifier + decoder: exporting the serving SavedModel")
    version = ex.save_serving_model(imuge, os.path.join(scratch, "serving", "1"))
    signatures = tf.saved_model.load(version).signatures
    photos = sample_photos()
    blobs = []
    for photo in photos:
        buffer = io.BytesIO()
        Image.fromarray(photo).save(buffer, format="PNG")
        blobs.append(buffer.getvalue())
    batch_blobs = [blobs[i % len(blobs)] for i in range(batch)]
    serve = signatures["serving_default"]

    def one_by_one():
        for blob in batch_blobs:
            serve(images=tf.constant([blob]))["verdict"].numpy()

    common.log("verifier + decoder: serving_default")
    one = timed(one_by_one, repeats, warmup=1)
    many = timed(lambda: serve(images=tf.constant(batch_blobs))["verdict"].numpy(), repeats)
    working = tf.constant(np.concatenate(ex.representative_images(imuge.image_size,
                                                                  count=batch)))
    tensor = signatures["verify_tensor"]
    common.log("verifier + decoder: verify_tensor")
    tensor_many = timed(lambda: tensor(images=working)["verdict"].numpy(), repeats)
    common.log("verifier + decoder: the Keras facade")

    def facade():
        for photo in photos[:batch]:
            result = imuge.verify(photo)
            imuge.recover(photo, result)

    # Fewer runs: the facade is the slowest call and is only there for comparison.
    keras_many = timed(facade, max(1, repeats // 2), warmup=1)
    count = min(batch, len(photos))
    return {
        "photo_sizes": sorted({f"{p.shape[1]}x{p.shape[0]}" for p in photos}),
        "calls": [
            {"call": f"serving_default, the same {batch} PNGs one per call", "images": batch,
             "ms": one},
            {"call": f"serving_default, batch of {batch} PNGs", "images": batch, "ms": many},
            {"call": f"verify_tensor, batch of {batch} ({imuge.image_size} px floats)",
             "images": batch, "ms": tensor_many},
            {"call": f"Keras facade (verify + recover), {count} photos one by one",
             "images": count, "ms": keras_many},
        ],
    }


def measure(args) -> dict:
    import tensorflow as tf

    threads = args.threads or common.usable_cpus()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="imuge-latency-") as scratch:
        imuge, description = resolve_model(args.model, scratch)
        sizes = args.sizes or sorted({imuge.image_size, 256})
        common.log(f"model: {description}")
        compiled = tf.function(lambda x: imuge.pipeline.encoder(x, training=False))
        encoder = []
        for size in sizes:
            encoder += encoder_at(imuge, compiled, size, args.repeats, threads, scratch)
        serving = measure_serving(imuge, args.repeats, args.batch, scratch)
    return {
        "date": common.utc_now(),
        "command": common.command_line(),
        "seconds": time.monotonic() - started,
        "machine": common.machine_facts(),
        "load_average": common.load_average(),
        "model": description,
        "image_size": imuge.image_size,
        "repeats": args.repeats,
        "warmup": WARMUP,
        "tflite_threads": threads,
        "encoder": encoder,
        "serving": serving,
    }


def ms(figure) -> str:
    return f"{figure['median']:.1f} ms ({figure['low']:.1f}-{figure['high']:.1f})"


def per_second(figure, count) -> str:
    return (f"{1000 * count / figure['median']:.1f} img/s ({1000 * count / figure['high']:.1f}"
            f"-{1000 * count / figure['low']:.1f})")


def render(results) -> str:
    facts = results["machine"]
    earlier = results.get("immunize_12mp")
    lines = [
        "## Latency: encoder runtimes, served verifier + decoder"
        + (", 12 MP immunization" if earlier else ""),
        "",
        f"Measured {results['date']} by `{results['command']}` in {results['seconds']:.0f} s.",
        f"Model: {results['model']}; working size {results['image_size']}. Medians of "
        f"{results['repeats']} timed runs after {results['warmup']} warm-up runs (range in "
        f"brackets); TFLite with {results['tflite_threads']} interpreter thread(s) and its "
        "default XNNPACK delegate, TensorFlow with its default thread pools.",
        f"Machine: {facts['cpu']}, {facts['cpus']} CPUs, load {results['load_average']} at the "
        f"end; TensorFlow {facts.get('tensorflow')}, Keras {facts.get('keras')}. On a machine "
        "shared with other jobs the figures are upper bounds.",
        "",
        "### Encoder, one image",
        "",
        common.markdown_table(["input", "runtime", "latency"],
                              [[f"{row['size']} x {row['size']}", row["runtime"], ms(row["ms"])]
                               for row in results["encoder"]]),
        "",
        "### Verifier + decoder (the TF Serving SavedModel, called in process)",
        "",
        f"Bundled photos ({', '.join(results['serving']['photo_sizes'])} px) as PNG bytes: "
        "decoding, resizing, both networks, Otsu + opening, PNG encoding of mask and recovered "
        "photo at full size.",
        "",
        common.markdown_table(["call", "time", "throughput"],
                              [[row["call"], ms(row["ms"]), per_second(row["ms"], row["images"])]
                               for row in results["serving"]["calls"]]),
    ]
    if earlier:
        # Kept from the JSON as measured: this script no longer times 12 MP photos, so a new
        # measurement drops the part.
        lines += [
            "",
            f"### Immunizing a 12-megapixel photo ({earlier['photo']})",
            "",
            f"{earlier['what']} {earlier['note']}",
            "",
            common.markdown_table(["step", "time"],
                                  [[row["step"], ms(row["ms"])] for row in earlier["steps"]]),
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, metavar="PATH",
                        help="work directory or inference/ folder (default: shipped weights, "
                             "else an untrained demo model)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per figure")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="encoder sizes (default: the model's working size and 256)")
    parser.add_argument("--batch", type=int, default=8, help="serving batch size")
    parser.add_argument("--threads", type=int, default=None,
                        help="TFLite interpreter threads (default: the usable CPUs)")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    common.measure_and_publish(NAME, args, measure, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
