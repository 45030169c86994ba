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

The package's modules: `settings` (masks, rows, metric names and labels), `inputs` (photos,
donors, tamper masks), `scores` (one photo's scores and the Telea baseline), `figures`,
`report` (summary, table and result files) and `protocol` (`run_evaluation`).
"""

from imuge_tf.evaluation.figures import panel_images, save_panels

# The underscored names are not public; benchmarks and tests import them from here to draw
# their cases the protocol's way.
from imuge_tf.evaluation.inputs import _donor_for as _donor_for
from imuge_tf.evaluation.inputs import _fixed_share_mask as _fixed_share_mask
from imuge_tf.evaluation.inputs import _photo_sources as _photo_sources
from imuge_tf.evaluation.inputs import _tamper_mask as _tamper_mask
from imuge_tf.evaluation.inputs import load_photo
from imuge_tf.evaluation.protocol import run_evaluation
from imuge_tf.evaluation.report import format_table
from imuge_tf.evaluation.scores import telea_inpaint
from imuge_tf.evaluation.settings import (
    FIGURE_ATTACK,
    METRIC_LABELS,
    QUICK_ATTACKS,
    QUICK_TABLE2,
    TABLE1_METRICS,
    TABLE2_METRICS,
    TABLE2_SETTINGS,
    TAMPER_MASK,
    TELEA_RADIUS,
    VERDICTS,
)

__all__ = [
    "FIGURE_ATTACK",
    "METRIC_LABELS",
    "QUICK_ATTACKS",
    "QUICK_TABLE2",
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
