"""Time and peak memory of `pipeline download` and `pipeline prepare` as the corpus grows.

Writes synthetic CSV corpora of 10k, 100k and 1M documents (by default) into a temp folder:
each document is 8-20 sentences drawn, with a seeded generator, from the BBC articles of one
class (about 1.9 KB a document, like the resampled corpus the memory problem was first measured
on). For each size it runs `pipeline download` (source csv) and `pipeline prepare` (params.yaml's
prepare section) as child processes and reads each one's wall time and peak RSS from the kernel
(os.wait4, see rss.py), then prints a table with the growth factor from one size to the next:
time should grow like the documents (10x), peak RSS far less. "ids" is the size of the padded
id arrays prepare writes, which it streams to disk rather than holding.

--compare DIR runs the same corpora, up to --compare-up-to documents, with the `pipeline`
package of another checkout (e.g. an older commit) and prints both side by side.

    nice -n 10 python benchmarks/prepare_memory.py [--sizes 10000 100000 1000000]
"""

from __future__ import annotations

import argparse
import csv
import random
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import rss
import yaml

from pipeline.data.sources import Tally, bbc

ROOT = Path(__file__).resolve().parents[1]
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def bbc_sentences() -> dict[str, list[str]]:
    """The BBC corpus split into sentences, per class."""
    by_class: dict[str, list[str]] = {}
    for text, label in bbc.read(Tally()):
        body = " ".join(text.split())
        by_class.setdefault(label, []).extend(s for s in SENTENCE_END.split(body) if len(s) > 20)
    return by_class


def documents(n: int, sentences: dict[str, list[str]], seed: int) -> Iterator[tuple[str, str]]:
    rng = random.Random(seed)
    labels = sorted(sentences)
    for _ in range(n):
        label = rng.choice(labels)
        pool = sentences[label]
        yield " ".join(rng.choice(pool) for _ in range(rng.randint(8, 20))), label


def write_corpus(path: Path, n: int, sentences: dict[str, list[str]], seed: int) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(documents(n, sentences, seed))


def measure(stage: str, cwd: Path, pythonpath: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of `pipeline STAGE`, which must succeed."""
    code, seconds, peak_mb, error = rss.pipeline(stage, cwd, pythonpath)
    if code != 0:
        raise SystemExit(f"pipeline {stage} failed ({code}): {error}")
    return seconds, peak_mb


def run_size(n: int, work: Path, corpus: Path, pythonpath: str) -> dict[str, float]:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    # The params file of the checkout that runs: another commit may name its settings apart.
    params = yaml.safe_load((Path(pythonpath) / "params.yaml").read_text())
    params["download"].update(source="csv", path=str(corpus))
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    row: dict[str, float] = {"docs": n, "csv_mb": corpus.stat().st_size / 1e6}
    row["download_s"], row["download_mb"] = measure("download", work, pythonpath)
    row["prepare_s"], row["prepare_mb"] = measure("prepare", work, pythonpath)
    prepared = work / "data" / "prepared"
    row["ids_mb"] = sum(
        n_rows * params["prepare"]["max_len"] * 8 / 1e6
        for n_rows in (_rows(prepared / f"{s}.npz") for s in ("train", "val", "test"))
    )
    shutil.rmtree(work)
    return row


def _rows(npz: Path) -> int:
    import numpy as np

    with np.load(npz, allow_pickle=False) as data:
        return int(data["labels"].shape[0])


def table(rows: list[dict[str, float]], title: str) -> str:
    cols = ["documents", "CSV MB", "download s", "download MB", "prepare s", "prepare MB", "ids MB"]
    keys = ["docs", "csv_mb", "download_s", "download_mb", "prepare_s", "prepare_mb", "ids_mb"]
    lines = [f"{title}", "| " + " | ".join(cols) + " |", "|" + "---:|" * len(cols)]
    for i, row in enumerate(rows):
        cells = []
        for key in keys:
            value = f"{row[key]:,.0f}" if key == "docs" else f"{row[key]:,.1f}"
            if i and key != "csv_mb":
                value += f" (x{row[key] / rows[i - 1][key]:.1f})"
            cells.append(value)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare", type=Path, help="another checkout's root, run side by side")
    parser.add_argument("--compare-up-to", type=int, default=100_000)
    parser.add_argument("--tmp", type=Path, default=None, help="where the corpora go (disk!)")
    args = parser.parse_args()

    sentences = bbc_sentences()
    print(f"BBC sentences: {sum(map(len, sentences.values())):,} in {len(sentences)} classes")
    ours, theirs = [], []
    with tempfile.TemporaryDirectory(prefix="prepare-memory-", dir=args.tmp) as tmp:
        for n in args.sizes:
            corpus = Path(tmp) / f"corpus-{n}.csv"
            write_corpus(corpus, n, sentences, args.seed)
            ours.append(run_size(n, Path(tmp) / "work", corpus, str(ROOT)))
            print(table(ours[-1:], f"this checkout, {n:,} documents"), flush=True)
            if args.compare and n <= args.compare_up_to:
                theirs.append(run_size(n, Path(tmp) / "work", corpus, str(args.compare)))
                print(table(theirs[-1:], f"{args.compare}, {n:,} documents"), flush=True)
            corpus.unlink()
    print()
    print(table(ours, f"this checkout ({ROOT}); growth from the row above in brackets"))
    if theirs:
        print()
        print(table(theirs, f"{args.compare}"))
        for new, old in zip(ours, theirs, strict=True):
            print(
                f"{new['docs']:,.0f} documents: prepare peak RSS {old['prepare_mb']:,.0f} MB -> "
                f"{new['prepare_mb']:,.0f} MB (x{new['prepare_mb'] / old['prepare_mb']:.2f}), "
                f"time {old['prepare_s']:.1f} s -> {new['prepare_s']:.1f} s; download "
                f"{old['download_mb']:,.0f} MB -> {new['download_mb']:,.0f} MB"
            )


if __name__ == "__main__":
    main()
