"""The paper's evaluation protocol (sections 4.2-4.3, Tables 1 and 2) with real codecs.

`run_evaluation(imuge, photos, out_dir)` takes held-out photos and, for each one:

1. reads it with Pillow as RGB (EXIF orientation applied) and keeps it at its own size (the
   default: what users immunize), or, with `size=S`, scales it so its shorter side is S and
   keeps the centred S x S square (comparable to training, which crops S x S windows);
2. immunizes it (`imuge.immunize`) and scores PSNR / SSIM of the immunized image I_M;
3. tampers I_M by content replacement (the "donor" tamper of training, eq. 1): inside a random
   object-shaped mask (ellipses, polygons, blobs of `imuge_tf.attacks.masks`, RST 10-30 %, RLT
   6-16 %, the training defaults; drawn on a MASK_CANVAS square and stretched to the photo)
   the pixels come from another photo, the previous one of the set scaled and cropped to this
   one's size (the first photo takes a bundled scikit-image photo);
4. for every column of Table 1 (`imuge_tf.attacks.evaluation.TABLE1_ATTACKS`: real JPEG,
   resizing, cropping, blur, noise, none) applies the real attack to the tampered image; the
   true mask is the tamper mask plus the attack's `extra_mask` (the black border of a crop,
   which counts as tampered as in training; the other attacks keep pixels aligned);
5. verifies (`imuge.verify`) and recovers, once with the predicted mask (`imuge.recover`, the
   inference path) and once with the true mask (`imuge.recover_with_mask`);
6. runs the same tamper, mask and attack on the **never-immunized** photo and recovers it with
   the true mask: the difference in recovery L-PSNR is the *Imuge effect*, what the hidden
   information adds over what the decoder can guess from the surroundings (docs/design.md);
7. inpaints the attacked image inside the true mask with OpenCV's Telea method
   (`cv2.inpaint`, radius `TELEA_RADIUS`): the classical baseline of section 4.3;
8. verifies the untampered immunized photo and the untampered never-immunized photo after the
   same attack: the share of pixels flagged there, and the verdicts, show false alarms and
   whether "not_immunized" means what it says.

Table 2 repeats steps 3-5 without a benign attack for masks of fixed RST / RLT
(`TABLE2_SETTINGS`).

Metrics (all per photo, `imuge_tf.scoring`; tables show the mean over photos, NaN skipped):

============================= =================================================================
key                           meaning
============================= =================================================================
bce                           BCE of the verifier's probability map against the true mask
f1, iou                       pixel F1 / IoU of the predicted (thresholded, cleaned) mask
auc                           pixel ROC AUC of the probability map (NaN for one-class masks)
l_psnr                        L-PSNR of the recovered image (predicted mask) inside the true mask
l_psnr_true_mask              same, recovered with the true mask
l_psnr_telea                  same, OpenCV Telea inpainting with the true mask
l_psnr_tampered               same, the attacked image itself (nothing recovered)
l_psnr_never_immunized        l_psnr_true_mask when the photo was never immunized
l_psnr_telea_never_immunized  l_psnr_telea when the photo was never immunized: the classical
                              baseline independent of the encoder's residual
imuge_effect                  l_psnr_true_mask - l_psnr_never_immunized (dB)
psnr_recovered                PSNR(I, I_R), the whole recovered image (predicted mask); with
ssim_recovered                SSIM(I, I_R), these are the "PSNR" and "SSIM" rows of the paper
detected                      1 if the verdict on the tampered image is "tampered", else 0
flagged_immunized             share of pixels with probability > 0.5 on the untampered
                              immunized photo after the attack
flagged_never_immunized       same on the untampered never-immunized photo
psnr_immunized                PSNR(I, I_M) (per photo, before any attack)
ssim_immunized                SSIM(I, I_M)
rst, rlt                      (Table 2) the measured shares of the mask actually drawn
============================= =================================================================

Files written under `out_dir`, each atomically (a temporary file moved over the old one):

- ``table.txt``: `format_table(summary)`, the Table 1 layout (rows = metrics, columns =
  attacks), the Table 2 rows, the baseline, the Imuge effect and the verdicts;
- ``results.csv``: long form, one row per photo x table x setting x metric, with the header
  ``photo,table,setting,metric,value``; `table` is ``photo`` (per-photo values, empty
  setting), ``table1`` (setting = attack name) or ``table2`` (setting = row name); NaN values
  are written as ``nan``;
- ``results.json``: the summary dict that `run_evaluation` returns (NaN as null);
- ``figures/fig7.png``: Fig. 7-like panels, one row per photo for the first few photos
  (original, immunized, residual x10, tampered + attacked, true mask, predicted mask,
  recovered, Telea), at attack `FIGURE_ATTACK`;
- ``figures/jpeg_quality.png``: F1 and L-PSNR against the JPEG quality factor ("none" plotted
  at 100).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import Counter

import numpy as np

from imuge_tf import scoring
from imuge_tf.attacks import cases
from imuge_tf.attacks.evaluation import ATTACKS, TABLE1_ATTACKS, get_attack

__all__ = [
    "FIGURE_ATTACK",
    "METRIC_LABELS",
    "QUICK_ATTACKS",
    "TABLE1_METRICS",
    "TABLE2_METRICS",
    "TABLE2_SETTINGS",
    "TAMPER_MASK",
    "TELEA_RADIUS",
    "VERDICTS",
    "format_table",
    "load_photo",
    "panel_images",
    "run_evaluation",
    "save_panels",
    "telea_inpaint",
]

VERDICTS = ("intact", "tampered", "not_immunized")
# The tamper masks of Table 1: the training defaults (DataConfig) with object-like outlines.
TAMPER_MASK = {
    "area_range": (0.10, 0.30),
    "largest_range": (0.06, 0.16),
    "max_regions": 4,
    "shapes": ("ellipse", "polygon", "blob"),
}
# Table 2 rows: (name, RST, RLT). The paper's rows, except that its "RST ~ 10 %, RLT ~ 16 %"
# cannot exist (the largest region is part of the total), so that row becomes one region of
# 16 %; a 40 % row extends the range.
TABLE2_SETTINGS = (
    ("rst10_rlt6", 0.10, 0.06),
    ("rst25_rlt6", 0.25, 0.06),
    ("rst16_rlt16", 0.16, 0.16),
    ("rst30_rlt16", 0.30, 0.16),
    ("rst40_rlt25", 0.40, 0.25),
)
QUICK_ATTACKS = ("none", "jpeg90", "jpeg50")
QUICK_TABLE2 = ("rst10_rlt6", "rst30_rlt16")
QUICK_PHOTOS = 3
FIGURE_ATTACK = "jpeg90"
FIGURE_PHOTOS = 4
QUICK_FIGURE_PHOTOS = 2
TELEA_RADIUS = 3
MASK_CANVAS = 256  # tamper masks of photos larger than this are drawn here and stretched
FLAG_PROBABILITY = 0.5

TABLE1_METRICS = (
    "bce", "f1", "iou", "auc", "l_psnr", "l_psnr_true_mask", "l_psnr_telea", "l_psnr_tampered",
    "l_psnr_never_immunized", "l_psnr_telea_never_immunized", "imuge_effect", "psnr_recovered",
    "ssim_recovered", "detected", "flagged_immunized", "flagged_never_immunized",
)
TABLE2_METRICS = (
    "rst", "rlt", "bce", "f1", "iou", "auc", "l_psnr", "l_psnr_true_mask", "l_psnr_telea",
    "psnr_recovered", "ssim_recovered",
)
PHOTO_METRICS = ("psnr_immunized", "ssim_immunized")
METRIC_LABELS = {
    "bce": "BCE",
    "f1": "F1",
    "iou": "IoU",
    "auc": "AUC",
    "l_psnr": "L-PSNR",
    "l_psnr_true_mask": "L-PSNR true mask",
    "l_psnr_telea": "L-PSNR Telea",
    "l_psnr_tampered": "L-PSNR tampered",
    "l_psnr_never_immunized": "L-PSNR never imm.",
    "l_psnr_telea_never_immunized": "L-PSNR Telea never imm.",
    "imuge_effect": "Imuge effect (dB)",
    "psnr_recovered": "PSNR(I, I_R)",
    "ssim_recovered": "SSIM(I, I_R)",
    "detected": "verdict tampered",
    "flagged_immunized": "flagged, clean imm.",
    "flagged_never_immunized": "flagged, never imm.",
    "psnr_immunized": "PSNR(I, I_M)",
    "ssim_immunized": "SSIM(I, I_M)",
    "rst": "RST",
    "rlt": "RLT",
}
PANEL_TITLES = ("original", "immunized", "residual x10", "tampered", "true mask",
                "predicted mask", "recovered", "Telea")
_RESIDUAL_GAIN = 10.0


# --------------------------------------------------------------------------------------------
# Photos, tampers, baseline
# --------------------------------------------------------------------------------------------


def _centre_square(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    return np.ascontiguousarray(image[top:top + size, left:left + size])


def load_photo(source, size: int | None = None) -> np.ndarray:
    """A file path or uint8 array as an RGB uint8 photo: at its own size when `size` is None,
    else S x S, S = `size`.

    Files are read with Pillow (EXIF orientation, any mode to 8-bit RGB). With `size`, the
    shorter side is scaled to `size` (Lanczos down, bicubic up) and the centred square kept.
    """
    from imuge_tf.data import load_image, prepare_array

    if size is None:
        if isinstance(source, np.ndarray):
            from imuge_tf.inference import check_photo

            return check_photo(source).copy()
        from imuge_tf.io import read_image

        return read_image(os.fspath(source))
    if isinstance(source, np.ndarray):
        image = prepare_array(source, size, size)
    else:
        image = load_image(os.fspath(source), size, size)
    return _centre_square(image, size)


def _photo_sources(paths_or_arrays) -> list[tuple[str, object]]:
    """(name, source) pairs from a folder, one file, or a sequence of paths and arrays."""
    if isinstance(paths_or_arrays, (str, os.PathLike)):
        path = os.fspath(paths_or_arrays)
        if os.path.isdir(path):
            from imuge_tf.data import find_images

            return [(os.path.relpath(p, path), p) for p in find_images(path)]
        return [(os.path.basename(path), path)]
    if isinstance(paths_or_arrays, np.ndarray) and paths_or_arrays.ndim == 3:
        return [("array_0", paths_or_arrays)]
    sources = []
    for index, item in enumerate(paths_or_arrays):
        if isinstance(item, np.ndarray):
            sources.append((f"array_{index}", item))
        else:
            sources.append((os.path.basename(os.fspath(item)), item))
    # Photos are named by file name in the results; the same name in two folders would merge
    # two photos' rows, so then the whole paths name them.
    names = Counter(name for name, _ in sources)
    return [(os.fspath(item) if names[name] > 1 and not isinstance(item, np.ndarray) else name,
             item) for name, item in sources]


def _donor_for(photo: np.ndarray, donor: np.ndarray) -> np.ndarray:
    """`donor` scaled and centre-cropped to `photo`'s size (benchmarks use it too)."""
    return cases.covering(donor, photo.shape[0], photo.shape[1])


