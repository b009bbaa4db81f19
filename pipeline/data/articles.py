"""The prepared splits' article texts (data/prepared/<split>.jsonl, written by prepare): the one reader.

No torch here: compare reads the test texts too, and starts without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeline.core import files, layout
from pipeline.core.errors import UserError


def read_texts(
    split: str,
    labels: Sequence[str],
    expected: Sequence[int] | None = None,
    against: str = "",
    folder: Path = layout.PREPARED,
) -> tuple[list[str], list[int]]:
    """(texts, label ids) of a split, in data order; with `expected`, the label ids must match it
    row for row (`against` names where it comes from, by default the split's .npz file)."""
    path = folder / f"{split}.jsonl"
    label_ids = {name: k for k, name in enumerate(labels)}
    rows = [row for _, row in files.read_jsonl(path, "split texts", "pipeline prepare")]
    try:
        texts = [row["text"] for row in rows]
        ids = [label_ids[row["label"]] for row in rows]
    except (KeyError, TypeError):
        raise UserError(f"{path}: rows do not match {folder}/labels.json; rerun `pipeline prepare`") from None
    if not all(isinstance(text, str) for text in texts):
        raise UserError(f"{path}: a row's text is not a string; rerun `pipeline prepare`")
    if expected is not None and ids != list(expected):
        where = against or f"{folder / split}.npz"
        raise UserError(f"{path}: does not match {where} row for row; rerun `dvc repro`")
    return texts, ids
