"""Scoring one photo under the protocol: immunize it, tamper and attack it, verify and recover
it, and score the result against the never-immunized photo and the Telea baseline
(`telea_inpaint`); the metrics themselves come from `imuge_tf.scoring`."""

from __future__ import annotations

import numpy as np

from imuge_tf import scoring
from imuge_tf.attacks import cases
from imuge_tf.attacks.evaluation import ATTACKS
from imuge_tf.evaluation.figures import panel_images
from imuge_tf.evaluation.inputs import _fixed_share_mask, _tamper_mask
from imuge_tf.evaluation.settings import (
    FIGURE_ATTACK,
    FLAG_PROBABILITY,
    TAMPER_MASK,
    TELEA_RADIUS,
)


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