def _bundled_donor(photo: np.ndarray) -> np.ndarray:
    """A bundled scikit-image photo at the photo's size that is not the photo itself."""
    return cases.bundled_donor(photo.shape[0], photo.shape[1], unlike=photo)


def _tamper_mask(seed: tuple[int, int], shape, *, area_range, largest_range, max_regions,
                 shapes) -> np.ndarray:
    """A bool H x W object-shaped tamper mask (imuge_tf.attacks.cases.object_mask): drawn
    at S x S for a square photo of side S <= MASK_CANVAS, else on the MASK_CANVAS square and
    stretched to the photo (nearest neighbour)."""
    return cases.object_mask(seed, shape[0], shape[1], canvas=MASK_CANVAS, smooth=False,
                             area_range=area_range, largest_range=largest_range,
                             max_regions=max_regions, shapes=shapes)


def _fixed_share_mask(seed, shape, rst, rlt) -> np.ndarray:
    # Enough regions to reach RST without any exceeding RLT, and no more: masks.py would
    # otherwise spread the rest over up to `max_regions` small regions.
    regions = min(16, max(1, math.ceil(rst / rlt - 1e-6) + 1))
    return _tamper_mask(seed, shape, area_range=(rst, rst), largest_range=(rlt, rlt),
                        max_regions=regions, shapes=TAMPER_MASK["shapes"])


