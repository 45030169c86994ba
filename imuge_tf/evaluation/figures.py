"""The protocol's figures: Fig. 7-like panels (`panel_images`, `save_panels`) and the plot of
localization and recovery against the JPEG quality factor, written as PNG files with
matplotlib's object API (no pyplot, no global backend change)."""

from __future__ import annotations

import io

import numpy as np

from imuge_tf.evaluation.settings import METRIC_LABELS
from imuge_tf.io import write_bytes_atomic

PANEL_TITLES = ("original", "immunized", "residual x10", "tampered", "true mask",
                "predicted mask", "recovered", "Telea")
_RESIDUAL_GAIN = 10.0


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
    write_bytes_atomic(path, _png_bytes(figure), force=True)
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
    write_bytes_atomic(path, _png_bytes(figure), force=True)
    return path



def _nan(value) -> float:
    return float("nan") if value is None else float(value)

