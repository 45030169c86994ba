"""Losses (eqs. 3-9) and metrics against values computed by hand on tiny tensors."""

import math

import numpy as np
import pytest
import tensorflow as tf

from imuge_tf import losses
from imuge_tf.metrics import masked_psnr, psnr


def t(values):
    return tf.constant(np.asarray(values, dtype=np.float32))


def test_tamper_classification_loss_is_bce():
    predicted = t([0.9, 0.2, 0.5, 0.99]).numpy().reshape(1, 2, 2, 1)
    true = t([1.0, 0.0, 1.0, 0.0]).numpy().reshape(1, 2, 2, 1)
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.5) + math.log(0.01)) / 4
    assert float(losses.tamper_classification_loss(predicted, true)) == pytest.approx(
        expected, rel=1e-5)


def test_recovery_loss_adds_the_masked_term():
    original = np.zeros((1, 2, 2, 3), np.float32)
    recovered = np.zeros((1, 2, 2, 3), np.float32)
    recovered[0, 0, 0] = [0.3, 0.3, 0.3]  # error inside the mask
    recovered[0, 1, 1] = [0.1, 0.1, 0.1]  # error outside the mask
    mask = np.zeros((1, 2, 2, 1), np.float32)
    mask[0, 0, 0] = 1.0
    whole = (3 * 0.09 + 3 * 0.01) / 12  # mean over all 12 values
    inside = 0.09  # mean squared error over the 3 masked values
    assert float(losses.recovery_loss(original, recovered, mask)) == pytest.approx(
        whole + inside, rel=1e-5)
    # No tampered pixel: only the whole-image term, and no division by zero.
    assert float(losses.recovery_loss(original, recovered, np.zeros_like(mask))) == (
        pytest.approx(whole, rel=1e-5))


def test_adversarial_losses_are_least_squares():
    fake, real = t([0.2, 0.6]), t([0.9, 1.1])
    assert float(losses.generator_adversarial_loss(fake)) == pytest.approx(
        (0.8**2 + 0.4**2) / 2, rel=1e-5)
    assert float(losses.discriminator_loss(real, fake)) == pytest.approx(
        0.5 * (0.04 + 0.36) / 2 + 0.5 * (0.01 + 0.01) / 2, rel=1e-5)


def test_generator_loss_combines_terms_with_paper_weights():
    total = losses.generator_loss(1.0, 2.0, 3.0, 4.0, 5.0, classification_weight=0.01,
                                  adversarial_weight=0.005, immunization_weight=0.5,
                                  container_adversarial_weight=0.5)
    assert float(total) == pytest.approx(1.0 + 0.5 * 2.0 + 0.01 * 3.0 + 0.005 * (4.0 + 0.5 * 5.0))


def test_immunization_hinge_is_the_psnr_shortfall_below_the_target():
    original = np.zeros((2, 4, 4, 3), np.float32)
    immunized = np.full((2, 4, 4, 3), 0.1, np.float32)  # sample 0: 20 dB
    immunized[1] = 0.01  # sample 1: 40 dB, above the target: no shortfall
    assert float(losses.immunization_hinge_loss(original, immunized, 30.0)) == pytest.approx(
        (30.0 - 20.0) / 2, rel=1e-5)
    assert float(losses.immunization_hinge_loss(original, original, 99.0)) == 0.0


def test_psnr_and_masked_psnr():
    a = np.zeros((2, 4, 4, 3), np.float32)
    b = np.full((2, 4, 4, 3), 0.1, np.float32)
    np.testing.assert_allclose(psnr(a, b).numpy(), [20.0, 20.0], rtol=1e-5)
    mask = np.zeros((2, 4, 4, 1), np.float32)
    mask[0, :2, :2] = 1.0
    b[0, :2, :2] = 0.01  # inside sample 0's mask the error is 0.01 -> 40 dB
    local, has_area = masked_psnr(a, b, mask)
    assert float(local[0]) == pytest.approx(40.0, rel=1e-4)
    assert has_area.numpy().tolist() == [1.0, 0.0]
    assert float(psnr(a, a)[0]) == 100.0
