"""Verdicts users can trust: untouched, never immunized, tampered and forged photos, at native size.

For each photo of the folders given (`--data`, one or more; BENCHMARKS.md names the ones
measured), at its own size, through the public API (`Imuge(key=...).immunize` / `verify`), with
Pillow's codecs and resamplers:

- **untouched** immunized photos after each sharing step: lossless re-saves (PNG, WebP
  lossless), JPEG 95 ... 70, downscaling to 50 % and to 75 % + JPEG 80 (Pillow's bicubic,
  bilinear and Lanczos filters), real crops of 10, 20 and 30 % at random offsets, quarter turns;
  the share called `intact`, and whether the crop and turn were found;
- **never immunized** photos as saved, after JPEG 90 and after downscaling to 50 %;
- **tampered** photos (10 % object-shaped paste from another photo, removal filled by OpenCV
  Telea, clone of a shifted part), lossless and after JPEG 75: the share called `tampered` and
  the pixel F1 of the mask; a paste then a crop or a quarter turn, also recovered (L-PSNR);
- **forgeries**: the public carrier pattern added to a never-immunized photo; the copy attack
  (the exact residual of another immunized photo added); an immunization with another key;
  laundering (tamper, then immunize again: refused by the API; forced with the public demo key;
  forced with the owner's key, i.e. by a key holder); a splice from another photo immunized with
  the same key at the same place.

The owner's key is a fixed secret of this script; verdicts are with that key.

    python benchmarks/verdicts.py --data FOLDER [FOLDER ...] [--model DIR] [--limit N]
        [--out DIR]
    python benchmarks/verdicts.py --render-only

The figures (every case, their summary, the date, command and machine) go to
benchmarks/results/verdicts.json, and the `verdicts` section of BENCHMARKS.md is rendered from
that file (`--render-only` re-renders it without measuring).
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (quietens TensorFlow before it is imported)
import numpy as np  # noqa: E402
from native_quality import jpeg, object_mask, tamper  # noqa: E402

NAME = "verdicts"
OWNER_KEY = b"imuge-tf benchmark owner key"
OTHER_KEY = b"imuge-tf benchmark someone else"
FILTERS = ("bicubic", "bilinear", "lanczos")
JPEG_QUALITIES = (95, 90, 80, 75, 70)
CROP_SHARES = (0.10, 0.20, 0.30)
TAMPERS = ("paste", "removal", "clone")


def _resample(image, factor, name):
    from PIL import Image

    height, width = image.shape[:2]
    method = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR,
              "lanczos": Image.LANCZOS}[name]
    return np.asarray(Image.fromarray(image).resize(
        (max(16, round(width * factor)), max(16, round(height * factor))), method))


def _webp_lossless(image):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="WEBP", lossless=True)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def _png(image):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def _crop(image, share, rng):
    """A crop removing `share` of the area (the same share of each side), at a random
    offset (any pixel, not only multiples of 8)."""
    height, width = image.shape[:2]
    keep = np.sqrt(1.0 - share)
    crop_h, crop_w = int(height * keep), int(width * keep)
    top = int(rng.integers(1, height - crop_h + 1))
    left = int(rng.integers(1, width - crop_w + 1))
    return image[top:top + crop_h, left:left + crop_w], (top, left)


def carrier_forgery(photo):
    """The public carrier pattern (its seed is in the source), 4 levels, upsampled from the
    working scale to the photo, added to a never-immunized photo."""
    import tensorflow as tf

    from imuge_tf.models.carrier import DEFAULT_AMPLITUDE, carrier_tile

    height, width = photo.shape[:2]
    tile = carrier_tile(2, 64)
    small_h, small_w = max(64, height // 8), max(64, width // 8)
    pattern = np.tile(tile, (small_h // 64 + 1, small_w // 64 + 1))[:small_h, :small_w]
    pattern = np.asarray(tf.image.resize(pattern[None, :, :, None], (height, width)))[0]
    forged = photo.astype(np.float32) + DEFAULT_AMPLITUDE * 255.0 * pattern
    return np.clip(np.round(forged), 0, 255).astype(np.uint8)


def evaluate_photo(owner, other, demo, name, photo, donor, seed):
    from imuge_tf import scoring
    from imuge_tf.inference import AlreadyImmunizedError

    rng = np.random.default_rng(seed)
    height, width = photo.shape[:2]
    immunized = owner.immunize(photo)
    cases = []

    def verify(group, processing, image, **extra):
        started = time.perf_counter()
        result = owner.verify(image)
        cases.append({"photo": name, "group": group, "processing": processing,
                      "verdict": result.verdict, "tampered_fraction": result.tampered_fraction,
                      "seconds": time.perf_counter() - started, **result.geometry, **extra})
        return result

    verify("untouched", "as saved", immunized)
    verify("untouched", "PNG re-save", _png(immunized))
    verify("untouched", "WebP lossless", _webp_lossless(immunized))
    for quality in JPEG_QUALITIES:
        verify("untouched", f"JPEG {quality}", jpeg(immunized, quality))
    for name_filter in FILTERS:
        verify("untouched", "resize 50 %", _resample(immunized, 0.5, name_filter))
        verify("untouched", "resize 75 % + JPEG 80",
               jpeg(_resample(immunized, 0.75, name_filter), 80))
    for share in CROP_SHARES:
        cropped, (top, left) = _crop(immunized, share, rng)
        result = verify("untouched", "crop 10-30 %", cropped, crop_share=share)
        cases[-1]["geometry_found"] = (result.rotation == 0 and tuple(result.crop_origin)
                                       == (top % 1024, left % 1024))
    for turns in (1, 2, 3):
        result = verify("untouched", "rotation 90/180/270", np.rot90(immunized, turns).copy())
        cases[-1]["geometry_found"] = result.rotation == 90 * turns

    verify("never", "as saved", photo)
    verify("never", "JPEG 90", jpeg(photo, 90))
    verify("never", "resize 50 %", _resample(photo, 0.5, "bicubic"))

    for kind in TAMPERS:
        truth = object_mask(height, width, rng)
        tampered = tamper(kind, immunized, donor, truth, rng)
        for processing, image in (("lossless", tampered), ("JPEG 75", jpeg(tampered, 75))):
            result = verify("tampered", f"{kind}, {processing}", image)
            cases[-1]["f1"] = scoring.f1(result.mask, truth)
    # A paste, then a crop (top-left cut, off the 8 x 8 grid) or a quarter turn: found where
    # it is, and recovered (L-PSNR inside the true tamper, in the received frame).
    truth = object_mask(height, width, rng)
    pasted = tamper("paste", immunized, donor, truth, rng)
    top, left = int(rng.integers(1, height // 10)), int(rng.integers(1, width // 10))
    for processing, image, image_truth, original in (
            ("paste, crop at the top-left", pasted[top:, left:], truth[top:, left:],
             photo[top:, left:]),
            ("paste, rotation 90", np.rot90(pasted).copy(), np.rot90(truth), np.rot90(photo))):
        result = verify("tampered", processing, image)
        recovered = owner.recover(image, result)
        cases[-1].update(f1=scoring.f1(result.mask, image_truth),
                         l_psnr=scoring.l_psnr(original, recovered, image_truth))

    verify("forgery", "public carrier pattern on a never-immunized photo",
           carrier_forgery(photo))
    donor_immunized = owner.immunize(donor)
    residual = donor_immunized.astype(np.int16) - donor.astype(np.int16)
    verify("forgery", "copy attack: another photo's exact residual added",
           np.clip(photo.astype(np.int16) + residual, 0, 255).astype(np.uint8))
    verify("forgery", "immunized with another key", other.immunize(photo))
    truth = object_mask(height, width, rng)
    pasted = tamper("paste", immunized, donor, truth, rng)
    try:
        owner.immunize(pasted)
        refused = False
    except AlreadyImmunizedError:
        refused = True
    cases.append({"photo": name, "group": "forgery", "processing":
                  "laundering: re-immunizing a tampered photo (API, no force)",
                  "verdict": "refused" if refused else "immunized", "tampered_fraction": 0.0,
                  "seconds": 0.0})
    verify("forgery", "laundering forced with the public demo key",
           demo.immunize(pasted, force=True))
    verify("forgery", "laundering forced with the owner's key (a key holder)",
           owner.immunize(pasted, force=True))
    top, left = height // 5, width // 5
    spliced = immunized.copy()
    spliced[top:top + height // 3, left:left + width // 3] = \
        donor_immunized[top:top + height // 3, left:left + width // 3]
    verify("forgery", "splice from another photo immunized with the same key", spliced)
    return cases


def summarize(cases):
    rows = {}
    for case in cases:
        key = (case["group"], case["processing"])
        rows.setdefault(key, []).append(case)
    summary = []
    for (group, processing), group_cases in rows.items():
        verdicts = [case["verdict"] for case in group_cases]
        row = {"group": group, "processing": processing, "cases": len(group_cases),
               **{verdict: verdicts.count(verdict) for verdict in
                  ("intact", "tampered", "not_immunized", "refused")},
               "median_seconds": float(np.median([case["seconds"] for case in group_cases]))}
        if any("f1" in case for case in group_cases):
            scores = [case["f1"] for case in group_cases]
            row.update(f1_mean=float(np.mean(scores)), f1_min=float(np.min(scores)))
        if any("l_psnr" in case for case in group_cases):
            row["l_psnr_mean"] = float(np.mean([case["l_psnr"] for case in group_cases]))
        if any("geometry_found" in case for case in group_cases):
            row["geometry_found"] = sum(bool(case.get("geometry_found")) for case in group_cases)
        summary.append(row)
    return summary


def _pooled(summary, group, prefix):
    rows = [row for row in summary if row["group"] == group
            and row["processing"].startswith(prefix)]
    return {name: sum(row[name] for row in rows) for name in ("cases", "intact", "tampered",
                                                               "not_immunized")}


def render(results) -> str:
    summary = common.nulls_as_nan(results["summary"])
    lines = [f"Photos: {results['photos']} at their own size from "
             f"{', '.join(results['folders'])}; verdicts of `Imuge(key=owner).verify` through "
             f"Pillow's codecs and resamplers (`{results['command']}`).", ""]
    untouched = [row for row in summary if row["group"] == "untouched"]
    table = []
    for row in untouched:
        found = (f"{row['geometry_found']}/{row['cases']}" if "geometry_found" in row else "")
        table.append([row["processing"], row["cases"],
                      f"{100.0 * row['intact'] / row['cases']:.1f} %", row["tampered"],
                      row["not_immunized"], found, f"{row['median_seconds']:.2f}"])
    lines += ["**Untouched immunized photos** (want: intact >= 99 %, never not_immunized)", "",
              common.markdown_table(["processing", "cases", "intact", "tampered",
                                     "not immunized", "geometry found", "verify s (median)"],
                                    table), ""]
    never = [row for row in summary if row["group"] == "never"]
    lines += ["**Never-immunized photos** (want: not_immunized >= 99.5 %)", "",
              common.markdown_table(
                  ["processing", "cases", "not immunized", "intact", "tampered"],
                  [[row["processing"], row["cases"],
                    f"{100.0 * row['not_immunized'] / row['cases']:.1f} %", row["intact"],
                    row["tampered"]] for row in never]), ""]
    tampered = [row for row in summary if row["group"] == "tampered"]
    lines += ["**Tampered photos**, 10 % object-shaped (want: tampered >= 99 %; F1 >= 0.85 "
              "lossless, >= 0.8 after JPEG 75)", "",
              common.markdown_table(
                  ["tamper", "cases", "tampered", "pixel F1 mean", "F1 min",
                   "recovery L-PSNR (dB)"],
                  [[row["processing"], row["cases"],
                    f"{100.0 * row['tampered'] / row['cases']:.1f} %", f"{row['f1_mean']:.3f}",
                    f"{row['f1_min']:.3f}",
                    f"{row['l_psnr_mean']:.2f}" if "l_psnr_mean" in row else ""]
                   for row in tampered]), ""]
    forgery = [row for row in summary if row["group"] == "forgery"]
    lines += ["**Forgeries** (verdict with the owner's key; want: intact in 0 cases except by "
              "a key holder)", "",
              common.markdown_table(
                  ["attack", "cases", "intact", "tampered", "not immunized", "refused"],
                  [[row["processing"], row["cases"], row["intact"], row["tampered"],
                    row["not_immunized"], row["refused"]] for row in forgery]), ""]
    pooled_jpeg = _pooled(summary, "untouched", "JPEG")
    lines.append(f"Pooled: JPEG 95-70 {pooled_jpeg['intact']}/{pooled_jpeg['cases']} intact; "
                 f"tampered {_pooled(summary, 'tampered', '')['tampered']}/"
                 f"{_pooled(summary, 'tampered', '')['cases']}.")
    facts = results["machine"]
    lines += ["", f"Measured {results['date']} on {facts['cpu']} ({facts['cpus']} CPUs), "
              f"TensorFlow {facts.get('tensorflow', '?')}."]
    return "\n".join(lines)


def measure(args) -> dict:
    import warnings

    from imuge_tf.evaluation import _donor_for
    from imuge_tf.inference import Imuge
    from imuge_tf.io import read_image
    from imuge_tf.keys import DemoKeyWarning

    def load(key):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DemoKeyWarning)
            return Imuge.load(args.model, key=key) if args.model else Imuge.from_pretrained(
                key=key)

    results = common.provenance()
    owner, other, demo = load(OWNER_KEY), load(OTHER_KEY), load(None)
    paths = []
    for folder in args.data:
        paths += sorted(p for p in glob.glob(os.path.join(folder, "*"))
                        if p.lower().endswith((".jpg", ".jpeg", ".png")))[:args.limit]
    photos = [read_image(path) for path in paths]
    cases = []
    for index, (path, photo) in enumerate(zip(paths, photos)):
        common.log(f"{os.path.basename(path)} {photo.shape[1]}x{photo.shape[0]}")
        donor = _donor_for(photo, photos[(index + 1) % len(photos)])
        cases += evaluate_photo(owner, other, demo, os.path.basename(path), photo, donor, index)
    results["load_average"]["after"] = common.load_average()
    return {**results, "folders": list(args.data), "model": args.model,
            "photos": len(photos), "summary": summarize(cases), "cases": cases}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", help="folders of photos")
    parser.add_argument("--model", default=None, help="model folder (default: shipped)")
    parser.add_argument("--limit", type=int, default=None, help="photos per folder")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    common.require_unless_render_only(parser, args, "data")
    common.measure_and_publish(NAME, args, measure, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
