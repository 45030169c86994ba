"""Latency of the deployables: the working-scale encoder per runtime and the served verifier +
decoder (the 12-megapixel figures, camera model included, are benchmarks/native_quality.py's).

    python benchmarks/latency.py [--model PATH] [--repeats 7] [--sizes 128 256] [--no-write]

- Encoder, one 1 x S x S x 3 image, at each --sizes (the networks are fully convolutional, so
  the same weights run at 256 px; the TFLite models are converted at each size): Keras (eager
  call and tf.function), the exported SavedModel, TFLite fp32 / fp16 / dynamic range run by
  ai_edge_litert's Interpreter.
- Verifier + decoder: the TF Serving SavedModel called in process (no HTTP): serving_default
  on PNG bytes of the bundled photos, one per call and batches of --batch; verify_tensor on
  batches at the working size; and the Keras facade (verify + recover) for comparison.

Every figure is the median of --repeats timed runs after warm-up runs (the range is shown).
The model: --model, else the shipped demo weights, else a freshly built *untrained*
demo-config model (said in the output; latency does not depend on training). Results go to the
`latency` section of BENCHMARKS.md unless --no-write.
"""

import argparse
import io
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    command_line,
    load_average,
    log,
    machine_facts,
    markdown_table,
    spread,
    update_section,
    usable_cpus,
    utc_now,
)

SECTION = "latency"
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

    log("no shipped weights: building an untrained demo-config model")
    config = load_config("demo")
    folder = os.path.join(scratch, "untrained-demo")
    save_inference_networks(build_imuge(config), config, folder, step=0)
    return Imuge.load(folder), ("a freshly built **untrained** demo-config model (no shipped "
                                "weights were found): the figures test the conversions, not "
                                "the model's quality")


def timed(function, repeats, inner=1, warmup=WARMUP):
    """Spread of the seconds per call of `function` (each run: `inner` calls, averaged)."""
    for _ in range(warmup):
        function()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            function()
        runs.append((time.perf_counter() - start) / inner)
    return spread(runs)


def ms(result):
    return f"{1000 * result.median:.1f} ms ({1000 * result.low:.1f}-{1000 * result.high:.1f})"


def per_second(result, count):
    return f"{count / result.median:.1f} img/s ({count / result.high:.1f}-{count / result.low:.1f})"


def encoder_rows(imuge, sizes, repeats, threads, scratch):
    import tensorflow as tf

    compiled = tf.function(lambda x: imuge.pipeline.encoder(x, training=False))
    rows = []
    for size in sizes:
        results = encoder_at(imuge, compiled, size, repeats, threads, scratch)
        rows += [[f"{size} x {size}", name, ms(result)] for name, result in results.items()]
    return rows


def encoder_at(imuge, compiled, size, repeats, threads, scratch):
    """{runtime: Spread} of the encoder on one 1 x size x size x 3 image."""
    import tensorflow as tf

    from imuge_tf import export as ex

    image = ex.representative_images(size, count=1)[0]
    tensor = tf.constant(image)
    log(f"encoder at {size} px: Keras")
    results = {
        "Keras (eager call)": timed(lambda: imuge.pipeline.encoder(tensor, training=False).numpy(),
                                    repeats, inner=3),
        "Keras (tf.function)": timed(lambda: compiled(tensor).numpy(), repeats, inner=3),
    }
    saved = ex.save_encoder(imuge.pipeline.encoder, size,
                            os.path.join(scratch, f"encoder-{size}"))
    serve = tf.saved_model.load(saved).signatures["serving_default"]
    log(f"encoder at {size} px: SavedModel")
    results["SavedModel (serving_default)"] = timed(
        lambda: serve(image=tensor)["residual"].numpy(), repeats, inner=3)
    for variant in ("fp32", "fp16", "dynamic"):
        log(f"encoder at {size} px: TFLite {variant}")
        runner = ex.TFLiteEncoder(ex.convert_saved_model(saved, variant), num_threads=threads)
        results[f"TFLite {variant}"] = timed(lambda r=runner: r(image), repeats, inner=3)
    return results


