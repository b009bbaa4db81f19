"""prepare stage: data/raw/corpus.jsonl -> data/prepared/.

Normalises and tokenises every document (pipeline.text), drops duplicates by normalised
text, splits train/val/test stratified by label with a seeded shuffle, builds the
vocabulary from the training split only, then numericalises, truncates and pads.

Writes, each atomically:
- {train,val,test}.npz: `ids` (N, max_len) int64, `lengths` (N,), `labels` (N,); loads with
  allow_pickle=False;
- {train,val,test}.jsonl: the split's original texts and labels (for the reference model);
- vocab.json, labels.json, stats.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline import io
from pipeline.errors import UserError
from pipeline.params import Params, PrepareParams
from pipeline.text import UNK_ID, Vocab, encode, normalise, tokenise

RAW = Path("data/raw/corpus.jsonl")
OUT = Path("data/prepared")
SPLITS = ("train", "val", "test")


def read_corpus(path: Path) -> list[tuple[str, str]]:
    """The download stage's corpus.jsonl as (text, label) pairs, validated line by line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: corpus not found; run `pipeline download` first") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: corpus is not UTF-8; rerun `pipeline download`") from None
    docs = []
    for number, row in io.jsonl_objects(lines, str(path)):
        if not isinstance(row.get("text"), str) or not isinstance(row.get("label"), str):
            raise UserError(f'{path}: line {number}: expected {{"text": str, "label": str}}')
        docs.append((row["text"], row["label"]))
    if not docs:
        raise UserError(f"{path}: corpus is empty")
    return docs


def deduplicate(docs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], int, int]:
    """Keep the first of each normalised text; also count duplicates whose labels disagree."""
    first_label: dict[str, str] = {}
    kept, conflicts = [], 0
    for text, label in docs:
        key = " ".join(normalise(text).split())
        if key in first_label:
            conflicts += first_label[key] != label
            continue
        first_label[key] = label
        kept.append((text, label))
    return kept, len(docs) - len(kept), conflicts


def stratified_split(labels: list[int], p: PrepareParams) -> dict[str, np.ndarray]:
    """Per class: seeded shuffle, then val and test take their rounded shares, train the rest."""
    rng = np.random.default_rng(p.seed)
    parts: dict[str, list[int]] = {s: [] for s in SPLITS}
    labels_arr = np.asarray(labels)
    for cls in range(int(labels_arr.max()) + 1):
        members = rng.permutation(np.flatnonzero(labels_arr == cls))
        n_val = int(round(len(members) * p.val_fraction))
        n_test = int(round(len(members) * p.test_fraction))
        if len(members) - n_val - n_test < 1:
            raise UserError(
                f"class {cls} has {len(members)} documents: too few for prepare.val_fraction "
                "and prepare.test_fraction to leave one for training"
            )
        parts["val"] += members[:n_val].tolist()
        parts["test"] += members[n_val : n_val + n_test].tolist()
        parts["train"] += members[n_val + n_test :].tolist()
    return {s: np.sort(np.asarray(idx, dtype=np.int64)) for s, idx in parts.items()}


def _percentiles(lengths: list[int]) -> dict[str, int]:
    qs = np.percentile(np.asarray(lengths), [50, 90, 95, 99]) if lengths else [0, 0, 0, 0]
    return {
        "p50": int(qs[0]),
        "p90": int(qs[1]),
        "p95": int(qs[2]),
        "p99": int(qs[3]),
        "max": max(lengths, default=0),
    }


def run(params: Params) -> None:
    p = params.prepare
    docs, n_duplicates, n_conflicts = deduplicate(read_corpus(RAW))
    label_names = sorted({label for _, label in docs})
    label_ids = {name: i for i, name in enumerate(label_names)}
    labels = [label_ids[label] for _, label in docs]
    tokens = [tokenise(text) for text, _ in docs]
    split_index = stratified_split(labels, p)

    vocab = Vocab.build((tokens[i] for i in split_index["train"]), p.min_freq, p.max_vocab)
    stats: dict = {
        "documents": len(docs),
        "duplicates_removed": n_duplicates,
        "duplicate_label_conflicts": n_conflicts,
        "vocab_size": len(vocab),
        "num_classes": len(label_names),
        # train and predict read these to pad and truncate exactly as here.
        "encoding": {"max_len": p.max_len, "keep": p.keep},
        "splits": {},
    }
    outputs: dict[str, tuple] = {}
    for split, index in split_index.items():
        split_tokens = [tokens[i] for i in index]
        ids, lengths = encode(split_tokens, vocab, p.max_len, p.keep)
        raw_lengths = [len(t) for t in split_tokens]
        n_tokens = sum(raw_lengths)
        n_unk = sum(ids_row.count(UNK_ID) for ids_row in map(vocab.ids, split_tokens))
        split_labels = np.asarray([labels[i] for i in index], dtype=np.int64)
        stats["splits"][split] = {
            "size": int(len(index)),
            "class_counts": {
                name: int((split_labels == k).sum()) for k, name in enumerate(label_names)
            },
            "oov_rate": round(n_unk / n_tokens, 6) if n_tokens else 0.0,
            "length_percentiles": _percentiles(raw_lengths),
            "truncation_rate": round(float(np.mean(np.asarray(raw_lengths) > p.max_len)), 6),
        }
        texts = "".join(
            json.dumps({"text": docs[i][0], "label": docs[i][1]}, ensure_ascii=False) + "\n"
            for i in index
        )
        outputs[split] = (ids, lengths, split_labels, texts)

    # Publish only after every split was built, so bad input leaves nothing half-written.
    for split, (ids, lengths, split_labels, texts) in outputs.items():
        io.save_arrays(OUT / f"{split}.npz", ids=ids, lengths=lengths, labels=split_labels)
        io.write_text(OUT / f"{split}.jsonl", texts)
    io.write_text(OUT / "vocab.json", vocab.to_json())
    io.write_json(OUT / "labels.json", label_names)
    io.write_json(OUT / "stats.json", stats)
    sizes = ", ".join(f"{s} {stats['splits'][s]['size']}" for s in SPLITS)
    print(f"prepared {len(docs)} documents ({n_duplicates} duplicates removed): {sizes}; "
          f"vocabulary {len(vocab)}")
