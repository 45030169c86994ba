"""The protocol's report: the summary of per-photo scores (means over photos, verdict
counts), its text table (`format_table`), and the files results.csv, table.txt and
results.json (`write_report`)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import Counter

import numpy as np

from imuge_tf.attacks.evaluation import ATTACKS
from imuge_tf.evaluation.settings import (
    METRIC_LABELS,
    PHOTO_METRICS,
    TABLE1_METRICS,
    TABLE2_METRICS,
    TAMPER_MASK,
    TELEA_RADIUS,
    VERDICTS,
)
from imuge_tf.io import write_text_atomic


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



def write_report(out_dir, summary: dict, records) -> None:
    """Writes results.csv (`records`: (photo, table, setting, metric, value) rows), table.txt
    and results.json (`summary`, NaN as null) under `out_dir`, each replacing an earlier
    result atomically: a reader never sees half a file."""
    write_text_atomic(os.path.join(out_dir, "results.csv"), _csv_text(records), force=True)
    write_text_atomic(os.path.join(out_dir, "table.txt"), format_table(summary), force=True)
    write_text_atomic(os.path.join(out_dir, "results.json"),
                      json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n",
                      force=True)