def telea_inpaint(image: np.ndarray, mask: np.ndarray, radius: int = TELEA_RADIUS) -> np.ndarray:
    """OpenCV's Telea inpainting of `image` (uint8 H x W x 3) inside `mask` (bool H x W).

    The pixels inside the mask are ignored (treated as removed) and filled from their
    surroundings; pixels outside are returned unchanged.
    """
    import cv2

    if not mask.any():
        return image.copy()
    filled = cv2.inpaint(np.ascontiguousarray(image), mask.astype(np.uint8), radius,
                         cv2.INPAINT_TELEA)
    # Inpainting does not touch pixels outside the mask; keep them bit-exact regardless.
    return np.where(mask[..., None], filled, image)


# --------------------------------------------------------------------------------------------
# One photo
# --------------------------------------------------------------------------------------------


def _localization(result, true_mask) -> dict:
    return {
        "bce": scoring.bce(result.probability, true_mask),
        "f1": scoring.f1(result.mask, true_mask),
        "iou": scoring.iou(result.mask, true_mask),
        "auc": scoring.auc(result.probability, true_mask),
    }


def _flagged(result) -> float:
    # The raw share of pixels the verifier calls tampered (probability > 0.5), not the share of
    # the cleaned mask: the verdict logic empties or fills the mask, which would hide it.
    return float(np.mean(np.asarray(result.probability) > FLAG_PROBABILITY))


