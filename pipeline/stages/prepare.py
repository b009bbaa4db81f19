"""prepare stage: data/raw/corpus.jsonl -> data/prepared/.

Normalises and tokenises every document (pipeline.data.text), drops duplicates by normalised
text, splits train/val/test stratified by label with a seeded shuffle, builds the
vocabulary from the training split only, then numericalises, truncates and pads.

Writes, as one generation (pipeline.core.files.publish_dir):
- {train,val,test}.npz: `ids` (N, max_len) int64, `lengths` (N,), `labels` (N,); loads with
  allow_pickle=False;
- {train,val,test}.jsonl: the split's original texts and labels (for the reference model);
- vocab.json, labels.json, stats.json.

Memory stays bounded for any corpus size: one pass over the corpus keeps a 16-byte digest per
document for deduplication and a few numbers per document (label, token count); the tokens
themselves go to a scratch file as numbers, from which the vocabulary is counted and the
padded arrays are written block by block. What grows with the corpus beyond that is the table
of distinct tokens and, on disk, the outputs.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from array import array
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core import files, layout
from pipeline.core.errors import UserError
from pipeline.core.params import Params, PrepareParams
from pipeline.data import arrays
from pipeline.data.text import UNK_ID, Vocab, encode_flat, normalise, tokens_of

RAW = layout.RAW / "corpus.jsonl"
OUT = layout.PREPARED
SPLITS = ("train", "val", "test")
BLOCK = 4096  # documents encoded at a time: bounds the (BLOCK, max_len) array in memory
SCRATCH = ".scratch"  # inside the unpublished generation; removed before it is published


@dataclass(frozen=True)
class Corpus:
    """What one pass over the corpus leaves in memory: a few numbers per kept document."""

    label_names: list[str]  # sorted; a label's id is its place here
    labels: np.ndarray  # (N,) int64 label id of each kept document, in corpus order
    counts: np.ndarray  # (N,) int64 number of tokens of each kept document
    token_ids: dict[str, int]  # every distinct token -> its number in the scratch file
    duplicates: int
    conflicts: int  # duplicates whose label differs from the first copy's


def scan(path: Path, scratch: Path) -> Corpus:
    """Read the corpus once: deduplicate, tokenise, and spill tokens and texts to `scratch`.

    scratch/tokens.bin gets every kept document's token numbers (int32) end to end;
    scratch/texts.jsonl gets each kept document's line as the split files hold it.
    """
    first_label: dict[bytes, int] = {}  # digest of the normalised text -> its first label code
    label_codes: dict[str, int] = {}  # in order of appearance; sorted once all are known
    token_ids: dict[str, int] = {}
    labels, counts = array("q"), array("q")
    pending: list[int] = []  # token numbers not yet written
    duplicates = conflicts = 0
    with open(scratch / "tokens.bin", "wb") as tokens_out, open(scratch / "texts.jsonl", "wb") as texts_out:
        for number, row in files.read_jsonl(path, "corpus", "pipeline download"):
            text, label = row.get("text"), row.get("label")
            if not isinstance(text, str) or not isinstance(label, str):
                raise UserError(f'{path}: line {number}: expected {{"text": str, "label": str}}')
            code = label_codes.setdefault(label, len(label_codes))
            norm = normalise(text)
            key = " ".join(norm.split()).encode("utf-8", "surrogatepass")
            digest = hashlib.blake2b(key, digest_size=16).digest()
            seen = first_label.get(digest)
            if seen is not None:
                duplicates += 1
                conflicts += seen != code
                continue
            first_label[digest] = code
            tokens = tokens_of(norm)
            start = len(pending)
            try:  # the common case, every token already numbered, runs at C speed
                pending += map(token_ids.__getitem__, tokens)
            except KeyError:
                del pending[start:]
                for token in tokens:
                    token_ids.setdefault(token, len(token_ids))
                pending += map(token_ids.__getitem__, tokens)
            labels.append(code)
            counts.append(len(tokens))
            texts_out.write(files.jsonl_line({"text": text, "label": label}))
            if len(pending) >= 1 << 20:
                tokens_out.write(array("i", pending).tobytes())
                del pending[:]
        tokens_out.write(array("i", pending).tobytes())
    if not labels:
        raise UserError(f"{path}: corpus is empty")
    if not any(counts):  # every text normalises to no token: all but the first were its duplicates
        raise UserError(f"{path}: no text holds a single token once normalised; nothing to learn from")
    names = sorted(label_codes)
    to_sorted = np.empty(len(names), dtype=np.int64)
    to_sorted[[label_codes[name] for name in names]] = np.arange(len(names))
    return Corpus(
        names,
        to_sorted[np.frombuffer(labels, dtype=np.int64)],
        np.frombuffer(counts, dtype=np.int64).copy(),
        token_ids,
        duplicates,
        conflicts,
    )


def stratified_split(labels: np.ndarray, p: PrepareParams, names: list[str]) -> dict[str, np.ndarray]:
    """Per class: seeded shuffle, then val and test take their rounded shares, train the rest."""
    rng = np.random.default_rng(p.seed)
    parts: dict[str, list[int]] = {s: [] for s in SPLITS}
    labels_arr = np.asarray(labels)
    for cls in range(int(labels_arr.max()) + 1):
        members = rng.permutation(np.flatnonzero(labels_arr == cls))
        n_val = int(round(len(members) * p.val_fraction))
        n_test = int(round(len(members) * p.test_fraction))
        if len(members) == 0:  # a label is only seen on texts that repeat earlier ones
            raise UserError(
                f"class {names[cls]!r}: each of its documents repeats the text of an earlier one "
                "(removed as duplicates); none is left to train on"
            )
        if len(members) - n_val - n_test < 1:
            raise UserError(
                f"class {names[cls]!r} has {len(members)} documents: too few for "
                "prepare.val_fraction and prepare.test_fraction to leave one for training"
            )
        parts["val"] += members[:n_val].tolist()
        parts["test"] += members[n_val : n_val + n_test].tolist()
        parts["train"] += members[n_val + n_test :].tolist()
    return {s: np.sort(np.asarray(idx, dtype=np.int64)) for s, idx in parts.items()}


def check_classes(corpus: Corpus, split: dict[str, np.ndarray], p: PrepareParams) -> None:
    """Refuse a corpus that cannot give a classifier and its scores; warn about tiny classes."""
    names, n = corpus.label_names, len(corpus.labels)
    for name in ("val", "test"):
        if len(split[name]) == 0:
            fraction = getattr(p, f"{name}_fraction")
            raise UserError(
                f"{RAW}: {n} distinct documents ({corpus.duplicates} duplicates removed) leave "
                f"the {name} split empty at prepare.{name}_fraction {fraction}; add documents"
            )
    scored = np.zeros(len(names), dtype=bool)
    scored[corpus.labels[np.concatenate([split["val"], split["test"]])]] = True
    if not scored.all():
        sizes = np.bincount(corpus.labels, minlength=len(names))
        rare = [f"{names[k]!r} ({sizes[k]} document{'' if sizes[k] == 1 else 's'})" for k in np.flatnonzero(~scored)]
        shown = ", ".join(rare[:5]) + (", ..." if len(rare) > 5 else "")
        print(
            f"warning: {len(rare)} class(es) too small to reach val or test, so trained on but never scored: {shown}",
            file=sys.stderr,
        )


def _token_blocks(path: Path, counts: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
    """(first, end, token numbers) of BLOCK documents at a time, from scan's tokens.bin."""
    with open(path, "rb") as fh:
        for first in range(0, len(counts), BLOCK):
            end = min(first + BLOCK, len(counts))
            size = int(counts[first:end].sum())
            yield first, end, np.frombuffer(fh.read(4 * size), dtype=np.int32)


