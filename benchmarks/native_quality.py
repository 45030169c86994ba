"""The shipped model at the photo's own resolution, through the public API, with real codecs.

For each photo of a folder (`--data`; BENCHMARKS.md names the one measured), at its native
size:

- fidelity: PSNR(I, I_M) over the whole photo and over its flat areas (pixels whose 7 x 7
  luminance standard deviation is below 1.5 levels), and the residual's block-grid energy;
- detection: 10 % object-shaped tampers (paste from another photo, removal filled by OpenCV
  Telea, clone of a shifted part of the same photo), without attack and after Pillow JPEG 90;
  pixel F1 of `Imuge.verify`'s mask and its verdicts;
- verdicts of the untouched immunized photo (as saved, JPEG 90, JPEG 75) and of the
  never-immunized photo (as it is, JPEG 90);
- recovery L-PSNR inside the tamper (verifier's own mask, `Imuge.recover`) next to Telea on
  the true mask.

Then the 12 MP timings (medians of --repeats runs): `Imuge.immunize` plus writing the PNG at
zlib level 1 and 6 (sizes too), `verify` + `recover`, and the camera TFLite model
(`imuge export --camera-size 4000x3000`), with its parity against `Imuge.immunize`.

    python benchmarks/native_quality.py --data FOLDER [--limit N] [--repeats 5] [--out DIR]
    python benchmarks/native_quality.py --render-only

Every figure goes to benchmarks/results/native_quality.json, and the `native_quality` section
of BENCHMARKS.md is rendered from that file (`--render-only` re-renders it without measuring).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import io
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (quietens TensorFlow before it is imported)
import numpy as np  # noqa: E402

NAME = "native_quality"
TAMPERS = ("paste", "removal", "clone")


def jpeg(image, quality):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def object_mask(height, width, rng, share=0.10):
    """A rotated ellipse of about `share` of the photo, wholly inside it."""
    ratio = rng.uniform(0.6, 1.6)
    area = share * height * width
    semi_a = np.sqrt(area / np.pi * ratio)
    semi_b = area / np.pi / semi_a
    angle = rng.uniform(0, np.pi)
    reach = max(semi_a, semi_b)
    cy = rng.uniform(reach, height - reach) if height > 2 * reach else height / 2
    cx = rng.uniform(reach, width - reach) if width > 2 * reach else width / 2
    yy, xx = np.mgrid[:height, :width]
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    return (u / semi_a) ** 2 + (v / semi_b) ** 2 <= 1.0


def tamper(kind, immunized, donor, mask, rng):
    import cv2

    if kind == "paste":
        return np.where(mask[:, :, None], donor, immunized)
    if kind == "removal":
        return cv2.inpaint(immunized, mask.astype(np.uint8), 3, cv2.INPAINT_TELEA)
    height, width = mask.shape
    dy, dx = int(rng.integers(height // 5, height // 3)), int(rng.integers(width // 5, width // 3))
    shifted = np.roll(immunized, (dy, dx), axis=(0, 1))
    return np.where(mask[:, :, None], shifted, immunized)


def evaluate_photo(imuge, name, photo, donor, seed):
    from imuge_tf import scoring
    from imuge_tf.evaluation import telea_inpaint

    rng = np.random.default_rng(seed)
    height, width = photo.shape[:2]
    record = {"photo": name, "width": width, "height": height}
    immunized = imuge.immunize(photo)
    flat = scoring.flat_area(photo)
    # The cells of the earlier full-size thumbnail corrections: width / 64 px, here rounded
    # to whole 8 x 8 blocks.
    cell = max(16, 8 * round(width / 64 / 8))
    record.update(psnr=scoring.psnr(photo, immunized),
                  psnr_flat=scoring.l_psnr(photo, immunized, flat),
                  flat_share=float(flat.mean()), mosaic_ratio=scoring.mosaic_ratio(
                      photo, immunized, cell), mosaic_cell=cell)
    for label, received in (("untouched", immunized), ("untouched_jpeg90", jpeg(immunized, 90)),
                            ("untouched_jpeg75", jpeg(immunized, 75)), ("never", photo),
                            ("never_jpeg90", jpeg(photo, 90))):
        record[f"verdict_{label}"] = imuge.verify(received).verdict
    for kind in TAMPERS:
        mask = object_mask(height, width, rng)
        tampered = tamper(kind, immunized, donor, mask, rng)
        for attack, received in (("none", tampered), ("jpeg90", jpeg(tampered, 90))):
            result = imuge.verify(received)
            record[f"f1_{kind}_{attack}"] = scoring.f1(result.mask, mask)
            record[f"verdict_{kind}_{attack}"] = result.verdict
            recovered = imuge.recover(received, result)
            record[f"lpsnr_{kind}_{attack}"] = scoring.l_psnr(photo, recovered, mask)
            record[f"telea_{kind}_{attack}"] = scoring.l_psnr(
                photo, telea_inpaint(received, mask), mask)
    return record


def timings(imuge, photo, repeats, camera_size=(4000, 3000)):
    from PIL import Image

    from imuge_tf import export as ex
    from imuge_tf.io import cover, read_image, write_image

    width, height = camera_size
    big = cover(photo, height, width)
    out = {"size": f"{width}x{height}"}
    immunized = imuge.immunize(big)  # warm-up: traces the graph for this size
    folder = tempfile.mkdtemp()
    source = os.path.join(folder, "photo.jpg")
    Image.fromarray(big).save(source, quality=95)
    runs = {"read_immunize_write": [], "immunize": [], "png": [], "pillow1": [],
            "pillow6": []}
    sizes = {}
    for index in range(repeats):
        start = time.perf_counter()
        immunized = imuge.immunize(read_image(source))
        write_image(os.path.join(folder, f"whole-{index}.png"), immunized)
        runs["read_immunize_write"].append(time.perf_counter() - start)
        start = time.perf_counter()
        immunized = imuge.immunize(big)
        runs["immunize"].append(time.perf_counter() - start)
        writers = {"png": lambda path, image: write_image(path, image, force=True),
                   "pillow1": lambda path, image: Image.fromarray(image).save(
                       path, compress_level=1),
                   "pillow6": lambda path, image: Image.fromarray(image).save(
                       path, compress_level=6)}
        for name, write in writers.items():
            path = os.path.join(folder, f"{name}.png")
            start = time.perf_counter()
            write(path, immunized)
            runs[name].append(time.perf_counter() - start)
            sizes[name] = os.path.getsize(path)
    rng = np.random.default_rng(0)
    mask = object_mask(height, width, rng)
    tampered = np.where(mask[:, :, None], 255 - immunized, immunized)
    imuge.recover(tampered, imuge.verify(tampered))  # warm-up
    runs["verify_recover"] = []
    for _ in range(repeats):
        start = time.perf_counter()
        imuge.recover(tampered, imuge.verify(tampered))
        runs["verify_recover"].append(time.perf_counter() - start)
    common.log("camera model: export and convert")
    saved = ex.save_camera_model(imuge, width, height, os.path.join(folder, "camera"))
    model = ex.convert_saved_model(saved, "fp32")
    camera = ex.TFLiteCamera(model)
    camera(big)
    runs["camera_tflite"] = []
    for _ in range(repeats):
        start = time.perf_counter()
        camera(big)
        runs["camera_tflite"].append(time.perf_counter() - start)
    out["camera_parity"] = ex.camera_parity(imuge, camera, [photo])
    out["camera_bytes"] = len(model)
    for key, values in runs.items():
        out[key] = dataclasses.asdict(common.spread(values))
    out.update({f"{name}_bytes": size for name, size in sizes.items()})
    return out


def render(results) -> str:
    records = common.nulls_as_nan(results["records"])
    # The timings as saved (Spread's fields), back as Spread for describe().
    timing = {key: common.Spread(**value) if isinstance(value, dict) and "median" in value
              else value for key, value in results["timings"].items()}
    mean = lambda key: float(np.mean([r[key] for r in records]))  # noqa: E731
    megapixels = [r["width"] * r["height"] / 1e6 for r in records]
    lines = [f"Shipped model, {len(records)} photos of `{results['data']}` at their native size "
             f"({min(megapixels):.1f}-{max(megapixels):.1f} MP; none used in training), public "
             "API (`Imuge.immunize` / `verify` / `recover`), Pillow JPEG. "
             f"Measured {results['date']} with `{results['command']}`.", ""]
    rows = [[r["photo"], f"{r['width']}x{r['height']}", f"{r['psnr']:.2f}",
             f"{r['psnr_flat']:.2f}", f"{r['flat_share']:.0%}",
             f"{r['mosaic_ratio']:.2f} ({r['mosaic_cell']} px)"]
            + [f"{r[f'f1_{k}_{a}']:.3f}" for k in TAMPERS for a in ("none", "jpeg90")]
            for r in records]
    rows.append(["mean", "", f"{mean('psnr'):.2f}", f"{mean('psnr_flat'):.2f}", "",
                 f"{mean('mosaic_ratio'):.2f}"]
                + [f"{mean(f'f1_{k}_{a}'):.3f}" for k in TAMPERS for a in ("none", "jpeg90")])
    lines.append(common.markdown_table(
        ["photo", "size", "PSNR dB", "flat PSNR dB", "flat share", "mosaic ratio (cell)"]
        + [f"F1 {k} {a}" for k in TAMPERS for a in ("none", "JPEG 90")], rows))
    lines += ["", "Mosaic ratio (`imuge_tf.scoring.mosaic_ratio`): the residual's step between "
              "neighbouring 8 x 8-block means across the lines of the earlier thumbnail cells' "
              "grid (width / 64 px, in whole blocks) over the same step elsewhere; about 1 "
              "without a cell pattern. Flat: pixels whose 7 x 7 luminance std is below 1.5 "
              "levels.", ""]
    verdict_keys = ["untouched", "untouched_jpeg90", "untouched_jpeg75", "never", "never_jpeg90"]
    verdict_keys += [f"{k}_{a}" for k in TAMPERS for a in ("none", "jpeg90")]
    rows = []
    for key in verdict_keys:
        counts = {}
        for r in records:
            counts[r[f"verdict_{key}"]] = counts.get(r[f"verdict_{key}"], 0) + 1
        text = ", ".join(f"{verdict} {count}" for verdict, count in sorted(counts.items()))
        rows.append([key.replace("_", " "), text])
    lines.append(common.markdown_table(["case", "verdicts"], rows))
    lines.append("")
    rows = [[f"{k} {a}", f"{mean(f'lpsnr_{k}_{a}'):.2f}", f"{mean(f'telea_{k}_{a}'):.2f}"]
            for k in TAMPERS for a in ("none", "jpeg90")]
    lines.append(common.markdown_table(
        ["tamper", "L-PSNR recover (own mask) dB", "L-PSNR Telea (true mask) dB"], rows))
    lines += ["", f"Timings at {timing['size']} (12 MP), {timing['immunize'].count} runs, "
              "medians:", ""]
    mb = lambda name: f"{timing[name + '_bytes'] / 1e6:.1f} MB"  # noqa: E731
    rows = [
        ["read JPEG + `Imuge.immunize` + write PNG (`imuge immunize`'s work)",
         timing["read_immunize_write"].describe(2, "s")],
        ["`Imuge.immunize`", timing["immunize"].describe(2, "s")],
        ["write PNG (`imuge_tf.io.write_image`: Sub filter, Huffman-only, parallel bands)",
         f"{timing['png'].describe(2, 's')}, {mb('png')}"],
        ["Pillow PNG, zlib 1", f"{timing['pillow1'].describe(2, 's')}, {mb('pillow1')}"],
        ["Pillow PNG, zlib 6", f"{timing['pillow6'].describe(2, 's')}, {mb('pillow6')}"],
        ["`verify` + `recover` (tampered)", timing["verify_recover"].describe(2, "s")],
        ["camera TFLite fp32 (whole immunization)", timing["camera_tflite"].describe(2, "s")],
        ["camera model size", f"{timing['camera_bytes'] / 1e6:.1f} MB"],
        ["camera parity vs `Imuge.immunize`",
         f"{timing['camera_parity']['within_one_level_share']:.4%} of pixels within 1 level, "
         f"max {timing['camera_parity']['max_levels']} levels"],
    ]
    lines.append(common.markdown_table(["what", "figure"], rows))
    return "\n".join(lines)


def measure(args) -> dict:
    from PIL import Image

    from imuge_tf import Imuge
    from imuge_tf.io import read_image

    files = sorted(glob.glob(os.path.join(args.data, "*.jp*g")) + glob.glob(
        os.path.join(args.data, "*.png")))[: args.limit]
    if not files:
        raise SystemExit(f"error: no photos in {args.data}")
    results = common.provenance()
    imuge = Imuge.from_pretrained()
    photos = [read_image(path) for path in files]
    records = []
    for index, (path, photo) in enumerate(zip(files, photos)):
        common.log(f"photo {index + 1}/{len(files)}: {os.path.basename(path)}")
        donor = photos[(index + 1) % len(photos)]
        donor = np.asarray(Image.fromarray(donor).resize(photo.shape[1::-1]))
        records.append(evaluate_photo(imuge, os.path.basename(path), photo, donor, index))
    common.log("12 MP timings")
    timing = timings(imuge, photos[0], args.repeats)
    results["load_average"]["after"] = common.load_average()
    return {**results, "data": os.path.relpath(os.path.abspath(args.data), common.REPO_ROOT),
            "records": records, "timings": timing}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="folder of photos at their native size")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    common.require_unless_render_only(parser, args, "data")
    common.measure_and_publish(NAME, args, measure, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