def _recovery(imuge, original, attacked, result, true_mask) -> tuple[dict, dict]:
    """Recovery scores inside the true mask, and the images for figures."""
    recovered = imuge.recover(attacked, result)
    recovered_true = imuge.recover_with_mask(attacked, true_mask)
    telea = telea_inpaint(attacked, true_mask)
    scores = {
        "l_psnr": scoring.l_psnr(original, recovered, true_mask),
        "l_psnr_true_mask": scoring.l_psnr(original, recovered_true, true_mask),
        "l_psnr_telea": scoring.l_psnr(original, telea, true_mask),
        "psnr_recovered": scoring.psnr(original, recovered),
        "ssim_recovered": scoring.ssim(original, recovered),
    }
    return scores, {"recovered": recovered, "telea": telea}


def _evaluate_photo(imuge, original, donor, attacks, table2, seed, index, want_panel):
    """All scores of one photo: (photo metrics, table1 {attack: metrics}, table2 {row: metrics},
    verdicts {(category, attack): verdict}, panel images or None)."""
    from imuge_tf.attacks.masks import mask_statistics

    shape = original.shape[:2]
    immunized = imuge.immunize(original)
    photo = {"psnr_immunized": scoring.psnr(original, immunized),
             "ssim_immunized": scoring.ssim(original, immunized)}

    mask = _tamper_mask((seed, 16 * index), shape, **TAMPER_MASK)
    tampered = cases.paste(immunized, donor, mask)
    tampered_plain = cases.paste(original, donor, mask)
    noise_seed = seed * 100_003 + index
    table1, verdicts, panel = {}, {}, None
    for name in attacks:
        attack = ATTACKS[name]
        attacked, extra = attack(tampered, noise_seed)
        true_mask = mask | extra
        result = imuge.verify(attacked)
        scores = _localization(result, true_mask)
        recovery, images = _recovery(imuge, original, attacked, result, true_mask)
        scores.update(recovery)
        scores["l_psnr_tampered"] = scoring.l_psnr(original, attacked, true_mask)

        attacked_plain, _ = attack(tampered_plain, noise_seed)
        recovered_plain = imuge.recover_with_mask(attacked_plain, true_mask)
        scores["l_psnr_never_immunized"] = scoring.l_psnr(original, recovered_plain, true_mask)
        scores["l_psnr_telea_never_immunized"] = scoring.l_psnr(
            original, telea_inpaint(attacked_plain, true_mask), true_mask)
        scores["imuge_effect"] = scores["l_psnr_true_mask"] - scores["l_psnr_never_immunized"]
        scores["detected"] = float(result.verdict == "tampered")

        clean = imuge.verify(attack(immunized, noise_seed)[0])
        never = imuge.verify(attack(original, noise_seed)[0])
        scores["flagged_immunized"] = _flagged(clean)
        scores["flagged_never_immunized"] = _flagged(never)
        verdicts[("tampered", name)] = result.verdict
        verdicts[("immunized_untampered", name)] = clean.verdict
        verdicts[("never_immunized", name)] = never.verdict
        table1[name] = scores
        if want_panel and name == FIGURE_ATTACK:
            panel = panel_images(original, immunized, attacked, true_mask, result.mask,
                                 images["recovered"], images["telea"])

    rows = {}
    for row, (name, rst, rlt) in enumerate(table2, start=1):
        row_mask = _fixed_share_mask((seed, 16 * index + row), shape, rst, rlt)
        attacked = cases.paste(immunized, donor, row_mask)
        result = imuge.verify(attacked)
        scores = _localization(result, row_mask)
        scores.update(_recovery(imuge, original, attacked, result, row_mask)[0])
        scores["rst"], scores["rlt"] = mask_statistics(row_mask)
        rows[name] = scores
    return photo, table1, rows, verdicts, panel


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def panel_images(original, immunized, tampered, true_mask, predicted_mask, recovered,
                 telea=None) -> dict:
    """The images of one Fig. 7-like panel row, keyed by PANEL_TITLES (uint8 or bool)."""
    residual = np.abs(immunized.astype(np.float64) - original.astype(np.float64))
    magnified = np.clip(np.rint(residual * _RESIDUAL_GAIN), 0, 255).astype(np.uint8)
    panel = {
        "original": original, "immunized": immunized, "residual x10": magnified,
        "tampered": tampered, "true mask": np.asarray(true_mask, bool),
        "predicted mask": np.asarray(predicted_mask, bool), "recovered": recovered,
    }
    if telea is not None:
        panel["Telea"] = telea
    return panel


