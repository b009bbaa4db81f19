"""metrics/calibration/<name>.json, the served seed's calibration: the one writer and the one reader.

Written by evaluate for every model and reference; read by publish, which puts the temperature
into the served checkpoint, and by compare, which draws the reliability bins:
{"served_seed": S, "checkpoint_sha256": sha256 (a model's only), "temperature": T,
 "bins": [{"scaling": "before" | "after", "lower", "upper", "confidence", "accuracy", "count"}]}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from pipeline.core import files, layout
from pipeline.core.errors import UserError

SCALINGS = ("before", "after")  # the bins of the raw and of the temperature-scaled probabilities
BIN_FIELDS = ("lower", "upper", "confidence", "accuracy", "count")
RERUN = "rerun `pipeline evaluate`"


@dataclass(frozen=True)
class Calibrated:
    served_seed: int
    checkpoint_sha256: str | None  # None for a reference
    temperature: float
    bins: list[dict[str, Any]]


def write(path: Path, calibrated: Calibrated) -> None:
    data: dict[str, Any] = {"served_seed": calibrated.served_seed}
    if calibrated.checkpoint_sha256 is not None:
        data["checkpoint_sha256"] = calibrated.checkpoint_sha256
    files.write_json(path, data | {"temperature": calibrated.temperature, "bins": calibrated.bins})


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read(name: str) -> Calibrated:
    """metrics/calibration/<name>.json, refused in one line unless it holds what evaluate writes."""
    path = layout.calibration_file(name)
    data = files.read_json(path, "calibration")
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a calibration file; {RERUN}")
    temperature, seed, sha = data.get("temperature"), data.get("served_seed"), data.get("checkpoint_sha256")
    if not _is_number(temperature) or temperature <= 0:
        raise UserError(f"{path}: no positive finite temperature; {RERUN}")
    if not isinstance(seed, int) or isinstance(seed, bool) or not (sha is None or isinstance(sha, str)):
        raise UserError(f"{path}: no served seed and checkpoint; {RERUN}")
    bins = data.get("bins")
    if not isinstance(bins, list) or not all(
        isinstance(b, dict) and b.get("scaling") in SCALINGS and all(_is_number(b.get(f)) for f in BIN_FIELDS)
        for b in bins
    ):
        raise UserError(f"{path}: expected reliability bins; {RERUN}")
    return Calibrated(seed, sha, float(temperature), bins)
