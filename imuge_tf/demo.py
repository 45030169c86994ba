"""A one-photo demonstration of the whole Imuge story (the `imuge demo` command).

`run_demo(imuge, out_dir)`:

1. takes a bundled scikit-image photo ("astronaut") at a little more than the model's working
   size and not square (1.25 S x 1.5 S), to show that the facade handles any size;
2. immunizes it, and "shares" it: a real JPEG at quality 90 (Pillow, in memory), read back;
3. tampers it: an ellipse-shaped region is replaced by the same region of another bundled photo
   ("chelsea"), and the tampered photo is saved as JPEG 90 again, as an editor would;
4. verifies it (verdict and predicted mask) and recovers it, with the predicted mask and, for
   comparison, with the true one; OpenCV's Telea inpainting of the true mask is the baseline;
5. does the same with the photo kept lossless (PNG, as a photo sent as a file): the hidden
   thumbnail survives there, and JPEG erases it, so the two show what each channel keeps;
6. writes `out_dir/demo.png`, two rows of the evaluation's Fig. 7 figure (original,
   immunized, residual x10, tampered, true mask, predicted mask, recovered, Telea), and
   returns the scores (`format_demo` turns them into text).
"""

from __future__ import annotations

import io
import os
import time

import numpy as np

from imuge_tf import scoring
from imuge_tf.attacks import cases
from imuge_tf.evaluation import panel_images, save_panels, telea_inpaint
from imuge_tf.io import cover

__all__ = ["DEMO_DONOR", "DEMO_JPEG_QUALITY", "DEMO_PHOTO", "format_demo", "run_demo"]

DEMO_PHOTO = "astronaut"
DEMO_DONOR = "chelsea"
DEMO_JPEG_QUALITY = 90
# The ellipse: centre and semi-axes as fractions of height / width, rotation in degrees. It
# covers the astronaut's helmet and arm; its share of the photo, pi x ry x rx, is what the
# demo prints as the tampered area.
_ELLIPSE = (0.62, 0.55, 0.20, 0.17, 25.0)


def _ellipse_mask(height: int, width: int) -> np.ndarray:
    cy, cx, ry, rx, degrees = _ELLIPSE
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    y, x = (y + 0.5) / height - cy, (x + 0.5) / width - cx
    angle = np.deg2rad(degrees)
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def _jpeg(image: np.ndarray, quality: int) -> tuple[np.ndarray, int]:
    """A real JPEG round trip through Pillow in memory: (decoded image, file size in bytes)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        return np.asarray(decoded.convert("RGB")).copy(), buffer.tell()


def _png(image: np.ndarray) -> np.ndarray:
    """A real PNG round trip through Pillow in memory."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        return np.asarray(decoded.convert("RGB")).copy()