def _png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def save_panels(rows, path, *, row_labels=None, title=None) -> str:
    """Writes Fig. 7-like panels (one row per dict of `panel_images`) as a PNG at `path`.

    Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend change).
    """
    from matplotlib.figure import Figure

    rows = list(rows)
    if not rows:
        raise ValueError("save_panels needs at least one row")
    columns = [t for t in PANEL_TITLES if any(t in row for row in rows)]
    figure = Figure(figsize=(1.6 * len(columns), 1.75 * len(rows) + (0.4 if title else 0.1)))
    axes = figure.subplots(len(rows), len(columns), squeeze=False)
    for r, row in enumerate(rows):
        for c, name in enumerate(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if name in row:
                image = row[name]
                if image.dtype == bool:
                    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                else:
                    ax.imshow(image, interpolation="nearest")
            else:
                ax.axis("off")
            if r == 0:
                ax.set_title(name, fontsize=8)
        if row_labels is not None:
            axes[r][0].set_ylabel(str(row_labels[r]), fontsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    _write_atomic(path, _png_bytes(figure))
    return path


def _jpeg_plot(summary, path) -> str | None:
    """F1 and L-PSNR against the JPEG quality factor ('none' at 100); None without JPEG."""
    from matplotlib.figure import Figure

    table = summary["table1"]
    points = sorted(((int(n[4:]), n) for n in table if n.startswith("jpeg")), reverse=True)
    if "none" in table:
        points.insert(0, (100, "none"))
    if len(points) < 2:
        return None
    quality = [q for q, _ in points]
    figure = Figure(figsize=(8, 3.2))
    left, right = figure.subplots(1, 2)
    for key, style in (("f1", "o-"), ("iou", "s--"), ("auc", "^:")):
        left.plot(quality, [_nan(table[n][key]) for _, n in points], style,
                  label=METRIC_LABELS[key])
    left.set_ylim(0, 1.02)
    left.set_ylabel("score")
    for key, style in (("l_psnr", "o-"), ("l_psnr_true_mask", "s-"), ("l_psnr_telea", "^--"),
                       ("l_psnr_never_immunized", "v:"), ("l_psnr_tampered", "x:")):
        right.plot(quality, [_nan(table[n][key]) for _, n in points], style,
                   label=METRIC_LABELS[key])
    right.set_ylabel("dB")
    labels = ["none" if n == "none" else str(q) for q, n in points]
    for ax in (left, right):
        ax.set_xticks(quality, labels)
        ax.set_xlabel("JPEG quality factor")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    figure.suptitle(f"Localization and recovery vs JPEG quality ({summary['photos']} photos)",
                    fontsize=9)
    figure.tight_layout()
    _write_atomic(path, _png_bytes(figure))
    return path


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _write_atomic(path, data) -> None:
    """Bytes or text, replacing an earlier result (io.write_bytes_atomic: readers never see
    half a file)."""
    from imuge_tf.io import write_bytes_atomic

    write_bytes_atomic(path, data.encode("utf-8") if isinstance(data, str) else data,
                       force=True)


def _nan(value) -> float:
    return float("nan") if value is None else float(value)


def _json_safe(value):
    """NaN and infinities become null (strict JSON has neither); numpy scalars become Python."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _mean(values) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _csv_text(records) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["photo", "table", "setting", "metric", "value"])
    for record in records:
        photo, table, setting, metric, value = record
        writer.writerow([photo, table, setting, metric, repr(float(value))])
    return buffer.getvalue()


def _summarize(settings, names, skipped, photo_scores, table1_scores, table2_scores,
               verdicts, attacks, table2) -> dict:
    table1 = {a: {m: _mean([s[a][m] for s in table1_scores]) for m in TABLE1_METRICS}
              for a in attacks}
    rows = {}
    for name, rst, rlt in table2:
        rows[name] = {m: _mean([s[name][m] for s in table2_scores]) for m in TABLE2_METRICS}
        rows[name].update(target_rst=rst, target_rlt=rlt)
    counts = {category: {a: dict(Counter(v[(category, a)] for v in verdicts)) for a in attacks}
              for category in ("tampered", "immunized_untampered", "never_immunized")}
    for category in counts.values():
        for attack in attacks:
            category[attack] = {v: category[attack].get(v, 0) for v in VERDICTS}
    return {
        "photos": len(names),
        "photo_names": names,
        "skipped": skipped,
        "settings": settings,
        "immunization": {m: _mean([p[m] for p in photo_scores]) for m in PHOTO_METRICS},
        "columns": {a: ATTACKS[a].column for a in attacks},
        "table1": table1,
        "table2": rows,
        "baseline": {
            "method": f"cv2.inpaint INPAINT_TELEA, radius {TELEA_RADIUS}, true mask",
            "l_psnr_telea": {a: table1[a]["l_psnr_telea"] for a in attacks},
            "l_psnr_imuge_true_mask": {a: table1[a]["l_psnr_true_mask"] for a in attacks},
            "l_psnr_imuge": {a: table1[a]["l_psnr"] for a in attacks},
            "l_psnr_tampered": {a: table1[a]["l_psnr_tampered"] for a in attacks},
            "l_psnr_telea_never_immunized": {a: table1[a]["l_psnr_telea_never_immunized"]
                                             for a in attacks},
        },
        "imuge_effect": {
            "db": {a: table1[a]["imuge_effect"] for a in attacks},
            "l_psnr_immunized": {a: table1[a]["l_psnr_true_mask"] for a in attacks},
            "l_psnr_never_immunized": {a: table1[a]["l_psnr_never_immunized"]
                                       for a in attacks},
        },
        "flagged_fraction": {
            "immunized_untampered": {a: table1[a]["flagged_immunized"] for a in attacks},
            "never_immunized": {a: table1[a]["flagged_never_immunized"] for a in attacks},
        },
        "verdicts": counts,
    }


def _cell(value, key) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if key in ("bce", "f1", "iou", "auc", "detected", "ssim_recovered", "ssim_immunized",
               "flagged_immunized", "flagged_never_immunized", "rst", "rlt"):
        return f"{value:.3f}"
    return f"{value:.2f}"


def _size_label(settings) -> str:
    size = settings.get("image_size", "?")
    return "their own size" if size == "native" else f"{size} px"


def format_table(summary: dict) -> str:
    """The summary as text: Table 1 (rows = metrics, columns = attacks), Table 2, the Telea
    baseline, the Imuge effect and verdict counts. Accepts the dict from `run_evaluation` or the
    same loaded back from results.json (nulls for NaN)."""
    settings = summary.get("settings", {})
    table1 = summary["table1"]
    attacks = list(table1)
    columns = summary.get("columns", {})
    labels = [columns.get(a, a) for a in attacks]
    mask = settings.get("tamper_mask", TAMPER_MASK)
    area, largest = mask["area_range"], mask["largest_range"]
    immunization = summary["immunization"]
    lines = [
        f"Imuge evaluation: {summary['photos']} photo(s) at {_size_label(settings)},"
        f" seed {settings.get('seed', '?')}{', quick' if settings.get('quick') else ''}",
        f"Immunization: PSNR(I, I_M) {_cell(immunization['psnr_immunized'], 'psnr')} dB, "
        f"SSIM(I, I_M) {_cell(immunization['ssim_immunized'], 'ssim_immunized')}",
        "",
        f"Table 1: means over photos; donor tamper, RST {area[0]:.0%}-{area[1]:.0%}, "
        f"RLT {largest[0]:.0%}-{largest[1]:.0%}, then the column's real attack",
    ]
    width = max(len(METRIC_LABELS[m]) for m in TABLE1_METRICS) + 2
    cell = max(9, *(len(label) + 2 for label in labels))
    lines.append("".ljust(width) + "".join(label.rjust(cell) for label in labels))
    for metric in TABLE1_METRICS:
        lines.append(METRIC_LABELS[metric].ljust(width) + "".join(
            _cell(table1[a].get(metric), metric).rjust(cell) for a in attacks))

    table2 = summary.get("table2", {})
    if table2:
        lines += ["", "Table 2: no benign attack, fixed tamper shares (RST / RLT measured)"]
        metrics = TABLE2_METRICS
        name_width = max(len(n) for n in table2) + 2
        widths = [max(len(METRIC_LABELS[m]), 6) + 2 for m in metrics]
        lines.append("".ljust(name_width) + "".join(
            METRIC_LABELS[m].rjust(w) for m, w in zip(metrics, widths)))
        for name, row in table2.items():
            lines.append(name.ljust(name_width) + "".join(
                _cell(row.get(m), m).rjust(w) for m, w in zip(metrics, widths)))

    baseline = summary.get("baseline", {})
    if baseline:
        lines += ["", f"Baseline (section 4.3): {baseline['method']}; L-PSNR in dB",
                  "".ljust(width) + "".join(label.rjust(cell) for label in labels)]
        for key, label in (("l_psnr_imuge", "Imuge"), ("l_psnr_imuge_true_mask",
                                                      "Imuge true mask"),
                           ("l_psnr_telea", "Telea"),
                           ("l_psnr_telea_never_immunized", "Telea never imm."),
                           ("l_psnr_tampered", "tampered")):
            lines.append(label.ljust(width) + "".join(
                _cell(baseline[key].get(a), "l_psnr").rjust(cell) for a in attacks))

    verdicts = summary.get("verdicts", {})
    if verdicts:
        lines += ["", "Verdicts (intact / tampered / not_immunized)",
                  "".ljust(width) + "".join(label.rjust(cell) for label in labels)]
        for category, label in (("tampered", "tampered imm."),
                                ("immunized_untampered", "clean imm."),
                                ("never_immunized", "never imm.")):
            counts = verdicts.get(category, {})
            lines.append(label.ljust(width) + "".join(
                "/".join(str(counts.get(a, {}).get(v, 0)) for v in VERDICTS).rjust(cell)
                for a in attacks))
    if summary.get("skipped"):
        lines += ["", f"Skipped {len(summary['skipped'])} unreadable photo(s)."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------


def run_evaluation(imuge, paths_or_arrays, out_dir, *, limit=None, seed=0, quick=False,
                   size=None, progress=True) -> dict:
    """Runs the evaluation protocol (module docstring) and writes its files under `out_dir`.

    Args:
      imuge: an `imuge_tf.inference.Imuge` (or anything with its image_size, immunize, verify,
        recover and recover_with_mask).
      paths_or_arrays: a folder (searched recursively), one image file, or a sequence of file
        paths and/or uint8 arrays.
      out_dir: where table.txt, results.csv, results.json and figures/ go (created).
      limit: evaluate at most this many photos (the first ones, in order); `quick` makes the
        default QUICK_PHOTOS.
      seed: a non-negative int; the same seed gives the same masks and noise.
      quick: only the columns QUICK_ATTACKS and the Table 2 rows QUICK_TABLE2, fewer photos and
        figure rows: for fast runs and tests.
      size: None to evaluate every photo at its own size; S for centred S x S squares.
      progress: show a tqdm bar over photos.

    Returns the summary dict also written to results.json. Photos that cannot be read are
    skipped and listed under "skipped"; ValueError when none could be read.
    """
    from tqdm.auto import tqdm

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if limit is not None and (isinstance(limit, bool) or int(limit) < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    if quick and limit is None:
        limit = QUICK_PHOTOS
    seed = int(seed)
    if size is not None and (isinstance(size, bool) or int(size) < 16):
        raise ValueError(f"size must be None (native) or an int >= 16, got {size!r}")
    size = None if size is None else int(size)
    attacks = QUICK_ATTACKS if quick else tuple(a.name for a in TABLE1_ATTACKS)
    for name in attacks:
        get_attack(name)
    table2 = tuple(r for r in TABLE2_SETTINGS if not quick or r[0] in QUICK_TABLE2)
    figure_rows = QUICK_FIGURE_PHOTOS if quick else FIGURE_PHOTOS

    sources = _photo_sources(paths_or_arrays)
    if limit is not None:
        sources = sources[:int(limit)]
    if not sources:
        raise ValueError("no photos to evaluate")
    os.makedirs(out_dir, exist_ok=True)

    names, skipped, records = [], [], []
    photo_scores, table1_scores, table2_scores, verdicts, panels = [], [], [], [], []
    previous = None
    bar = tqdm(sources, desc="evaluate", unit="photo", disable=not progress)
    for name, source in bar:
        try:
            original = load_photo(source, size)
        except (OSError, ValueError, SyntaxError) as error:
            # Pillow raises OSError for broken files, SyntaxError for some truncated headers.
            skipped.append({"photo": name, "error": f"{type(error).__name__}: {error}"})
            continue
        donor = (_donor_for(original, previous) if previous is not None
                 else _bundled_donor(original))
        index = len(names)
        photo, scores1, scores2, photo_verdicts, panel = _evaluate_photo(
            imuge, original, donor, attacks, table2, seed, index, index < figure_rows)
        previous = original
        names.append(name)
        photo_scores.append(photo)
        table1_scores.append(scores1)
        table2_scores.append(scores2)
        verdicts.append(photo_verdicts)
        if panel is not None:
            panels.append((name, panel))
        records += [(name, "photo", "", m, v) for m, v in photo.items()]
        records += [(name, "table1", a, m, s[m]) for a, s in scores1.items() for m in
                    TABLE1_METRICS]
        records += [(name, "table2", r, m, s[m]) for r, s in scores2.items() for m in
                    TABLE2_METRICS]
        if progress:
            none = scores1.get("none", next(iter(scores1.values())))
            bar.set_postfix(f1=f"{none['f1']:.2f}", lpsnr=f"{none['l_psnr']:.1f}")
    bar.close()
    if not names:
        raise ValueError(f"none of the {len(sources)} photo(s) could be read: "
                         + "; ".join(s["error"] for s in skipped[:3]))

    settings = {
        "image_size": "native" if size is None else size,
        "working_size": int(imuge.image_size),
        "seed": seed,
        "quick": bool(quick),
        "limit": None if limit is None else int(limit),
        "attacks": list(attacks),
        "table2_settings": [list(r) for r in table2],
        "tamper": "donor (content of the previous photo; a bundled photo for the first)",
        "tamper_mask": {k: list(v) if isinstance(v, tuple) else v
                        for k, v in TAMPER_MASK.items()},
        "telea_radius": TELEA_RADIUS,
        "figure_attack": FIGURE_ATTACK,
    }
    summary = _summarize(settings, names, skipped, photo_scores, table1_scores, table2_scores,
                         verdicts, attacks, table2)

    figures_dir = os.path.join(out_dir, "figures")
    files = {"table": "table.txt", "csv": "results.csv", "json": "results.json"}
    if panels:
        save_panels([p for _, p in panels], os.path.join(figures_dir, "fig7.png"),
                    row_labels=[n for n, _ in panels],
                    title=f"Imuge: donor tamper, then {ATTACKS[FIGURE_ATTACK].column}"
                    if FIGURE_ATTACK in attacks else None)
        files["panels"] = os.path.join("figures", "fig7.png")
    if _jpeg_plot(summary, os.path.join(figures_dir, "jpeg_quality.png")):
        files["jpeg_plot"] = os.path.join("figures", "jpeg_quality.png")
    summary["files"] = files

    _write_atomic(os.path.join(out_dir, "results.csv"), _csv_text(records))
    _write_atomic(os.path.join(out_dir, "table.txt"), format_table(summary))
    _write_atomic(os.path.join(out_dir, "results.json"),
                  json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n")
    return summary
