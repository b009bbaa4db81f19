"""predict: label new texts with a trained checkpoint. Not a DVC stage: it reads, never writes.

Reads models/<model>.pt, or any checkpoint path: a checkpoint carries its vocabulary, labels
and truncation, so it is all predict needs. `--vocab` optionally checks that the checkpoint was
trained with a given vocabulary file (its sha256 must match). Texts come from the command line, or from a file or stdin: one text per line, or
one field of a .csv or .jsonl file. They go through prepare's own path (text.tokenise, then
text.encode with the checkpoint's max_len and keep), so long texts are truncated exactly as in
training. The model is loaded once and texts are classified in batches of similar length, so
little padding is computed. Prints a table on a terminal, tab-separated lines when piped,
or one JSON object per text with --json.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import numpy as np
import torch

from pipeline import io
from pipeline.errors import UserError
from pipeline.models import ModelConfig, RNNClassifier, predict_logits
from pipeline.params import MODELS
from pipeline.text import PAD, PAD_ID, UNK, UNK_ID, Vocab, encode, tokenise

MODELS_DIR = Path("models")
STDIN = "-"
BATCH_SIZE = 128  # texts per forward pass
CHUNK = 8192  # texts encoded at once; bounds the (N, max_len) id array for very long inputs
MAX_WORKERS = 4


@dataclass(frozen=True)
class Classifier:
    """A checkpoint's model with the vocabulary, labels and truncation it was trained with."""

    model: RNNClassifier
    vocab: Vocab
    labels: tuple[str, ...]
    max_len: int
    keep: str


@dataclass(frozen=True)
class Prediction:
    index: int  # the text's position in the input, from 1
    top_k: tuple[tuple[str, float], ...]  # (label, probability), most likely first
    knows_a_word: bool  # False when the model saw only <unk> tokens

    @property
    def label(self) -> str:
        return self.top_k[0][0]

    @property
    def probability(self) -> float:
        return self.top_k[0][1]


def model_path(model: str) -> Path:
    """`birnn` and `baseline` name a trained model under models/; any other value is a path."""
    return MODELS_DIR / f"{model}.pt" if model in MODELS else Path(model)


def load_classifier(checkpoint: Path, vocab_path: Path | None = None) -> Classifier:
    """The checkpoint's model in eval mode with its own vocabulary; `vocab_path`, if given, must be it."""
    ckpt = io.load_checkpoint(checkpoint)
    tokens = ckpt.get("vocab")
    if tokens is None:
        raise UserError(f"{checkpoint}: holds no vocabulary (saved by an older version); retrain it with `dvc repro`")
    if not isinstance(tokens, list) or tokens[:2] != [PAD, UNK] or not all(isinstance(t, str) for t in tokens):
        raise UserError(f"{checkpoint}: its vocabulary is malformed (expected tokens starting with {PAD}, {UNK})")
    vocab = Vocab(tuple(tokens))
    if vocab_path is not None:
        try:
            digest = io.sha256_file(vocab_path)
        except OSError as exc:
            raise UserError(f"{vocab_path}: cannot read the vocabulary ({exc.strerror or exc})") from None
        if digest != ckpt["vocab_sha256"]:
            raise UserError(f"{checkpoint}: was trained with another vocabulary than {vocab_path}")
    try:
        cfg = ModelConfig(**ckpt["config"])
        model = RNNClassifier(cfg)
        model.load_state_dict(ckpt["model"])
        labels = tuple(ckpt["labels"])
        max_len, keep = int(ckpt["encoding"]["max_len"]), ckpt["encoding"]["keep"]
    except KeyError as exc:
        raise UserError(f"{checkpoint}: has no {exc.args[0]!r} entry; run `dvc repro`") from None
    except (TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{checkpoint}: not a checkpoint this version can use ({first}); run `dvc repro`"
        ) from None
    if len(vocab) != cfg.vocab_size:
        raise UserError(f"{checkpoint}: its vocabulary has {len(vocab)} words but the model {cfg.vocab_size}; run `dvc repro`")
    if (
        len(labels) != cfg.num_classes
        or not all(isinstance(label, str) for label in labels)
        or max_len < 1
        or keep not in ("head", "tail")
    ):
        raise UserError(f"{checkpoint}: labels or encoding do not fit the model; run `dvc repro`")
    model.eval()
    return Classifier(model, vocab, labels, max_len, keep)


