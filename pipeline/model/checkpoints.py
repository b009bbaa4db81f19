"""Checkpoints: saved atomically, loaded with `weights_only=True`, refused in one line when damaged or foreign.

A checkpoint is a dict of tensors and plain values (weights, config, labels, vocabulary,
encoding), so loading it never unpickles code.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

from pipeline.core.errors import UserError
from pipeline.core.files import write_bytes


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> str:
    """Write the checkpoint; returns the sha256 of the bytes written (pipeline.core.stamps)."""
    # Serialise to memory first: torch.save of the same tensors gives the same bytes,
    # and the file appears only once complete.
    import torch  # imported here: download, prepare and compare start seconds faster without it

    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    data = buffer.getvalue()
    write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


CHECKPOINT_KEYS = ("model", "config", "labels", "vocab_sha256", "encoding", "epoch", "best_val_loss")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict with `weights_only=True`; anything else is refused as a UserError."""
    import torch

    path = Path(path)
    if path.is_dir():
        inside = sorted(path.glob("*.pt"))
        example = f", e.g. {inside[0]}" if inside else " (a .pt file)"
        raise UserError(f"{path}: is a folder; give the checkpoint file itself{example}")
    if not path.is_file():
        # Only the pipeline's own checkpoints are made by `dvc repro`.
        made_here = path.parts[:1] == ("models",)
        raise UserError(f"{path}: model checkpoint not found" + ("; run `dvc repro` to train it" if made_here else ""))
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a readable checkpoint (not the zip archive that torch.save writes)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is a page of advice; keep the phrase that names the problem.
        found = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
        reason = found.group(1).strip().split(" was not", 1)[0] if found else "not a plain-tensor checkpoint"
        if reason.startswith("Unsupported global"):
            raise UserError(f"{path}: refused, the checkpoint holds more than tensors ({reason})") from None
        raise UserError(f"{path}: not a readable checkpoint, its contents are damaged ({reason})") from None
    except Exception as exc:  # a damaged archive fails anywhere in torch's reader, with any type
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable checkpoint ({first.split('. ')[0][:160]})") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        raise UserError(f"{path}: not a pipeline checkpoint (expected keys: {', '.join(CHECKPOINT_KEYS)})")
    return ckpt
