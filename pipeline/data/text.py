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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core import files
from pipeline.core.errors import UserError

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1

_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return text.replace("\u2019", "'").replace("\u2018", "'")


def tokenise(text: str) -> list[str]:
    return tokens_of(normalise(text))


def tokens_of(normalised: str) -> list[str]:
    """The tokens of a text that `normalise` has already been applied to."""
    return _TOKEN.findall(normalised)


@dataclass(frozen=True)
class Vocab:
    tokens: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(cls, docs: Iterable[Sequence[str]], min_freq: int, max_vocab: int) -> Vocab:
        return cls.from_counts(Counter(tok for doc in docs for tok in doc), min_freq, max_vocab)

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], min_freq: int, max_vocab: int) -> Vocab:
        """Most frequent tokens first, ties broken alphabetically so the order is stable."""
        kept = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        return cls((PAD, UNK, *kept[: max_vocab - 2]))

    def ids(self, tokens: Sequence[str]) -> list[int]:
        index = self._index  # type: ignore[attr-defined]
        return [index.get(t, UNK_ID) for t in tokens]

    def to_json(self) -> str:
        return json.dumps({"tokens": list(self.tokens)}, ensure_ascii=False, indent=0) + "\n"

    def sha256(self) -> str:
        return files.sha256_bytes(self.to_json().encode("utf-8"))

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        raw = files.read_json(path, "vocabulary")
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
    flat = np.fromiter((i for tokens in token_lists for i in vocab.ids(tokens)), dtype=np.int64)
    counts = np.fromiter((len(tokens) for tokens in token_lists), np.int64, len(token_lists))
    ids, lengths, _ = encode_flat(flat, counts, max_len, keep)
    return ids, lengths


def encode_flat(
    flat: np.ndarray, counts: np.ndarray, max_len: int, keep: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`encode` for documents already numericalised and laid end to end.

    flat: (T,) the ids of every document in turn; counts: (N,) how many belong to each.
    Returns ids (N, max_len) int64, lengths (N,) int64 and, per document, how many of its
    ids (before truncation) are <unk>.
    """
    n = len(counts)
    doc = np.repeat(np.arange(n), counts)  # (T,) the document each id belongs to
    pos = np.arange(len(flat)) - (np.cumsum(counts) - counts)[doc]  # (T,) place in its document
    kept = np.minimum(counts, max_len)
    # head keeps places [0, max_len); tail keeps the last `kept` and shifts them to the front.
    skip = np.zeros(n, np.int64) if keep == "head" else counts - kept
    col = pos - skip[doc]
    inside = (col >= 0) & (col < max_len)
    ids = np.full((n, max_len), PAD_ID, dtype=np.int64)
    ids[doc[inside], col[inside]] = flat[inside]
    empty = counts == 0
    ids[empty, 0] = UNK_ID
    lengths = np.where(empty, 1, kept).astype(np.int64)
    unknown = np.bincount(doc[flat == UNK_ID], minlength=n).astype(np.int64)
    return ids, lengths, unknown