def default_workers() -> int:
    """One batch per core, up to MAX_WORKERS: the RNN op releases the GIL for its whole time
    loop, so each thread keeps a core busy (with torch's intra-op threads set to 1, see `run`)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_WORKERS, cores or 1))


def _logits(
    clf: Classifier, ids: torch.Tensor, lengths: torch.Tensor, batch_size: int, workers: int
) -> torch.Tensor:
    """predict_logits over batches, `workers` batches at a time, in order."""
    starts = range(0, len(ids), batch_size)
    if workers <= 1 or len(starts) <= 1:
        return predict_logits(clf.model, ids, lengths, batch_size)

    def batch(start: int) -> torch.Tensor:
        end = start + batch_size
        return predict_logits(clf.model, ids[start:end], lengths[start:end], batch_size)

    with ThreadPoolExecutor(workers) as pool:
        return torch.cat(list(pool.map(batch, starts)))


def probabilities(
    clf: Classifier, texts: Sequence[str], batch_size: int = BATCH_SIZE, workers: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (N, C) float64 in input order, and whether each text had a known word.

    Texts are sorted by length before batching, so each batch is trimmed to a similar length
    and almost no padding goes through the RNN; packing keeps the result independent of which
    texts share a batch.
    """
    ids, lengths = encode([tokenise(t) for t in texts], clf.vocab, clf.max_len, clf.keep)
    order = torch.from_numpy(np.argsort(-lengths, kind="stable"))
    ids_t, lengths_t = torch.from_numpy(ids), torch.from_numpy(lengths)
    workers = default_workers() if workers is None else workers
    logits = _logits(clf, ids_t[order], lengths_t[order], batch_size, workers)  # (N, C)
    probs = torch.empty(logits.shape, dtype=torch.float64)
    probs[order] = logits.double().softmax(dim=-1)
    knows_a_word = ((ids_t != UNK_ID) & (ids_t != PAD_ID)).any(dim=1)
    return probs, knows_a_word


def predict(
    clf: Classifier,
    texts: Sequence[str],
    top_k: int = 1,
    batch_size: int = BATCH_SIZE,
    workers: int | None = None,
) -> Iterator[Prediction]:
    """Predictions in input order, computed CHUNK texts at a time."""
    for start in range(0, len(texts), CHUNK):
        probs, knows_a_word = probabilities(clf, texts[start : start + CHUNK], batch_size, workers)
        values, indices = probs.topk(top_k, dim=-1)  # sorted, most likely first
        for row, (vals, idx, known) in enumerate(
            zip(values.tolist(), indices.tolist(), knows_a_word.tolist())
        ):
            yield Prediction(
                index=start + row + 1,
                top_k=tuple((clf.labels[i], v) for v, i in zip(vals, idx)),
                knows_a_word=known,
            )


# ---- reading texts ------------------------------------------------------------------------


