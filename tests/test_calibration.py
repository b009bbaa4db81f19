"""pipeline.model.calibration: the ECE against a hand computation, the reliability bins, and the
temperature fit (lower NLL on the split it is fitted on, the same argmax, the same T every time)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss

from pipeline.model import calibration

# Five texts, three classes; no confidence on a bin edge (k / 15).
PROBA = np.array(
    [
        [0.90, 0.05, 0.05],  # label 0: right at 0.90, bin [13/15, 14/15)
        [0.82, 0.09, 0.09],  # label 1: wrong at 0.82, bin [12/15, 13/15)
        [0.28, 0.62, 0.10],  # label 1: right at 0.62, bin [9/15, 10/15)
        [0.20, 0.25, 0.55],  # label 0: wrong at 0.55, bin [8/15, 9/15)
        [0.93, 0.04, 0.03],  # label 2: wrong at 0.93, bin [13/15, 14/15) with the first
    ]
)
LABELS = np.array([0, 1, 1, 0, 2])


def test_ece_matches_a_hand_computation():
    # Bin 13: mean confidence (0.90 + 0.93) / 2 = 0.915, accuracy 1/2, 2 of 5 texts; each other bin one text.
    expected = (2 * abs(0.5 - 0.915) + abs(0 - 0.82) + abs(1 - 0.62) + abs(0 - 0.55)) / 5
    assert expected == pytest.approx(0.516)
    assert calibration.calibration_error(PROBA, LABELS) == pytest.approx(expected, abs=1e-6)


def test_reliability_bins_are_the_eces_bins():
    bins = calibration.reliability(PROBA, LABELS)
    assert [(b["lower"], b["upper"]) for b in bins] == [
        (round(8 / 15, 6), 0.6),
        (0.6, round(10 / 15, 6)),
        (0.8, round(13 / 15, 6)),
        (round(13 / 15, 6), round(14 / 15, 6)),
    ]
    assert [(b["count"], b["accuracy"], b["confidence"]) for b in bins] == [
        (1, 0.0, 0.55),
        (1, 1.0, 0.62),
        (1, 0.0, 0.82),
        (2, 0.5, 0.915),
    ]
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(400, 4)) * 3
    labels = rng.integers(0, 4, 400)
    proba = calibration.softmax(logits)
    weighted = sum(
        b["count"] / 400 * abs(b["accuracy"] - b["confidence"]) for b in calibration.reliability(proba, labels)
    )
    assert weighted == pytest.approx(calibration.calibration_error(proba, labels), abs=1e-5)


TRUE_TEMPERATURE = 3.0


def _overconfident(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits 3x too large: each label is drawn from softmax(logits / 3)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 5)) * 6
    p = calibration.softmax(logits, TRUE_TEMPERATURE)
    labels = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return logits, labels


def test_temperature_lowers_the_nll_it_is_fitted_on_and_keeps_the_argmax():
    logits, labels = _overconfident()
    temperature = calibration.fit_temperature(logits, labels)
    assert temperature == pytest.approx(TRUE_TEMPERATURE, rel=0.15)  # overconfident logits are softened
    before, after = calibration.softmax(logits), calibration.softmax(logits, temperature)
    assert log_loss(labels, after) < log_loss(labels, before) - 0.1
    assert calibration.nll(logits, labels, temperature) == pytest.approx(log_loss(labels, after), abs=1e-9)
    assert (after.argmax(1) == before.argmax(1)).all() and (after.argmax(1) == logits.argmax(1)).all()
    # The minimum: a step either way raises the NLL.
    for step in (1.01, 1 / 1.01):
        assert calibration.nll(logits, labels, temperature * step) > calibration.nll(logits, labels, temperature)
    # Deterministic, and at DIGITS significant digits.
    assert calibration.fit_temperature(logits, labels) == temperature == float(f"{temperature:.6g}")
    # On other data from the same source, it calibrates too.
    test_logits, test_labels = _overconfident(seed=1)
    assert calibration.calibration_error(
        calibration.softmax(test_logits, temperature), test_labels
    ) < calibration.calibration_error(calibration.softmax(test_logits), test_labels)


def test_temperature_stays_1_where_the_split_has_no_error_or_no_right_answer():
    # No finite minimum: without a mistake, the smaller T the likelier; with no right answer, the larger.
    logits, _ = _overconfident()
    right = logits.argmax(1)
    assert calibration.nll(logits, right, 0.02) < calibration.nll(logits, right, 0.5)
    assert calibration.fit_temperature(logits, right) == 1.0
    wrong = (right + 1) % 5
    assert calibration.fit_temperature(logits, wrong) == 1.0


def test_logits_of_probabilities_give_them_back():
    proba = np.array([[0.7, 0.3, 0.0], [0.2, 0.5, 0.3]])
    back = calibration.softmax(calibration.logits_of(proba))
    assert back == pytest.approx(proba, abs=1e-12)
    assert np.isfinite(calibration.logits_of(proba)).all()
