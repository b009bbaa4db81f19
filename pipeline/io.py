"""Atomic file writes, hashing and checkpoints that load without unpickling code.

Every output goes through a temp file in the same folder and `os.replace`, so a stage that
is interrupted never leaves a half-written file for DVC to cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from pipeline.errors import UserError


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600; published files get the usual mode the umask allows.
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found; run `dvc repro` first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: {what} is not readable JSON ({exc})") from None


def jsonl_objects(lines: Iterable[str], where: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; bad JSON or a non-object is a UserError."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{where}: line {number}: expected a JSON object")
        yield number, row


def read_learning_curves(
    folder: str | Path, metrics: tuple[str, ...], splits: tuple[str, ...]
) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{metric: {split: [(epoch, value), ...]}} from the TSVs that DVCLive writes under `folder`.

    DVCLive logs `<folder>/plots/metrics/<split>/<metric>.tsv` with a header `step<TAB><metric>`.
    """
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for metric in metrics:
        for split in splits:
            path = Path(folder) / "plots" / "metrics" / split / f"{metric}.tsv"
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                raise UserError(f"{path}: learning curve not found; run `dvc repro` first") from None
            if lines[:1] != [f"step\t{metric}"] or len(lines) < 2:
                raise UserError(f"{path}: not a DVCLive learning curve of {metric}; rerun `dvc repro`")
            points = []
            for number, line in enumerate(lines[1:], start=2):
                step, _, value = line.partition("\t")
                try:
                    points.append((int(step), float(value)))
                except ValueError:
                    raise UserError(f"{path}: line {number}: expected <step><TAB><{metric}>") from None
            curves.setdefault(metric, {})[split] = points
    return curves


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_arrays(path: str | Path, **arrays: np.ndarray) -> None:
    """Write an uncompressed .npz; numpy stamps zip entries with a fixed date, so bytes are stable."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def load_arrays(path: str | Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [n for n in names if n not in data.files]
            if missing:
                raise UserError(f"{path}: array {missing[0]!r} missing; rerun `pipeline prepare`")
            return {n: data[n] for n in names}
    except FileNotFoundError:
        raise UserError(f"{path}: prepared data not found; run `dvc repro prepare` first") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: not a readable .npz file ({exc})") from None


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    # Serialise to memory first: torch.save of the same tensors gives the same bytes,
    # and the file appears only once complete.
    import torch  # imported here: download, prepare and compare start seconds faster without it

    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    write_bytes(path, buffer.getvalue())


CHECKPOINT_KEYS = ("model", "config", "labels", "vocab_sha256", "encoding", "epoch", "best_val_loss")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict with `weights_only=True`; anything else is refused as a UserError."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: model checkpoint not found; run `dvc repro` to train it")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is a page of advice; keep the line that names what was refused.
        reason = next(
            (line.strip() for line in str(exc).splitlines() if "Unsupported" in line or "error:" in line),
            "not a plain-tensor checkpoint",
        )
        raise UserError(f"{path}: refused, the checkpoint holds more than tensors ({reason})") from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        raise UserError(
            f"{path}: not a pipeline checkpoint (expected keys: {', '.join(CHECKPOINT_KEYS)})"
        )
    return ckpt