def build_vocab(corpus: Corpus, train: np.ndarray, scratch: Path, p: PrepareParams) -> Vocab:
    """Count the training documents' tokens only, so val and test bring in no word."""
    in_train = np.zeros(len(corpus.labels), dtype=bool)
    in_train[train] = True
    totals = np.zeros(len(corpus.token_ids), dtype=np.int64)
    for first, end, numbers in _token_blocks(scratch / "tokens.bin", corpus.counts):
        mask = np.repeat(in_train[first:end], corpus.counts[first:end])
        totals += np.bincount(numbers[mask], minlength=len(totals))
    counts = {token: int(totals[i]) for token, i in corpus.token_ids.items() if totals[i]}
    return Vocab.from_counts(counts, p.min_freq, p.max_vocab)


def _percentiles(lengths: np.ndarray) -> dict[str, int]:
    qs = np.percentile(lengths, [50, 90, 95, 99]) if len(lengths) else [0, 0, 0, 0]
    return {
        "p50": int(qs[0]),
        "p90": int(qs[1]),
        "p95": int(qs[2]),
        "p99": int(qs[3]),
        "max": int(lengths.max()) if len(lengths) else 0,
    }


def write_splits(
    corpus: Corpus,
    split: dict[str, np.ndarray],
    vocab: Vocab,
    scratch: Path,
    stage: Path,
    p: PrepareParams,
) -> dict[str, dict]:
    """Write {split}.npz and {split}.jsonl into `stage`; return each split's stats."""
    where = np.empty(len(corpus.labels), dtype=np.int8)  # the split of each kept document
    for k, name in enumerate(SPLITS):
        where[split[name]] = k
    to_vocab = np.full(len(corpus.token_ids), UNK_ID, dtype=np.int64)
    for i, token in enumerate(vocab.tokens[2:], start=2):
        to_vocab[corpus.token_ids[token]] = i
    unknown = dict.fromkeys(SPLITS, 0)
    lengths: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    with ExitStack() as files:
        npz = {s: files.enter_context(arrays.NpzWriter(stage / f"{s}.npz")) for s in SPLITS}
        with ExitStack() as members:
            write = {
                s: members.enter_context(npz[s].blocks("ids", np.int64, (len(split[s]), p.max_len))) for s in SPLITS
            }
            for first, end, numbers in _token_blocks(scratch / "tokens.bin", corpus.counts):
                ids, kept, unk = encode_flat(to_vocab[numbers], corpus.counts[first:end], p.max_len, p.keep)
                for k, s in enumerate(SPLITS):
                    mine = where[first:end] == k
                    write[s](ids[mine])
                    lengths[s].append(kept[mine])
                    unknown[s] += int(unk[mine].sum())
        for s in SPLITS:
            npz[s].add("lengths", np.concatenate(lengths[s]))
            npz[s].add("labels", corpus.labels[split[s]])
        texts = {s: files.enter_context(open(stage / f"{s}.jsonl", "wb")) for s in SPLITS}
        with open(scratch / "texts.jsonl", "rb") as lines:
            for line, k in zip(lines, where.tolist(), strict=True):
                texts[SPLITS[k]].write(line)

    stats = {}
    for s in SPLITS:
        raw = corpus.counts[split[s]]  # token counts before truncation
        n_tokens = int(raw.sum())
        class_counts = np.bincount(corpus.labels[split[s]], minlength=len(corpus.label_names))
        stats[s] = {
            "size": int(len(split[s])),
            "class_counts": {n: int(c) for n, c in zip(corpus.label_names, class_counts, strict=True)},
            "oov_rate": round(unknown[s] / n_tokens, 6) if n_tokens else 0.0,
            "length_percentiles": _percentiles(raw),
            "truncation_rate": round(float(np.mean(raw > p.max_len)), 6),
        }
    return stats


