"""How fast the full default `dvc repro`'s training can be here: the runs' work against the sgemm roofline.

The last `dvc repro` left one summary per run under metrics/train/ (epochs run, seconds spent
in training steps). For each run this counts the floating-point work of its recurrence, epoch by
epoch: the training split's real tokens forward and backward, and the eval-mode scoring of the
whole training and validation splits that every epoch does (the learning curves and early
stopping read it; forward only). Two counts:

- per token: the count the step's roofline share uses (benchmarks/train_runs.py's
  flops_per_token) for training, and for scoring the recurrence and the input projections of the
  layers above the first (scoring looks the first layer's up in a table). The two rungs without
  dropout also train on that table, so for them this overstates the work;
- hidden products only: the hidden-to-hidden products h W_hh^T, their gradient and dW_hh, and
  the input projections of stacked layers, which any implementation of these models computes;
  a lower bound however the rest is done.

It measures the 2-thread 2048 x 2048 sgemm roofline in the same run and prints, per model and in
all, the work and the seconds it takes at the whole roofline, at the 60 % share the training-speed
floor asks of a step, and the seconds the runs spent training (their summaries' train_seconds,
scoring excluded), all divided over the two cores. Nothing is trained; it reads data/prepared and
metrics/train (run `dvc repro` first).

    python benchmarks/repro_floor.py [--threads 2] [--floor-seconds 240]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from train_runs import flops_per_token, roofline_gflops

from pipeline.core import layout
from pipeline.core import params as params_module
from pipeline.data.splits import load_split
from pipeline.model.network import ModelConfig

ROOT = Path(__file__).resolve().parents[1]


def hidden_flops_per_token(cfg: ModelConfig) -> tuple[float, float]:
    """(training, scoring) FLOPs per real token that no implementation skips: per layer and
    direction 2 H^2 forward; backward twice that (the gradient through W_hh and dW_hh); stacked
    layers' input projections likewise."""
    directions = 2 if cfg.bidirectional else 1
    inputs = [0] + [cfg.hidden_dim * directions] * (cfg.num_layers - 1)
    forward = sum(2 * directions * (i * cfg.hidden_dim + cfg.hidden_dim**2) for i in inputs)
    return 3 * forward, forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="cores the runs share (default train.threads)")
    parser.add_argument("--floor-seconds", type=float, default=240.0, help="the whole repro's time floor")
    args = parser.parse_args()
    params = params_module.load(ROOT / "params.yaml")
    threads = args.threads or params.train.threads
    prepared = ROOT / "data" / "prepared"
    tokens = {name: float(load_split(name, prepared).lengths.sum()) for name in ("train", "val")}
    vocab = json.loads((prepared / "vocab.json").read_text())["tokens"]
    labels = json.loads((prepared / "labels.json").read_text())
    peak = roofline_gflops(threads) * 1e9
    print(
        f"sgemm roofline on {threads} threads: {peak / 1e9:.1f} GFLOP/s; tokens per epoch: "
        f"train {tokens['train']:.0f}, val {tokens['val']:.0f}"
    )
    print(
        f"{'model':22s} {'runs':>4s} {'epochs':>6s} {'TFLOP':>6s} {'bound':>6s} | {'TFLOP':>6s} "
        f"{'at 100 %':>8s} {'at 60 %':>8s} {'trained':>8s} {'share':>6s}"
    )
    totals = [0, 0, 0.0, 0.0, 0.0]
    for name in params_module.MODELS:
        cfg = ModelConfig.from_params(params.model(name), len(vocab), len(labels))
        train_hidden, score_hidden = hidden_flops_per_token(cfg)
        runs, epochs, seconds = 0, 0, 0.0
        for seed in params.train.seeds:
            summary = json.loads((ROOT / layout.run_summary(name, seed)).read_text())
            runs, epochs, seconds = runs + 1, epochs + summary["epochs_run"], seconds + summary["train_seconds"]
        scored = tokens["train"] + tokens["val"]
        computed = epochs * (tokens["train"] * flops_per_token(cfg) + scored * score_hidden)
        bound = epochs * (tokens["train"] * train_hidden + scored * score_hidden)
        trained_flops = epochs * tokens["train"] * flops_per_token(cfg)
        share = trained_flops / seconds / peak * threads  # seconds are one core's; the roofline both cores'
        print(
            f"{name:22s} {runs:4d} {epochs:6d} {bound / 1e12:6.2f} {bound / peak:5.1f}s | {computed / 1e12:6.2f} "
            f"{computed / peak:7.1f}s {computed / peak / 0.6:7.1f}s {seconds / threads:7.1f}s {100 * share:5.1f}%"
        )
        totals = [totals[0] + runs, totals[1] + epochs, totals[2] + bound, totals[3] + computed, totals[4] + seconds]
    runs, epochs, bound, computed, seconds = totals
    print(
        f"{'all':22s} {runs:4d} {epochs:6d} {bound / 1e12:6.2f} {bound / peak:5.1f}s | {computed / 1e12:6.2f} "
        f"{computed / peak:7.1f}s {computed / peak / 0.6:7.1f}s {seconds / threads:7.1f}s"
    )
    print(
        f"the whole repro's floor, {args.floor_seconds:.0f} s, against its training alone: hidden products at the "
        f"whole roofline {bound / peak / args.floor_seconds:.2f} x, per-token count at the whole roofline "
        f"{computed / peak / args.floor_seconds:.2f} x, at 60 % {computed / peak / 0.6 / args.floor_seconds:.2f} x, "
        f"as trained (scoring excluded) {seconds / threads / args.floor_seconds:.2f} x"
    )


if __name__ == "__main__":
    main()
