"""The evaluation protocol's settings: its tamper masks, Table 2 rows, quick subset, figure
choices, and the names and labels of the metrics it reports (see `imuge_tf.evaluation`)."""

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