def run(params: Params) -> None:
    p = params.prepare
    with files.publish_dir(OUT) as stage:
        scratch = stage / SCRATCH
        scratch.mkdir()
        corpus = scan(RAW, scratch)
        if len(corpus.label_names) < 2:
            raise UserError(
                f"{RAW}: every document has the label {corpus.label_names[0]!r}; "
                "a classifier needs at least two classes"
            )
        split = stratified_split(corpus.labels, p, corpus.label_names)
        check_classes(corpus, split, p)
        vocab = build_vocab(corpus, split["train"], scratch, p)
        split_stats = write_splits(corpus, split, vocab, scratch, stage, p)
        shutil.rmtree(scratch)
        stats: dict = {
            "documents": len(corpus.labels),
            "duplicates_removed": corpus.duplicates,
            "duplicate_label_conflicts": corpus.conflicts,
            "vocab_size": len(vocab),
            "num_classes": len(corpus.label_names),
            # train and predict read these to pad and truncate exactly as here.
            "encoding": {"max_len": p.max_len, "keep": p.keep},
            "splits": split_stats,
        }
        files.write_text(stage / "vocab.json", vocab.to_json())
        files.write_json(stage / "labels.json", corpus.label_names)
        files.write_json(stage / "stats.json", stats)
    sizes = ", ".join(f"{s} {stats['splits'][s]['size']}" for s in SPLITS)
    print(
        f"prepared {len(corpus.labels)} documents ({corpus.duplicates} duplicates removed): "
        f"{sizes}; vocabulary {len(vocab)}"
    )
