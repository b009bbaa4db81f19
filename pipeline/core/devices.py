"""The torch device a command runs on: `cpu`, `cuda`, or `auto` (cuda where there is one)."""

from __future__ import annotations

import torch

from pipeline.core.errors import UserError

CHOICES = ("auto", "cpu", "cuda")


def pick(choice: str, setting: str, index: int = 0) -> torch.device:
    """The device for `choice` (CUDA device `index`); cuda without a device is a UserError naming `setting`."""
    if choice not in CHOICES:
        raise UserError(f"{setting}: must be one of {', '.join(CHOICES)}, got {choice!r}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{setting}: cuda was asked for but no CUDA device is available")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device("cuda", index) if choice == "cuda" else torch.device("cpu")
