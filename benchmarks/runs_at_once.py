"""How many runs to train at once on the stage's cores: `threads` workers against a few more, measured in one sitting.

A model's stage trains its seeds in forked workers, one thread a run. With train.threads
workers, five runs on two cores take three rounds, the last with one core idle; with more
workers than cores, the kernel time-slices them and the last runs finish together
(pipeline.stages.train.runs_at_once picks the count). This trains one model's seeds of
params.yaml (BBC News, data/prepared: run `dvc repro prepare` first), shortened to `--epochs`,
round by round alternating the worker counts, and checks that every count trains the same runs
(kept epochs, scores, weights): only the wall time may move. It prints each count's times, the
median ratio to `threads` workers, and the count the stage chooses.

    python benchmarks/runs_at_once.py [--model stacked] [--epochs 6] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import statistics
import time
from pathlib import Path

import torch

from pipeline.core import params as params_module
from pipeline.core.distributed import World
from pipeline.model import recurrence
from pipeline.model.network import ModelConfig
from pipeline.stages import train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="stacked")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.chdir(ROOT)  # the stage reads data/prepared from the project root
    params = params_module.load(ROOT / "params.yaml")
    mp = params.model(args.model)
    t = dataclasses.replace(train.for_model(params.train, mp), max_epochs=args.epochs)
    seeds, threads = params.train.seeds, train.thread_count(params.train)
    torch.set_num_threads(1)
    recurrence.require_kernel(t.allow_fallback)
    inputs = train.Inputs.load()
    cfg = ModelConfig.from_params(mp, vocab_size=len(inputs.vocab), num_classes=len(inputs.labels))
    counts = sorted({min(threads, len(seeds)), train.runs_at_once(len(seeds), threads), len(seeds)})
    times: dict[int, list[float]] = {count: [] for count in counts}
    reference, cpu = None, torch.device("cpu")
    for _ in range(args.rounds):
        for count in counts:
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # the runs' epoch lines
                runs = train.train_side_by_side(cfg, inputs, t, mp, args.model, seeds, count, World(), cpu)
            times[count].append(time.perf_counter() - start)
            trained = [(r.summary["best_epoch"], r.summary["val_accuracy"], r.model.state_dict()) for r in runs]
            if reference is None:
                reference = trained
            same = all(
                a[:2] == b[:2] and all(torch.equal(a[2][k], b[2][k]) for k in a[2])
                for a, b in zip(trained, reference, strict=True)
            )
            if not same:
                raise SystemExit(f"error: {count} workers trained other runs than {counts[0]} did")
    base = min(threads, len(seeds))
    print(
        f"{args.model}, {len(seeds)} seeds x {args.epochs} epochs, {threads} threads: every count trained the same runs"
    )
    for count in counts:
        ratio = statistics.median(a / b for a, b in zip(times[count], times[base], strict=True))
        chosen = "  <- the stage's choice" if count == train.runs_at_once(len(seeds), threads) else ""
        print(
            f"{count} workers: {', '.join(f'{s:.1f}' for s in times[count])} s; "
            f"{ratio:.2f} x the time of {base}{chosen}"
        )


if __name__ == "__main__":
    main()
