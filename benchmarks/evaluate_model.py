"""A trained model on held-out photos with the paper's protocol, next to the paper's Table 1.

    python benchmarks/evaluate_model.py --data HELDOUT_DIR [--model PATH] [--out DIR] [--size S]

Runs `imuge_tf.evaluation.run_evaluation` (real codecs; the same as `imuge evaluate`) on
photos the model never saw, prints the full table, and writes the `model_evaluation` section of
BENCHMARKS.md: Table 1 with the paper's figures beside ours, the Telea inpainting baseline and
the Imuge effect, Table 2, false alarms and verdicts, and the quality bars of the first
shipped model (immunized PSNR >= 30 dB, pixel F1 >= 0.7 without a benign attack, recovery
L-PSNR above Telea's).
"""

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import command_line, log, machine_facts, markdown_table, update_section, utc_now  # noqa: E402,I001

# The paper's Table 1 (134 photos, human-made tampers; PSNR and SSIM of the recovered image).
PAPER_TABLE1 = {
    "bce": (0.022, 0.096, 0.106, 0.148, 0.074, 0.121, 0.027, 0.082, 0.155, 0.052, 0.103, 0.015),
    "l_psnr": (26.11, 23.85, 18.71, 23.87, 25.10, 24.52, 26.85, 24.73, 24.10, 19.93, 27.06,
               27.11),
    "psnr_recovered": (29.33, 27.43, 25.98, 25.23, 26.61, 25.78, 28.66, 25.94, 24.55, 27.35,
                       28.52, 29.60),
    "ssim_recovered": (0.862, 0.854, 0.803, 0.838, 0.870, 0.829, 0.863, 0.821, 0.797, 0.817,
                       0.842, 0.865),
}
PAPER_COLUMNS = ("jpeg90", "jpeg70", "jpeg50", "resize150", "resize70", "resize50", "crop90",
                 "crop70", "crop50", "blur", "noise", "none")
ROWS = (("bce", "BCE"), ("f1", "pixel F1"), ("iou", "IoU"), ("auc", "AUC"),
        ("l_psnr", "L-PSNR"), ("l_psnr_true_mask", "L-PSNR, true mask"),
        ("l_psnr_telea", "L-PSNR, Telea"), ("imuge_effect", "Imuge effect (dB)"),
        ("psnr_recovered", "PSNR(I, I_R)"), ("ssim_recovered", "SSIM(I, I_R)"),
        ("flagged_immunized", "flagged, clean immunized"),
        ("flagged_never_immunized", "flagged, never immunized"))
PAPER_ROWS = {"bce": "BCE", "l_psnr": "L-PSNR", "psnr_recovered": "PSNR", "ssim_recovered": "SSIM"}


def fmt(value, digits=2):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def digits_for(key):
    return 3 if key in ("bce", "f1", "iou", "auc", "ssim_recovered", "flagged_immunized",
                        "flagged_never_immunized") else 2


def size_label(settings):
    size = settings.get("image_size")
    return "at their own size" if size == "native" else f"as centred {size} px squares"


def report(summary, model_path, data):
    table1 = summary["table1"]
    attacks = [a for a in PAPER_COLUMNS if a in table1]
    rows = []
    for key, label in ROWS:
        rows.append([label] + [fmt(table1[a].get(key), digits_for(key)) for a in attacks])
        if key in PAPER_ROWS:
            rows.append([f"*paper {PAPER_ROWS[key]}*"] + [
                fmt(PAPER_TABLE1[key][PAPER_COLUMNS.index(a)], digits_for(key))
                for a in attacks])
    lines = [
        f"Model `{model_path}` on {summary['photos']} held-out photo(s) from `{data}` "
        f"{size_label(summary['settings'])}; {utc_now()}; "
        f"{machine_facts().get('cpu', '')}. Command: `{command_line()}`.",
        "",
        f"Immunization: PSNR(I, I_M) **{fmt(summary['immunization']['psnr_immunized'])} dB**, "
        f"SSIM {fmt(summary['immunization']['ssim_immunized'], 3)}.",
        "",
        "Table 1 (donor tamper of RST 10-30 %, then the column's real attack; means over "
        "photos). The paper's rows (in italics) come from 134 photos with human-made tampers "
        "at 256 px after full training, so they are a reference, not a like-for-like "
        "comparison. Crops count their black border as tampered. L-PSNR is inside the true "
        "tampered area; the paper's PSNR/SSIM are of the "
        "recovered image.",
        "",
        markdown_table(["metric"] + attacks, rows),
    ]
    table2 = summary.get("table2", {})
    if table2:
        keys = [k for k in ("bce", "f1", "iou", "l_psnr", "l_psnr_true_mask", "l_psnr_telea",
                            "rst", "rlt") if k in next(iter(table2.values()))]
        lines += ["", "Table 2 (no benign attack, fixed tamper shares):", "",
                  markdown_table(["row"] + keys, [[name] + [fmt(row.get(k), digits_for(k))
                                                            for k in keys]
                                                  for name, row in table2.items()])]
    none = table1.get("none", {})
    bars = [
        ("immunized PSNR >= 30 dB", summary["immunization"]["psnr_immunized"], 30.0),
        ("pixel F1 >= 0.7, no benign attack", none.get("f1"), 0.7),
        ("recovery L-PSNR > Telea's, no benign attack", none.get("l_psnr"),
         none.get("l_psnr_telea")),
    ]
    lines += ["", "Bars:", ""]
    for name, value, bar in bars:
        ok = value is not None and bar is not None and value >= bar
        lines.append(f"- {name}: {fmt(value, 3)} vs {fmt(bar, 3)}: "
                     f"{'met' if ok else 'NOT met'}")
    verdicts = summary.get("verdicts", {})
    if verdicts:
        lines += ["", "Verdicts on untampered photos after each attack "
                  "(intact/tampered/not_immunized):", ""]
        vrows = []
        for category, label in (("immunized_untampered", "clean immunized"),
                                ("never_immunized", "never immunized"),
                                ("tampered", "tampered immunized")):
            counts = verdicts.get(category, {})
            vrows.append([label] + ["/".join(str(counts.get(a, {}).get(v, 0)) for v in
                                            ("intact", "tampered", "not_immunized"))
                                    for a in attacks])
        lines.append(markdown_table(["photos"] + attacks, vrows))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder of held-out photos")
    parser.add_argument("--model", default=None, help="model folder (default: shipped)")
    parser.add_argument("--out", default="runs/eval-model", help="evaluation outputs")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=None,
                        help="centred S x S squares instead of whole photos at their own size")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)

    from imuge_tf.evaluation import format_table, run_evaluation
    from imuge_tf.inference import PRETRAINED_DIR, Imuge

    model_path = args.model or PRETRAINED_DIR
    imuge = Imuge.load(model_path)
    log(f"evaluating {model_path} on {args.data}")
    summary = run_evaluation(imuge, args.data, args.out, limit=args.limit, seed=args.seed,
                             size=args.size)
    print(format_table(summary))
    shown = os.path.relpath(model_path) if args.model else "imuge_tf/pretrained"
    body = report(summary, shown, args.data)
    print(body)
    if not args.no_write:
        update_section("model_evaluation", body)
        log("wrote the model_evaluation section of BENCHMARKS.md")


if __name__ == "__main__":
    main()