def _checked(text: object, where: str, field: str | None) -> str:
    if text is None:
        raise UserError(f"{where}: no {field!r} field; name the text field with --text-field")
    if not isinstance(text, str):
        raise UserError(f"{where}: {field!r} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise UserError(f"{where}: the text is empty; every text needs at least one word")
    return text


def _lines(content: str) -> list[str]:
    # Split at newlines only: str.splitlines would also break a text at \x85 or \u2028.
    lines = content.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _csv_texts(content: str, where: str, field: str) -> list[str]:
    # Long articles may exceed the csv module's default 128 KiB field limit.
    csv.field_size_limit(max(csv.field_size_limit(), len(content)))
    reader = csv.DictReader(StringIO(content, newline=""))
    try:
        columns = reader.fieldnames or []
        if columns and field not in columns:
            found = ", ".join(repr(c) for c in columns)
            raise UserError(
                f"{where}: no column {field!r} (columns: {found}); name it with --text-field"
            )
        # A short row has None for its missing cells: an empty text, not a missing column.
        return [_checked(row[field] or "", f"{where}:{reader.line_num}", field) for row in reader]
    except csv.Error as exc:
        raise UserError(f"{where}:{reader.line_num}: not valid CSV ({exc})") from None


def _jsonl_texts(content: str, where: str, field: str) -> list[str]:
    return [
        _checked(row.get(field), f"{where}:{number}", field)
        for number, row in io.jsonl_objects(_lines(content), where)
    ]


def read_texts(source: str, text_field: str | None = None) -> list[str]:
    """Texts from a file, or stdin for `-`: .csv and .jsonl by suffix, else one text per line."""
    where = "stdin" if source == STDIN else source
    suffix = "" if source == STDIN else Path(source).suffix.lower()
    if text_field is not None and suffix not in (".csv", ".jsonl"):
        raise UserError(f"{where}: --text-field applies to .csv and .jsonl files only")
    try:
        raw = sys.stdin.buffer.read() if source == STDIN else Path(source).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{where}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{where}: is a folder; --file takes a file") from None
    except OSError as exc:
        raise UserError(f"{where}: cannot read ({exc.strerror or exc})") from None
    try:
        content = raw.decode("utf-8-sig")  # the BOM spreadsheet programs write is accepted
    except UnicodeDecodeError as exc:
        raise UserError(f"{where}: not UTF-8 (byte {exc.start}); save it as UTF-8") from None
    field = text_field or "text"
    if suffix == ".csv":
        texts = _csv_texts(content, where, field)
    elif suffix == ".jsonl":
        texts = _jsonl_texts(content, where, field)
    else:
        texts = [_checked(line, f"{where}:{n}", None) for n, line in enumerate(_lines(content), 1)]
    if not texts:
        raise UserError(f"{where}: holds no texts to classify")
    return texts


# ---- output -------------------------------------------------------------------------------


def _json_line(p: Prediction) -> str:
    top = [{"label": label, "probability": prob} for label, prob in p.top_k]
    return json.dumps(
        {"index": p.index, "label": p.label, "probability": p.probability, "top_k": top},
        ensure_ascii=False,
    )


def _rows(
    predictions: list[Prediction], texts: Sequence[str], top_k: int
) -> tuple[list[str], list[list[str]]]:
    headers = ["#", "text", "label", "probability"] + (["next most likely"] if top_k > 1 else [])
    rows = [
        [str(p.index), " ".join(texts[p.index - 1].split()), p.label, f"{p.probability:.3f}"]
        + ([", ".join(f"{label} {prob:.3f}" for label, prob in p.top_k[1:])] if top_k > 1 else [])
        for p in predictions
    ]
    return headers, rows


def _print_lines(predictions: list[Prediction], texts: Sequence[str], top_k: int) -> None:
    """Tab-separated lines with a header, for pipes and files: quick for any number of texts."""
    headers, rows = _rows(predictions, texts, top_k)
    sys.stdout.write("".join("\t".join(row) + "\n" for row in [headers, *rows]))


def _print_table(predictions: list[Prediction], texts: Sequence[str], top_k: int) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    headers, rows = _rows(predictions, texts, top_k)
    # The text column takes the width the others leave, so labels and numbers are never cut.
    console = Console()
    others = sum(
        max(len(headers[c]), *(len(r[c]) for r in rows)) + 3 for c in range(len(headers)) if c != 1
    )
    text_width = max(12, console.width - others - 4)
    table = Table()
    for c, header in enumerate(headers):
        if c == 1:
            table.add_column(header, no_wrap=True, overflow="ellipsis", max_width=text_width)
        else:
            table.add_column(header, no_wrap=True, justify="left" if c in (2, 4) else "right")
    for row in rows:
        row[1] = row[1][: text_width + 1]  # rich adds the ellipsis
        # Text(...) shows brackets in a text as they are, where a str would be read as markup.
        table.add_row(*(Text(cell) for cell in row))
    console.print(table)


def _note_unknown_only(predictions: list[Prediction]) -> None:
    blind = [p.index for p in predictions if not p.knows_a_word]
    if blind:
        shown = ", ".join(f"#{i}" for i in blind[:5]) + (", ..." if len(blind) > 5 else "")
        print(
            f"note: {len(blind)} text(s) ({shown}) hold no word of the model's vocabulary; "
            "their labels reflect only their length, not their content",
            file=sys.stderr,
        )


def run(
    texts: Sequence[str],
    file: str | None = None,
    *,
    model: str = "birnn",
    vocab: Path | None = None,
    text_field: str | None = None,
    top_k: int = 1,
    as_json: bool = False,
) -> None:
    """Classify `texts`, or those read from `file`, and print a table or JSON lines."""
    if texts and file is not None:
        raise UserError("give texts as arguments or with --file, not both")
    if file is not None:
        inputs = read_texts(file, text_field)
    elif text_field is not None:
        raise UserError("--text-field applies to --file with a .csv or .jsonl file")
    elif not texts:
        raise UserError("no texts to classify: give them as arguments, or --file PATH (- is stdin)")
    else:
        inputs = [_checked(text, f"text {n}", None) for n, text in enumerate(texts, start=1)]
    clf = load_classifier(model_path(model), vocab)
    # The RNN's per-step matrices are too small for torch's intra-op threads to pay; on a busy
    # machine they make inference several times slower. The cores go to parallel batches instead.
    torch.set_num_threads(1)
    if not 1 <= top_k <= len(clf.labels):
        raise UserError(f"--top-k must be between 1 and {len(clf.labels)} (labels), got {top_k}")
    predictions = list(predict(clf, inputs, top_k))
    if as_json:
        sys.stdout.write("".join(_json_line(p) + "\n" for p in predictions))
    elif sys.stdout.isatty():
        _print_table(predictions, inputs, top_k)
    else:
        # rich needs about 0.5 ms a row: a table of 10,000 texts would take seconds to draw.
        _print_lines(predictions, inputs, top_k)
    _note_unknown_only(predictions)