def serving_rows(imuge, repeats, batch, scratch):
    import tensorflow as tf
    from PIL import Image

    from imuge_tf import export as ex
    from imuge_tf.samples import sample_photos

    log("verifier + decoder: exporting the serving SavedModel")
    version = ex.save_serving_model(imuge, os.path.join(scratch, "serving", "1"))
    signatures = tf.saved_model.load(version).signatures
    photos = sample_photos()
    blobs = []
    for photo in photos:
        buffer = io.BytesIO()
        Image.fromarray(photo).save(buffer, format="PNG")
        blobs.append(buffer.getvalue())
    shapes = sorted({f"{p.shape[1]}x{p.shape[0]}" for p in photos})
    batch_blobs = [blobs[i % len(blobs)] for i in range(batch)]
    serve = signatures["serving_default"]

    def one_by_one():
        for blob in batch_blobs:
            serve(images=tf.constant([blob]))["verdict"].numpy()

    log("verifier + decoder: serving_default")
    one = timed(one_by_one, repeats, warmup=1)
    many = timed(lambda: serve(images=tf.constant(batch_blobs))["verdict"].numpy(), repeats)
    working = tf.constant(np.concatenate(ex.representative_images(imuge.image_size,
                                                                  count=batch)))
    tensor = signatures["verify_tensor"]
    log("verifier + decoder: verify_tensor")
    tensor_many = timed(lambda: tensor(images=working)["verdict"].numpy(), repeats)
    log("verifier + decoder: the Keras facade")

    def facade():
        for photo in photos[:batch]:
            result = imuge.verify(photo)
            imuge.recover(photo, result)

    keras_many = timed(facade, max(1, repeats // 2), warmup=1)
    count = min(batch, len(photos))
    return [
        [f"serving_default, the same {batch} PNGs one per call", ms(one),
         per_second(one, batch)],
        [f"serving_default, batch of {batch} PNGs", ms(many), per_second(many, batch)],
        [f"verify_tensor, batch of {batch} ({imuge.image_size} px floats)", ms(tensor_many),
         per_second(tensor_many, batch)],
        [f"Keras facade (verify + recover), {count} photos one by one", ms(keras_many),
         per_second(keras_many, count)],
    ], shapes


def main(argv=None):
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
    parser.add_argument("--no-write", action="store_true",
                        help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    threads = args.threads or usable_cpus()

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="imuge-latency-") as scratch:
        imuge, description = resolve_model(args.model, scratch)
        sizes = args.sizes or sorted({imuge.image_size, 256})
        log(f"model: {description}")
        encoder = encoder_rows(imuge, sizes, args.repeats, threads, scratch)
        serving, shapes = serving_rows(imuge, args.repeats, args.batch, scratch)

    facts = machine_facts()
    body = "\n".join([
        "## Latency: encoder runtimes, served verifier + decoder",
        "",
        f"Measured {utc_now()} by `{command_line()}` in {time.monotonic() - started:.0f} s.",
        f"Model: {description}; working size {imuge.image_size}. Medians of {args.repeats} "
        f"timed runs after {WARMUP} warm-up runs (range in brackets); TFLite with {threads} "
        "interpreter thread(s) and its default XNNPACK delegate, TensorFlow with its default "
        "thread pools.",
        f"Machine: {facts['cpu']}, {facts['cpus']} CPUs, load {load_average()} at the end; "
        f"TensorFlow {facts.get('tensorflow')}, Keras {facts.get('keras')}. On a machine "
        "shared with other jobs the figures are upper bounds.",
        "",
        "### Encoder, one image",
        "",
        markdown_table(["input", "runtime", "latency"], encoder),
        "",
        "### Verifier + decoder (the TF Serving SavedModel, called in process)",
        "",
        f"Bundled photos ({', '.join(shapes)} px) as PNG bytes: decoding, resizing, both "
        "networks, Otsu + opening, PNG encoding of mask and recovered photo at full size.",
        "",
        markdown_table(["call", "time", "throughput"], serving),
    ])
    print(body)
    if not args.no_write:
        log(f"wrote {update_section(SECTION, body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
