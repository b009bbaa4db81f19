"""Many runs in one pass: a model's seeds side by side against one process per run, measured in one sitting.

For one model on BBC News (data/prepared, run `dvc repro prepare` first), alternating round by
round in scratch folders with the same data, params and seeds:

- release: the train stage of the last release that trained each run in a process of its own
  (RELEASE, checked out into a temporary git worktree): `pipeline train MODEL --seed S` once per
  seed, one after another, each run on train.threads threads;
- side by side: this checkout's `pipeline train MODEL`, every seed in one stage, train.threads
  runs at a time in forked workers, one thread each.

It prints the wall time of the whole stage (start-up, training, the per-epoch scoring, the
outputs), runs per minute and their ratio, and the share of this machine's sgemm roofline
(measured here on 2 threads, as benchmarks/train_throughput.py does) that the training steps
reach: the FLOPs of every run's training tokens over the time the runs spent training, summed
over the runs that train at once.

    python benchmarks/train_runs.py [--model birnn] [--epochs 10] [--rounds 2] [--release REV]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from pipeline.core import params as params_module
from pipeline.model.network import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
RELEASE = "09b70b4"  # the last release that trained one run per process, each on train.threads threads


def flops_per_token(cfg: ModelConfig) -> float:
    """Forward + backward of the recurrence (3x the forward GEMMs), per real token."""
    directions = 2 if cfg.bidirectional else 1
    per_layer = [cfg.embed_dim] + [cfg.hidden_dim * directions] * (cfg.num_layers - 1)
    return 3 * sum(2 * directions * (inp * cfg.hidden_dim + cfg.hidden_dim**2) for inp in per_layer)


def roofline_gflops(threads: int) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    times = []
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * 2048**3 / min(times) / 1e9


def scratch(code: Path, epochs: int, seeds: list[int]) -> Path:
    """A folder holding data/prepared and `code`'s params.yaml, shortened to `epochs`."""
    folder = Path(tempfile.mkdtemp(prefix="train-runs-"))
    shutil.copytree(ROOT / "data" / "prepared", folder / "data" / "prepared")
    raw = yaml.safe_load((code / "params.yaml").read_text())
    raw["train"].update(max_epochs=epochs, seeds=seeds)
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder


def timed(commands: list[list[str]], folder: Path, code: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {"PYTHONPATH": str(code)}
    start = time.perf_counter()
    for command in commands:
        subprocess.run(
            [sys.executable, "-m", "pipeline", *command], cwd=folder, env=env, check=True, stdout=subprocess.DEVNULL
        )
    return time.perf_counter() - start


def training_rate(folder: Path, model: str, seeds: list[int]) -> tuple[float, float]:
    """(tokens, seconds) the runs spent in their training passes, from their summaries."""
    summaries = [json.loads((folder / "metrics" / "train" / model / f"seed{s}.json").read_text()) for s in seeds]
    tokens = sum(s["tokens_per_second"] * s["train_seconds"] for s in summaries)
    return tokens, sum(s["train_seconds"] for s in summaries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="birnn")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--release", default=RELEASE)
    args = parser.parse_args()
    params = params_module.load(ROOT / "params.yaml")
    seeds, threads = list(params.train.seeds), params.train.threads
    vocab = json.loads((ROOT / "data" / "prepared" / "vocab.json").read_text())["tokens"]
    labels = json.loads((ROOT / "data" / "prepared" / "labels.json").read_text())
    cfg = ModelConfig.from_params(params.model(args.model), vocab_size=len(vocab), num_classes=len(labels))
    peak = roofline_gflops(threads)
    worktree = Path(tempfile.mkdtemp(prefix="release-"))
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(worktree), args.release],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    arms = {
        "release": (worktree, [["train", args.model, "--seed", str(s)] for s in seeds], 1),
        "side by side": (ROOT, [["train", args.model]], min(threads, len(seeds))),
    }
    walls: dict[str, list[float]] = {arm: [] for arm in arms}
    shares: dict[str, list[float]] = {arm: [] for arm in arms}
    try:
        for code, _, _ in arms.values():  # warm-up: each version builds its own kernel once
            folder = scratch(code, 1, seeds[:1])
            timed([["train", args.model, "--seed", str(seeds[0])]], folder, code)
            shutil.rmtree(folder)
        for _ in range(args.rounds):
            for arm, (code, commands, concurrent) in arms.items():
                folder = scratch(code, args.epochs, seeds)
                walls[arm].append(timed(commands, folder, code))
                tokens, seconds = training_rate(folder, args.model, seeds)
                shares[arm].append(concurrent * tokens / seconds * flops_per_token(cfg) / 1e9 / peak)
                shutil.rmtree(folder)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=False)
    print(
        f"{args.model}, {len(seeds)} seeds x {args.epochs} epochs, {threads} threads; sgemm roofline {peak:.1f} GFLOP/s"
    )
    for arm in arms:
        wall = statistics.median(walls[arm])
        print(
            f"  {arm:13s} wall {wall:6.1f} s  ({', '.join(f'{w:.1f}' for w in walls[arm])})  "
            f"{60 * len(seeds) / wall:5.2f} runs/min  training steps at {100 * statistics.median(shares[arm]):4.1f} % "
            "of the roofline"
        )
    ratio = statistics.median(r / s for r, s in zip(walls["release"], walls["side by side"], strict=True))
    print(f"  runs per minute, side by side / release: {ratio:.2f} x (median of the per-round ratios)")


if __name__ == "__main__":
    main()
