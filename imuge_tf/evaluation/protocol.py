"""`run_evaluation`: the evaluation protocol over a set of photos, from reading them to the
files it writes (the steps, metrics and files are described in `imuge_tf.evaluation`)."""

from __future__ import annotations

import os

import numpy as np

from imuge_tf.attacks.evaluation import ATTACKS, TABLE1_ATTACKS, get_attack
from imuge_tf.evaluation.figures import _jpeg_plot, save_panels
from imuge_tf.evaluation.inputs import _bundled_donor, _donor_for, _photo_sources, load_photo
from imuge_tf.evaluation.report import _summarize, write_report
from imuge_tf.evaluation.scores import _evaluate_photo
from imuge_tf.evaluation.settings import (
    FIGURE_ATTACK,
    FIGURE_PHOTOS,
    QUICK_ATTACKS,
    QUICK_FIGURE_PHOTOS,
    QUICK_PHOTOS,
    QUICK_TABLE2,
    TABLE1_METRICS,
    TABLE2_METRICS,
    TABLE2_SETTINGS,
    TAMPER_MASK,
    TELEA_RADIUS,
)


def run_evaluation(imuge, paths_or_arrays, out_dir, *, limit=None, seed=0, quick=False,
                   size=None, progress=True) -> dict:
    """Runs the evaluation protocol (`imuge_tf.evaluation`) and writes its files under `out_dir`.

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

    write_report(out_dir, summary, records)
    return summary
