"""What stacking a model's seeds would earn: R BiRNN training steps as one set of batched products,
against the stage's own step, one run at a time, measured side by side in one sitting.

The train stage trains a model's seeds in train.threads forked workers, one thread and one run
each. The lever this measures, not yet built into the stage, stacks the R runs' weights into
tensors with a leading run dimension, so that one step of all runs is one pass of batched
operations: the embedding lookup of every run at once, the input projections as one baddbmm, the
recurrence as one call of the C++ kernel over R x D units (the kernel already runs directions as
independent units across threads), the max readout, the head and Adam(W) over the stacked tensors,
with clipping per run. Each run keeps its own batch order and masks. Arms, on BBC News's training
split (data/prepared, run `dvc repro prepare` first), at the BiRNN's params.yaml sizes:

- alone: the stage's step (pipeline.stages.train.train_one_epoch's body: RNNClassifier,
  FusedAdam, clip_grad_norm_) for one run on one thread;
- workers: that step in `threads` forked processes at once, one run each (the stage today);
- stacked: all R runs in one process on `threads` threads;
- stacked in workers: the R runs dealt to `threads` forked processes, each stacking its share on
  one thread.

It prints the time per run-step of each arm (median over rounds), stacked / workers, and the share
of the sgemm roofline (measured here, benchmarks/train_runs.py) that the recurrence's FLOPs reach.
The stacked arm is the step's arithmetic only (no scoring, no early stopping, no checkpoints):
an upper bound of what the lever can bring to the training steps.

    python benchmarks/stacked_runs.py [--runs 5] [--steps 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from train_runs import flops_per_token, roofline_gflops

from pipeline.core import params as params_module
from pipeline.data.splits import Split, bucketed_batches, load_split
from pipeline.data.text import PAD_ID, UNK_ID
from pipeline.model.network import MaxOverTime, ModelConfig, RNNClassifier
from pipeline.model.optimizer import FusedAdam
from pipeline.model.recurrence import Reversal, TanhRecurrence, compiled, reversal_index

ROOT = Path(__file__).resolve().parents[1]


def run_batches(train: Split, batch_size: int, seed: int, steps: int) -> list[torch.Tensor]:
    """A run's first `steps` whole batches of its first epoch, of full-length texts only (no padding to mask)."""
    full = torch.nonzero(train.lengths == train.lengths.max()).squeeze(1)
    generator = torch.Generator().manual_seed(seed)
    batches = [full[b] for b in bucketed_batches(train.lengths[full], batch_size, generator)]
    return [b for b in batches if len(b) == batch_size][:steps]  # whole batches, so that runs stack


class Stacked:
    """R runs of a one-layer tanh BiRNN with max readout, as stacked leaf tensors."""

    def __init__(self, cfg: ModelConfig, seeds: list[int]):
        self.cfg, self.runs = cfg, len(seeds)
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        models = []
        for seed in seeds:  # each run's own initial weights, drawn as alone_steps draws them
            torch.manual_seed(seed)
            models.append(RNNClassifier(cfg))
        rnns = [m.rnn for m in models]

        def per_direction(name: str) -> torch.Tensor:
            return torch.stack([getattr(n, name + s) for n in rnns for s in ("_l0", "_l0_reverse")])

        with torch.no_grad():
            self.embedding = torch.stack([m.embedding.weight for m in models])  # (R, V, E)
            self.w_ih = per_direction("weight_ih").transpose(1, 2).contiguous()  # (R * D, E, H)
            self.bias = (per_direction("bias_ih") + per_direction("bias_hh"))[:, None, :]  # (R * D, 1, H)
            self.w_hh = per_direction("weight_hh").contiguous()  # (R * D, H, H)
            self.head_w = torch.stack([m.head.weight.t() for m in models]).contiguous()  # (R, D * H, C)
            self.head_b = torch.stack([m.head.bias for m in models])[:, None, :]  # (R, 1, C)
        self.params = [self.embedding, self.w_ih, self.bias, self.w_hh, self.head_w, self.head_b]
        for p in self.params:
            p.requires_grad_(True)

    def _mask(self, x: torch.Tensor, p: float) -> torch.Tensor:
        """Each run's dropout mask from its own generator, as RNNClassifier.dropout draws it."""
        kernel = compiled()
        seeds = [int(torch.randint(0, 2**62, (1,), generator=g)) for g in self.generators]
        return torch.stack([kernel.dropout_mask(x[i].detach(), p, s) for i, s in enumerate(seeds)])

    def loss(self, ids: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """ids (R, B, T), lengths and labels (R, B) -> the sum over runs of each run's mean loss."""
        r, b, t = ids.shape
        v, e = self.embedding.shape[1:]
        uniform = torch.stack([torch.rand(ids.shape[1:], generator=g) for g in self.generators])
        ids = ids.masked_fill((uniform < self.cfg.word_dropout) & (ids != PAD_ID), UNK_ID)
        rows = (ids.transpose(1, 2) + torch.arange(r)[:, None, None] * v).reshape(-1)  # (R * T * B,) time-major
        x = self.embedding.view(r * v, e).index_select(0, rows).view(r, t, b, e)
        x = x * self._mask(x, self.cfg.dropout)
        index = torch.cat([reversal_index(lengths[i], t) + i * t * b for i in range(r)])
        inputs = torch.stack([x, Reversal.apply(x, index)], dim=1).view(r * 2, t * b, e)  # (R * D, T * B, E)
        pre = torch.baddbmm(self.bias, inputs, self.w_ih)  # (R * D, T * B, H)
        out = TanhRecurrence.apply(pre, self.w_hh, t).view(r * 2, t, b, -1)  # (R * D, T, B, H)
        pooled = MaxOverTime.apply(out)  # (R * D, B, H): full-length texts, nothing to mask
        features = pooled.view(r, 2, b, -1).transpose(1, 2).reshape(r, b, -1)  # (R, B, D * H)
        features = features * self._mask(features, self.cfg.dropout)
        logits = torch.baddbmm(self.head_b, features, self.head_w)  # (R, B, C)
        per_text = nn.functional.cross_entropy(logits.reshape(r * b, -1), labels.reshape(-1), reduction="none")
        return per_text.view(r, b).mean(1).sum()

    def clip(self, max_norm: float) -> None:
        """clip_grad_norm_ run by run: each run's gradient norm over its slices of every tensor."""
        grads = [p.grad.view(self.runs, -1) for p in self.params if p.grad is not None]
        norms = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dim=1) for g in grads]), dim=0)
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale[:, None])


