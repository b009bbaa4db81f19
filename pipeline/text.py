"""Normalisation, tokenisation and the vocabulary: one code path for prepare and predict.

The tokenizer: Unicode NFKC, lower-case, curly apostrophes made straight, then tokens are
runs of letters or digits, keeping an inner apostrophe ("don't", "uk's"). Everything else
(punctuation, symbols, whitespace) separates tokens.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import io
from pipeline.errors import UserError

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1

_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return text.replace("\u2019", "'").replace("\u2018", "'")


def tokenise(text: str) -> list[str]:
    return _TOKEN.findall(normalise(text))


@dataclass(frozen=True)
class Vocab:
    tokens: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(cls, docs: Iterable[Sequence[str]], min_freq: int, max_vocab: int) -> Vocab:
        """Most frequent tokens first, ties broken alphabetically so the order is stable."""
        counts = Counter(tok for doc in docs for tok in doc)
        kept = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        return cls((PAD, UNK, *kept[: max_vocab - 2]))

    def ids(self, tokens: Sequence[str]) -> list[int]:
        index = self._index  # type: ignore[attr-defined]
        return [index.get(t, UNK_ID) for t in tokens]

    def to_json(self) -> str:
        return json.dumps({"tokens": list(self.tokens)}, ensure_ascii=False, indent=0) + "\n"

    def sha256(self) -> str:
        return io.sha256_bytes(self.to_json().encode("utf-8"))

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        raw = io.read_json(path, "vocabulary")
        tokens = raw.get("tokens") if isinstance(raw, dict) else None
        if (
            not isinstance(tokens, list)
            or len(tokens) < 2
            or tokens[:2] != [PAD, UNK]
            or not all(isinstance(t, str) for t in tokens)
        ):
            raise UserError(f"{path}: not a vocabulary (expected tokens starting with <pad>, <unk>)")
        return cls(tuple(tokens))


def encode(
    token_lists: Sequence[Sequence[str]], vocab: Vocab, max_len: int, keep: str
) -> tuple[np.ndarray, np.ndarray]:
    """Numericalise, truncate to `max_len` keeping the head or the tail, and right-pad.

    Returns ids (N, max_len) int64 and true lengths (N,) int64. An empty document becomes
    a single <unk> so every sequence has at least one real step.
    """
    ids = np.full((len(token_lists), max_len), PAD_ID, dtype=np.int64)
    lengths = np.zeros(len(token_lists), dtype=np.int64)
    for row, tokens in enumerate(token_lists):
        seq = vocab.ids(tokens) or [UNK_ID]
        seq = seq[:max_len] if keep == "head" else seq[-max_len:]
        ids[row, : len(seq)] = seq
        lengths[row] = len(seq)
    return ids, lengths
