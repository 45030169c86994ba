"""Latency of the deployables: the encoder per runtime, the served verifier + decoder, and
immunizing a 12-megapixel photo end to end.

    python benchmarks/latency.py [--model PATH] [--repeats 7] [--sizes 128 256] [--no-write]

- Encoder, one 1 x S x S x 3 image, at each --sizes (the networks are fully convolutional, so
  the same weights run at 256 px; the TFLite models are converted at each size): Keras (eager
  call and tf.function), the exported SavedModel, TFLite fp32 / fp16 / dynamic range run by
  ai_edge_litert's Interpreter.
- Verifier + decoder: the TF Serving SavedModel called in process (no HTTP): serving_default
  on PNG bytes of the bundled photos, one per call and batches of --batch; verify_tensor on
  batches at the working size; and the Keras facade (verify + recover) for comparison.
- 12 MP (4000 x 3000): `Imuge.immunize` with the Keras encoder and with TFLite fp32 / fp16
  (resize to S, encoder, upsample the residual, add, round), and writing the PNG.

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
from export_parity import resolve_model  # noqa: E402

SECTION = "latency"
MEGAPIXELS_12 = (3000, 4000)  # height, width
WARMUP = 2


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

    compiled = tf.function(lambda x: imuge.encoder(x, training=False))
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
        "Keras (eager call)": timed(lambda: imuge.encoder(tensor, training=False).numpy(),
                                    repeats, inner=3),
        "Keras (tf.function)": timed(lambda: compiled(tensor).numpy(), repeats, inner=3),
    }
    saved = ex.save_encoder(imuge.encoder, size, os.path.join(scratch, f"encoder-{size}"))
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


def twelve_megapixel_rows(imuge, repeats, threads, scratch):
    from PIL import Image

    from imuge_tf import export as ex
    from imuge_tf.io import LOSSLESS_FORMATS
    from imuge_tf.samples import sample_photo

    height, width = MEGAPIXELS_12
    photo = np.asarray(Image.fromarray(sample_photo("astronaut")).resize(
        (width, height), Image.Resampling.BICUBIC))
    saved = os.path.join(scratch, f"encoder-{imuge.image_size}")
    if not os.path.isdir(saved):
        ex.save_encoder(imuge.encoder, imuge.image_size, saved)
    runs = max(3, repeats // 2)
    rows = []
    log("12 MP: Keras")
    rows.append(["Imuge.immunize, Keras encoder",
                 ms(timed(lambda: imuge.immunize(photo), runs, warmup=1))])
    for variant in ("fp32", "fp16"):
        log(f"12 MP: TFLite {variant}")
        camera = imuge.with_encoder(ex.TFLiteEncoder(ex.convert_saved_model(saved, variant),
                                                     num_threads=threads))
        rows.append([f"Imuge.immunize, TFLite {variant} encoder",
                     ms(timed(lambda c=camera: c.immunize(photo), runs, warmup=1))])
    immunized = imuge.immunize(photo)
    pillow_format, options = LOSSLESS_FORMATS[".png"]

    def write_png(**more):
        buffer = io.BytesIO()
        Image.fromarray(immunized).save(buffer, format=pillow_format, **options, **more)
        return buffer.tell()

    log("12 MP: PNG")
    for label, more in (("as imuge writes it (Pillow defaults, zlib level 6)", {}),
                        ("zlib level 1", {"compress_level": 1})):
        size = write_png(**more)
        rows.append([f"encoding the immunized photo as PNG, {label}: {size / 1e6:.1f} MB",
                     ms(timed(lambda m=more: write_png(**m), runs, warmup=0))])
    return rows


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
        twelve = twelve_megapixel_rows(imuge, args.repeats, threads, scratch)

    facts = machine_facts()
    body = "\n".join([
        "## Latency: encoder runtimes, served verifier + decoder, 12 MP immunization",
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
        "",
        f"### Immunizing a 12-megapixel photo ({MEGAPIXELS_12[1]} x {MEGAPIXELS_12[0]})",
        "",
        "From the uint8 photo in memory to the uint8 immunized photo (resize to the working "
        "size, encoder, residual upsampled and added at full resolution), then the PNG.",
        "",
        markdown_table(["step", "time"], twelve),
    ])
    print(body)
    if not args.no_write:
        log(f"wrote {update_section(SECTION, body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