def stacked_steps(cfg: ModelConfig, train: Split, t, seeds: list[int], steps: int) -> float:
    """Seconds for `steps` steps of all runs stacked, on the threads already set."""
    model = Stacked(cfg, seeds)
    optimizer = FusedAdam(model.params, lr=t.lr, weight_decay=t.weight_decay, decoupled=t.optimizer == "adamw")
    batches = [run_batches(train, t.batch_size, s, steps) for s in seeds]
    start = time.perf_counter()
    for k in range(steps):
        parts = [train.batch(runs[k]) for runs in batches]
        ids, lengths, labels = (torch.stack([p[i] for p in parts]) for i in range(3))
        optimizer.zero_grad()
        model.loss(ids, lengths, labels).backward()
        model.clip(t.grad_clip)
        optimizer.step()
    return time.perf_counter() - start


def alone_steps(cfg: ModelConfig, train: Split, t, seed: int, steps: int) -> float:
    """Seconds for `steps` of the stage's own step, one run, on one thread."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = RNNClassifier(cfg)
    model.generator = torch.Generator().manual_seed(seed)
    model.train()
    optimizer = FusedAdam.from_params(model.parameters(), t)
    criterion = nn.CrossEntropyLoss()
    batches = run_batches(train, t.batch_size, seed, steps)
    start = time.perf_counter()
    for index in batches:
        ids, lengths, labels = train.batch(index)
        optimizer.zero_grad()
        criterion(model(ids, lengths), labels).backward()
        nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
    return time.perf_counter() - start


def _worker(args: tuple) -> float:
    return alone_steps(*args)


def _stacking_worker(args: tuple) -> float:
    torch.set_num_threads(1)
    return stacked_steps(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    params = params_module.load(ROOT / "params.yaml")
    t, threads = params.train, params.train.threads
    prepared = ROOT / "data" / "prepared"
    train = load_split("train", prepared)
    vocab = json.loads((prepared / "vocab.json").read_text())["tokens"]
    labels = json.loads((prepared / "labels.json").read_text())
    cfg = ModelConfig.from_params(params.model("birnn"), vocab_size=len(vocab), num_classes=len(labels))
    if not (cfg.bidirectional and cfg.num_layers == 1 and cfg.readout == "max" and cfg.cell == "rnn"):
        raise SystemExit("the stacked arm is written for a one-layer tanh BiRNN with max readout")
    seeds = list(range(1, args.runs + 1))
    peak = roofline_gflops(threads)
    tokens = args.steps * t.batch_size * int(train.lengths.max())  # per run
    fork = multiprocessing.get_context("fork")
    per_step: dict[str, list[float]] = {"alone": [], "workers": [], "stacked": [], "stacked in workers": []}
    shares = [seeds[i::threads] for i in range(threads)]  # each worker's runs, stacked
    alone_steps(cfg, train, t, seeds[0], 2)  # warm-up: kernels loaded, first-call costs paid
    for _ in range(args.rounds):
        torch.set_num_threads(1)
        per_step["alone"].append(alone_steps(cfg, train, t, seeds[0], args.steps) / args.steps)
        with fork.Pool(threads) as pool:
            start = time.perf_counter()
            pool.map(_worker, [(cfg, train, t, s, args.steps) for s in seeds])
            per_step["workers"].append((time.perf_counter() - start) / (args.steps * len(seeds)))
        torch.set_num_threads(threads)
        per_step["stacked"].append(stacked_steps(cfg, train, t, seeds, args.steps) / (args.steps * len(seeds)))
        torch.set_num_threads(1)
        with fork.Pool(threads) as pool:
            start = time.perf_counter()
            pool.map(_stacking_worker, [(cfg, train, t, share, args.steps) for share in shares])
            per_step["stacked in workers"].append((time.perf_counter() - start) / (args.steps * len(seeds)))
    print(
        f"BiRNN (embed {cfg.embed_dim}, hidden {cfg.hidden_dim}), batch {t.batch_size}, {args.runs} runs x "
        f"{args.steps} steps, {args.rounds} rounds, {threads} threads; sgemm roofline {peak:.1f} GFLOP/s"
    )
    for arm, times in per_step.items():
        step = statistics.median(times)
        share = tokens * flops_per_token(cfg) / (step * args.steps) / 1e9 / peak
        print(f"  {arm:18s} {1e3 * step:6.2f} ms per run-step  ({share * 100:4.1f} % of the roofline)")
    for arm in ("stacked", "stacked in workers"):
        ratio = statistics.median(w / s for w, s in zip(per_step["workers"], per_step[arm], strict=True))
        print(f"  run-steps per second, {arm} / workers: {ratio:.2f} x (median of the per-round ratios)")


if __name__ == "__main__":
    main()
