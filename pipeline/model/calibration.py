"""Calibration: how far a classifier's confidence is from its accuracy, and temperature scaling.

No I/O here. Probabilities are (N, C) float64 arrays, labels (N,) integer ids.
- `calibration_error`: the expected calibration error (ECE) of the top-label confidence over
  BINS equal-width bins, sum over bins of (share of texts) x |accuracy - mean confidence|:
  torchmetrics' multiclass_calibration_error, norm "l1".
- `reliability`: the same bins for a reliability diagram, from scikit-learn's calibration_curve
  on (correct?, confidence) pairs, with each bin's count, which calibration_curve leaves out.
  The two libraries place a confidence that falls exactly on a bin edge in neighbouring bins;
  anywhere else the bins agree, and the diagram's gaps weighted by their counts sum to the ECE.
- `fit_temperature`: the one scalar T that minimises the negative log-likelihood of
  softmax(logits / T) on a split (the validation split, by the caller); dividing by T > 0
  never changes which class is the most likely, so accuracy is unchanged.
"""

from __future__ import annotations

import numpy as np

BINS = 15  # the usual equal-width bins of the ECE (Guo et al., 2017)
# Bounds of the inverse temperature 1 / T searched. On a split the model classifies without a
# mistake the likelihood grows without end as T -> 0 (with every text wrong, as T -> infinity),
# and no T is the best: where the minimum is not inside these bounds, T stays 1.
MIN_INVERSE, MAX_INVERSE = 0.01, 100.0
DIGITS = 6  # T is written and served at this many significant digits


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities (N, C) float64 of logits / temperature."""
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / temperature))


def logits_of(proba: np.ndarray) -> np.ndarray:
    """Logits whose softmax is `proba`: log-probabilities, a class of probability 0 at -1e3 below the rest."""
    with np.errstate(divide="ignore"):
        logs = np.log(np.asarray(proba, dtype=np.float64))
    floor = np.where(np.isfinite(logs), logs, np.inf).min(axis=1, keepdims=True) - 1e3
    return np.where(np.isfinite(logs), logs, floor)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true labels under softmax(logits / temperature)."""
    scaled = log_softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return float(-scaled[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising nll(logits, labels, T), to DIGITS significant digits; 1 where
    no T in [1 / MAX_INVERSE, 1 / MIN_INVERSE] is a minimum (a split without a mistake, say).

    The NLL is convex in 1 / T (a log-sum-exp of linear functions minus a linear one), so the
    bounded Brent search of scipy finds its one minimum; in float64 and without randomness, the
    same logits give the same T.
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    found = minimize_scalar(
        lambda inverse: nll(z, y, 1.0 / inverse),
        bounds=(MIN_INVERSE, MAX_INVERSE),
        method="bounded",
        options={"xatol": 1e-10},
    )
    inverse = float(found.x)
    on_a_bound = not MIN_INVERSE * (1 + 1e-4) < inverse < MAX_INVERSE * (1 - 1e-4)
    # Never serve a worse temperature than none: keep T = 1 unless the fit improves on it.
    if on_a_bound or not found.fun < nll(z, y):
        return 1.0
    return float(f"{1.0 / inverse:.{DIGITS}g}")


def calibration_error(proba: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error of the top-label confidence over `bins` equal-width bins."""
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    probabilities = torch.from_numpy(np.asarray(proba, dtype=np.float64))
    target = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    error = multiclass_calibration_error(probabilities, target, probabilities.shape[1], n_bins=bins, norm="l1")
    return float(error)


def reliability(proba: np.ndarray, labels: np.ndarray, bins: int = BINS) -> list[dict[str, float]]:
    """The non-empty bins of the reliability diagram: {"lower", "upper", "confidence", "accuracy", "count"}.

    `confidence` is the bin's mean top-label probability, `accuracy` its share of texts whose
    most likely class is the true one.
    """
    from sklearn.calibration import calibration_curve

    proba = np.asarray(proba, dtype=np.float64)
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == np.asarray(labels)).astype(np.int64)
    accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=bins, strategy="uniform")
    # calibration_curve's own binning, for the counts it does not return.
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], confidence), minlength=bins)
    filled = np.flatnonzero(counts)
    return [
        {
            "lower": round(float(edges[k]), DIGITS),
            "upper": round(float(edges[k + 1]), DIGITS),
            "confidence": round(float(c), DIGITS),
            "accuracy": round(float(a), DIGITS),
            "count": int(counts[k]),
        }
        for k, c, a in zip(filled, mean_confidence, accuracy, strict=True)
    ]
