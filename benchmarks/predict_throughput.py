"""Throughput of `pipeline predict`: batched over a file vs. one text at a time, in one run.

Uses models/birnn.pt with data/prepared/vocab.json when both exist. Otherwise it builds a randomly
initialised model of the params.yaml `birnn` shape and a synthetic vocabulary of
`prepare.max_vocab` tokens in a temp folder, and says so: speed depends on the shape, not on the
weights. It then writes 10,000 texts of 300-400 words (BBC article length) to a file, one per line,
and times side by side:
  (a) read_texts + predict over the whole file, the functions `pipeline predict --file` runs, with
      its settings: torch ops on one thread each, batches on default_workers() threads;
  (b) the same predict called with one text at a time on a sample, extrapolated to all texts;
  (c) the same predict over a sample with the obvious alternative, torch.set_num_threads(2) and
      one batch at a time, which is why `pipeline predict` does not do that.
The target: 10,000 texts in at most 10 s on 2 cores. Taskset it to two cores on a bigger machine:

    taskset -c 0,1 python benchmarks/predict_throughput.py [--texts 10000] [--sample 300]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from pipeline.core import files
from pipeline.core import params as params_module
from pipeline.data.inputs import read_texts
from pipeline.data.text import PAD, UNK, Vocab
from pipeline.model import checkpoints
from pipeline.model.network import ModelConfig, RNNClassifier
from pipeline.stages.predict import Classifier, default_workers, load_classifier, predict

ROOT = Path(__file__).resolve().parents[1]
BBC_LABELS = ["business", "entertainment", "politics", "sport", "tech"]
TARGET_TEXTS, TARGET_SECONDS = 10_000, 10.0


def synthetic_classifier(folder: Path, seed: int = 0) -> Classifier:
    """A random model of the params.yaml birnn shape, saved and loaded like a trained one."""
    params = params_module.load(ROOT / "params.yaml", ("prepare", "birnn"))
    rng = np.random.default_rng(seed)
    words: set[str] = set()
    while len(words) < params.prepare.max_vocab - 2:
        words.add("".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(2, 11))))
    vocab = Vocab((PAD, UNK, *sorted(words)))
    files.write_text(folder / "vocab.json", vocab.to_json())
    cfg = ModelConfig.from_params(params.birnn, vocab_size=len(vocab), num_classes=len(BBC_LABELS))
    torch.manual_seed(seed)
    checkpoint = {
        "model": RNNClassifier(cfg).state_dict(),
        "config": asdict(cfg),
        "labels": BBC_LABELS,
        "vocab_sha256": files.sha256_file(folder / "vocab.json"),
        "encoding": {"max_len": params.prepare.max_len, "keep": params.prepare.keep},
        "epoch": 0,
        "best_val_loss": float("nan"),
    }
    checkpoints.save_checkpoint(folder / "birnn.pt", checkpoint)
    return load_classifier(folder / "birnn.pt", folder / "vocab.json")


def article(rng: np.random.Generator, words: list[str], weights: np.ndarray) -> str:
    """300-400 words in sentences, Zipf-like word frequencies, 3% words no vocabulary holds."""
    n = int(rng.integers(300, 401))
    picked = [words[i] for i in rng.choice(len(words), size=n, p=weights)]
    for i in np.flatnonzero(rng.random(n) < 0.03):
        picked[i] = f"Zq{int(rng.integers(1_000_000))}x"
    sentences, start = [], 0
    while start < n:
        end = min(n, start + int(rng.integers(8, 26)))
        sentence = " ".join(picked[start:end])
        sentences.append(sentence[:1].upper() + sentence[1:] + ".")
        start = end
    return " ".join(sentences)


def timed(work):
    """(result, wall seconds, CPU seconds of this process): CPU shows the work on a busy machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=TARGET_TEXTS)
    parser.add_argument("--sample", type=int, default=300, help="texts timed for (b) and (c)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as pipeline.stages.predict.run does

    with tempfile.TemporaryDirectory(prefix="predict-bench-") as tmp:
        model_file, vocab_file = ROOT / "models/birnn.pt", ROOT / "data/prepared/vocab.json"
        if model_file.is_file() and vocab_file.is_file():
            clf, load_s, _ = timed(lambda: load_classifier(model_file, vocab_file))
            origin = f"trained {model_file.relative_to(ROOT)} with {vocab_file.relative_to(ROOT)}"
        else:
            clf, load_s, _ = timed(lambda: synthetic_classifier(Path(tmp)))
            origin = (
                "no trained model found, so a randomly initialised model of the params.yaml "
                "birnn shape with a synthetic vocabulary (speed depends on shape, not weights)"
            )
        cfg = clf.model.cfg
        print(f"model: {origin}")
        print(
            f"  {cfg.cell} embed {cfg.embed_dim} hidden {cfg.hidden_dim} x{cfg.num_layers} "
            f"{'bidirectional' if cfg.bidirectional else 'unidirectional'}, vocabulary "
            f"{len(clf.vocab):,}, {len(clf.labels)} classes, max_len {clf.max_len} ({clf.keep}); "
            f"loaded in {load_s:.2f} s"
        )
        load = os.getloadavg()[0]
        print(
            f"machine: {default_workers()} cores for batches; load average {load:.1f} before"
            + (" (other work shares the cores: times are pessimistic)" if load >= 0.5 else "")
        )

        rng = np.random.default_rng(1)
        words = list(clf.vocab.tokens[2:])
        weights = 1.0 / (np.arange(len(words)) + 10.0)
        texts = [article(rng, words, weights / weights.sum()) for _ in range(args.texts)]
        path = Path(tmp) / "texts.txt"
        path.write_text("\n".join(texts) + "\n", encoding="utf-8")
        lengths = [len(t.split()) for t in texts]
        print(
            f"texts: {len(texts):,} of {min(lengths)}-{max(lengths)} words "
            f"(mean {np.mean(lengths):.0f}), {path.stat().st_size / 1e6:.1f} MB, one per line"
        )

        batched, batched_s, batched_cpu = timed(lambda: list(predict(clf, read_texts(str(path)))))
        sample = texts[: args.sample]
        single, single_s, _ = timed(lambda: [next(predict(clf, [text])) for text in sample])
        torch.set_num_threads(2)
        intra_op, intra_op_s, _ = timed(lambda: list(predict(clf, sample, workers=1)))
        torch.set_num_threads(1)

    rate = {"a": len(batched) / batched_s, "b": len(single) / single_s}
    rate["c"] = len(intra_op) / intra_op_s
    agree = all(x.label == y.label for x, y in zip(batched[: len(single)], single, strict=True))
    print(
        f"(a) batched over the file:    {len(batched):>6,} texts in {batched_s:6.2f} s "
        f"= {rate['a']:5.0f} texts/s ({batched_cpu:.1f} s CPU)"
    )
    print(
        f"(b) one text at a time:       {len(single):>6,} texts in {single_s:6.2f} s "
        f"= {rate['b']:5.0f} texts/s (all {len(texts):,}: ~{len(texts) / rate['b']:.0f} s)"
    )
    print(f"(c) torch threads 2, 1 batch: {len(intra_op):>6,} texts in {intra_op_s:6.2f} s = {rate['c']:5.0f} texts/s")
    print(
        f"speed-up (a)/(b): {rate['a'] / rate['b']:.1f}x, (a)/(c): {rate['a'] / rate['c']:.1f}x; "
        f"same labels batched and alone: {agree}"
    )
    projected = TARGET_TEXTS / rate["a"]
    print(
        f"{TARGET_TEXTS:,} texts in <= {TARGET_SECONDS:.0f} s: "
        f"{'yes' if projected <= TARGET_SECONDS else 'NO'} ({projected:.1f} s at rate (a))"
    )


if __name__ == "__main__":
    main()
