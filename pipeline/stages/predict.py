"""predict: label new texts with a trained checkpoint. Not a DVC stage: it reads, never writes.

Reads models/<model>.pt, or any checkpoint path: a checkpoint carries its vocabulary, labels
and truncation, so it is all predict needs (pipeline.model.served). The probabilities are
softmax(logits / T) with the checkpoint's temperature T (fitted on the validation split by
evaluate and written into models/<model>.pt by publish; 1 for a run's own checkpoint), so the
labels are the model's argmax whatever T is. `--vocab` optionally checks
that the checkpoint was trained with a given vocabulary file (its sha256 must match). It runs
on the CPU unless `--device cuda` (or `auto`: cuda where there is one) is given.

Texts come from the command line, or from a file or stdin: one text per line, or one field of
a .csv or .jsonl file. They go through prepare's own path (text.tokenise, then text.encode with
the checkpoint's max_len and keep), so long texts are truncated exactly as in training. The
model is loaded once and texts are classified in batches of similar length, so little padding
is computed. Prints a table on a terminal, tab-separated lines when piped, or one JSON object
per text with --json.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from pipeline.core import devices, files
from pipeline.core.errors import UserError
from pipeline.data import inputs
from pipeline.data.text import PAD_ID, UNK_ID, encode, tokenise
from pipeline.model.network import predict_logits
from pipeline.model.served import Classifier, checkpoint_path, load_classifier

BATCH_SIZE = 128  # texts per forward pass
CHUNK = 8192  # texts encoded at once; bounds the (N, max_len) id array for very long inputs
MAX_WORKERS = 4


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


def default_workers() -> int:
    """One batch per core, up to MAX_WORKERS: the RNN op releases the GIL for its whole time
    loop, so each thread keeps a core busy (with torch's intra-op threads set to 1, see `run`)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_WORKERS, cores or 1))


def _logits(clf: Classifier, ids: torch.Tensor, lengths: torch.Tensor, batch_size: int, workers: int) -> torch.Tensor:
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
    probs[order] = (logits.double() / clf.temperature).softmax(dim=-1)
    knows_a_word = ((ids_t != UNK_ID) & (ids_t != PAD_ID)).any(dim=1)
    return probs, knows_a_word


def predict(
    clf: Classifier,
    texts: Iterable[str],
    top_k: int = 1,
    batch_size: int = BATCH_SIZE,
    workers: int | None = None,
    before: int = 0,
) -> Iterator[Prediction]:
    """Predictions in input order, computed CHUNK texts at a time as `texts` yields them.

    `before` texts came earlier in the same input: the first gets index before + 1.
    """
    for start, chunk in chunks(texts):
        probs, knows_a_word = probabilities(clf, chunk, batch_size, workers)
        values, indices = probs.topk(top_k, dim=-1)  # sorted, most likely first
        for row, (vals, idx, known) in enumerate(
            zip(values.tolist(), indices.tolist(), knows_a_word.tolist(), strict=True)
        ):
            yield Prediction(
                index=before + start + row + 1,
                top_k=tuple((clf.labels[i], v) for v, i in zip(vals, idx, strict=True)),
                knows_a_word=known,
            )


def chunks(texts: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    """(how many came before, the next CHUNK texts): bounds what is held at once.

    A bad text (a UserError from `texts`) ends its chunk early: the texts read before it are
    yielded first, so that their predictions come out before the error does.
    """
    it, start = iter(texts), 0
    while True:
        chunk: list[str] = []
        try:
            chunk.extend(islice(it, CHUNK))
        except UserError:
            if chunk:
                yield start, chunk
            raise
        if not chunk:
            return
        yield start, chunk
        start += len(chunk)


# ---- output -------------------------------------------------------------------------------


def _json_line(p: Prediction) -> str:
    """One line of --json output, newline included, through the project's one JSONL writer."""
    top = [{"label": label, "probability": prob} for label, prob in p.top_k]
    row = {"index": p.index, "label": p.label, "probability": p.probability, "top_k": top}
    return files.jsonl_line(row).decode("utf-8")


def _rows(predictions: Iterable[Prediction], texts: Iterable[str], top_k: int) -> tuple[list[str], list[list[str]]]:
    headers = ["#", "text", "label", "probability"] + (["next most likely"] if top_k > 1 else [])
    rows = [
        [str(p.index), " ".join(text.split()), p.label, f"{p.probability:.3f}"]
        + ([", ".join(f"{label} {prob:.3f}" for label, prob in p.top_k[1:])] if top_k > 1 else [])
        for p, text in zip(predictions, texts, strict=True)
    ]
    return headers, rows


def _print_lines(predictions: list[Prediction], texts: Sequence[str], top_k: int, header: bool = True) -> None:
    """Tab-separated lines with a header, for pipes and files: quick for any number of texts."""
    headers, rows = _rows(predictions, texts, top_k)
    sys.stdout.write("".join("\t".join(row) + "\n" for row in [headers] * header + rows))


def _print_table(predictions: list[Prediction], texts: Sequence[str], top_k: int) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    headers, rows = _rows(predictions, texts, top_k)
    # The text column takes the width the others leave, so labels and numbers are never cut.
    console = Console()
    others = sum(max(len(headers[c]), *(len(r[c]) for r in rows)) + 3 for c in range(len(headers)) if c != 1)
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


def _note_unknown_only(blind: list[int], count: int) -> None:
    if count:
        shown = ", ".join(f"#{i}" for i in blind) + (", ..." if count > len(blind) else "")
        print(
            f"note: {count} text(s) ({shown}) hold no word of the model's vocabulary; "
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
    device: str = "cpu",
) -> None:
    """Classify `texts`, or those read from `file`, on `device` (cpu, cuda or auto); print a table or JSON lines."""
    if texts and file is not None:
        raise UserError("give texts as arguments or with --file, not both")
    if file is not None:
        source: Iterable[str] = inputs.read_texts(file, text_field)
    elif text_field is not None:
        raise UserError("--text-field applies to --file with a .csv or .jsonl file")
    elif not texts:
        raise UserError("no texts to classify: give them as arguments, or --file PATH (- is stdin)")
    else:
        source = inputs.from_arguments(texts)
    target = devices.pick(device, "--device")
    clf = load_classifier(checkpoint_path(model), vocab, target)
    # The RNN's per-step matrices are too small for torch's intra-op threads to pay; on a busy
    # machine they make inference several times slower. The cores go to parallel batches instead;
    # a GPU takes one batch at a time.
    workers = 1 if target.type == "cuda" else None
    torch.set_num_threads(1)
    if not 1 <= top_k <= len(clf.labels):
        raise UserError(f"--top-k must be between 1 and {len(clf.labels)} (labels), got {top_k}")
    blind: list[int] = []  # the first few texts without a known word, and how many in all
    n_blind = 0
    # Printed a chunk at a time, so a long input streams through in bounded memory.
    for start, chunk in chunks(source):
        predictions = list(predict(clf, chunk, top_k, workers=workers, before=start))
        try:
            if as_json:
                sys.stdout.write("".join(map(_json_line, predictions)))
            elif sys.stdout.isatty():
                _print_table(predictions, chunk, top_k)
            else:
                # rich needs about 0.5 ms a row: a table of 10,000 texts would take seconds to draw.
                _print_lines(predictions, chunk, top_k, header=start == 0)
            sys.stdout.flush()
        except BrokenPipeError:
            raise  # the reader has all it wants: the CLI ends quietly
        except OSError as exc:  # stdout is a full disk, or /dev/full
            raise UserError(f"stdout: cannot write the predictions ({exc.strerror or exc})") from None
        unknown = [p.index for p in predictions if not p.knows_a_word]
        blind += unknown[: 5 - len(blind)]
        n_blind += len(unknown)
    _note_unknown_only(blind, n_blind)