def run_demo(imuge, out_dir, *, progress=True) -> dict:
    """Immunize, share, tamper, verify and recover one bundled photo; writes out_dir/demo.png.

    Args:
      imuge: an `imuge_tf.inference.Imuge` (or anything with its image_size, immunize, verify,
        recover and recover_with_mask).
      out_dir: folder for demo.png (created).
      progress: show a tqdm bar over the steps.

    Returns a dict: photo and size, verdict, tampered_fraction, psnr_immunized (PSNR(I, I_M)),
    ssim_immunized, psnr_shared (PSNR(I, JPEG of I_M)), f1, iou, auc, l_psnr_tampered (the
    tampered area as received), l_psnr_recovered (recovered with the predicted mask),
    l_psnr_recovered_true_mask, l_psnr_telea, the same five scores and the verdict for the
    lossless case with the suffix `_lossless`, seconds, figure (the PNG's path).
    """
    from tqdm.auto import tqdm

    from imuge_tf.samples import sample_photo

    start = time.perf_counter()
    size = int(imuge.image_size)
    height, width = size + size // 4, size + size // 2
    steps = tqdm(total=7, desc="demo", unit="step", disable=not progress)

    def step(label):
        steps.set_postfix_str(label)
        steps.update(1)

    original = cover(sample_photo(DEMO_PHOTO), height, width)
    donor = cases.covering(sample_photo(DEMO_DONOR), height, width)
    immunized = imuge.immunize(original)
    step("immunized")
    shared, shared_bytes = _jpeg(immunized, DEMO_JPEG_QUALITY)
    step("shared as JPEG")
    mask = _ellipse_mask(height, width)
    tampered, _ = _jpeg(cases.paste(shared, donor, mask), DEMO_JPEG_QUALITY)
    step("tampered")
    result = imuge.verify(tampered)
    step(f"verdict {result.verdict}")
    recovered = imuge.recover(tampered, result)
    recovered_true = imuge.recover_with_mask(tampered, mask)
    telea = telea_inpaint(tampered, mask)
    step("recovered")

    lossless = _png(cases.paste(_png(immunized), donor, mask))
    lossless_result = imuge.verify(lossless)
    lossless_recovered = imuge.recover(lossless, lossless_result)
    lossless_true = imuge.recover_with_mask(lossless, mask)
    lossless_telea = telea_inpaint(lossless, mask)
    step(f"lossless: verdict {lossless_result.verdict}")

    rows = [panel_images(original, immunized, tampered, mask, result.mask, recovered, telea),
            panel_images(original, immunized, lossless, mask, lossless_result.mask,
                         lossless_recovered, lossless_telea)]
    figure = os.path.join(out_dir, "demo.png")
    os.makedirs(out_dir, exist_ok=True)
    save_panels(rows, figure, row_labels=[f"JPEG {DEMO_JPEG_QUALITY}", "PNG"],
                title=f"Imuge demo: {DEMO_PHOTO} {width}x{height}, ellipse from {DEMO_DONOR}; "
                f"verdict {result.verdict} (JPEG), {lossless_result.verdict} (PNG)")
    step("figure")
    steps.close()
    return {
        "photo": DEMO_PHOTO,
        "donor": DEMO_DONOR,
        "height": height,
        "width": width,
        "image_size": size,
        "jpeg_quality": DEMO_JPEG_QUALITY,
        "shared_bytes": int(shared_bytes),
        "verdict": result.verdict,
        "true_fraction": float(mask.mean()),
        "tampered_fraction": float(result.tampered_fraction),
        "psnr_immunized": scoring.psnr(original, immunized),
        "ssim_immunized": scoring.ssim(original, immunized),
        "psnr_shared": scoring.psnr(original, shared),
        "f1": scoring.f1(result.mask, mask),
        "iou": scoring.iou(result.mask, mask),
        "auc": scoring.auc(result.probability, mask),
        "l_psnr_tampered": scoring.l_psnr(original, tampered, mask),
        "l_psnr_recovered": scoring.l_psnr(original, recovered, mask),
        "l_psnr_recovered_true_mask": scoring.l_psnr(original, recovered_true, mask),
        "l_psnr_telea": scoring.l_psnr(original, telea, mask),
        "verdict_lossless": lossless_result.verdict,
        "f1_lossless": scoring.f1(lossless_result.mask, mask),
        "l_psnr_tampered_lossless": scoring.l_psnr(original, lossless, mask),
        "l_psnr_recovered_lossless": scoring.l_psnr(original, lossless_recovered, mask),
        "l_psnr_recovered_true_mask_lossless": scoring.l_psnr(original, lossless_true, mask),
        "l_psnr_telea_lossless": scoring.l_psnr(original, lossless_telea, mask),
        "seconds": time.perf_counter() - start,
        "figure": figure,
    }


def format_demo(metrics: dict) -> str:
    """The demo's scores as a few lines of text."""
    m = metrics
    return "\n".join([
        f"Imuge demo: {m['photo']} at {m['width']}x{m['height']} (model works at "
        f"{m['image_size']} px), shared as JPEG {m['jpeg_quality']} ({m['shared_bytes']} bytes),"
        f" an ellipse ({m['true_fraction']:.0%} of the photo) replaced from {m['donor']}",
        f"  immunized:  PSNR(I, I_M) {m['psnr_immunized']:.2f} dB, SSIM {m['ssim_immunized']:.3f};"
        f" after JPEG {m['psnr_shared']:.2f} dB",
        f"  verify:     verdict {m['verdict']}, flagged {m['tampered_fraction']:.1%} of the photo;"
        f" F1 {m['f1']:.3f}, IoU {m['iou']:.3f}, AUC {m['auc']:.3f}",
        f"  L-PSNR:     tampered {m['l_psnr_tampered']:.2f} dB -> recovered "
        f"{m['l_psnr_recovered']:.2f} dB (true mask {m['l_psnr_recovered_true_mask']:.2f} dB; "
        f"Telea inpainting {m['l_psnr_telea']:.2f} dB)",
        f"  as PNG:     verdict {m['verdict_lossless']}, F1 {m['f1_lossless']:.3f}; L-PSNR "
        f"tampered {m['l_psnr_tampered_lossless']:.2f} dB -> recovered "
        f"{m['l_psnr_recovered_lossless']:.2f} dB (true mask "
        f"{m['l_psnr_recovered_true_mask_lossless']:.2f} dB; Telea "
        f"{m['l_psnr_telea_lossless']:.2f} dB): the hidden thumbnail survives a lossless file",
        f"  figure:     {m['figure']} ({m['seconds']:.1f} s)",
    ]) + "\n"
