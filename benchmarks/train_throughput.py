"""Training throughput: the project's training step against a naive packed nn.RNN, side by side.

For the baseline and the BiRNN at the params.yaml sizes, on BBC News (data/prepared/train.npz,
run `dvc repro prepare` first) and on a corpus of short texts of varied length (5-100 tokens),
it times, in one process and interleaved round by round:

- peer: the most naive PyTorch code: random batches, `pack_padded_sequence`, `nn.RNN`
  (bidirectional for the BiRNN), the final state, a linear head;
- project: pipeline.stages.train.train_one_epoch on pipeline.data.splits.bucketed_batches, the stage's real step;
- per-token: the same step with the first layer's input projection computed for every token
  instead of looked up in a per-vocabulary table (RNNClassifier.projects_vocabulary), which
  training uses only where no dropout acts on the embeddings (the baseline);

all with the same data, sizes, batch size, optimizer (AdamW: torch.optim.AdamW for the peer,
the stage's pipeline.model.optimizer.FusedAdam for the project), learning rate and gradient clipping.
It prints real tokens per second, project / peer (the median of the per-round ratios), the
share of this machine's sgemm roofline (measured here) that the FLOPs of a step reach, and
project / per-token.

Then scoring, which the train stage does on the whole train and val splits after every
epoch: pipeline.stages.train.score_shard, for the three models, interleaved: batches of 1024 rows
projecting every token, batches sized by pipeline.data.splits.score_batch_size projecting every
token, and those batches with the vocabulary table (what the stage does).

    python benchmarks/train_throughput.py [--rounds 5] [--batches 24] [--threads N] [--part scoring]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from pipeline.core import params as params_module
from pipeline.core.distributed import World
from pipeline.data.splits import Split, bucketed_batches, load_split, score_batch_size
from pipeline.model.network import ModelConfig, RNNClassifier
from pipeline.model.optimizer import FusedAdam
from pipeline.stages import train as train_stage
from pipeline.stages.train import train_one_epoch


class NaivePeer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=0)
        self.rnn = nn.RNN(cfg.embed_dim, cfg.hidden_dim, batch_first=True, bidirectional=cfg.bidirectional)
        self.head = nn.Linear(cfg.hidden_dim * (2 if cfg.bidirectional else 1), cfg.num_classes)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(self.embedding(ids), lengths, batch_first=True, enforce_sorted=False)
        _, h_n = self.rnn(packed)
        return self.head(torch.cat(list(h_n), dim=-1))


def peer_steps(model: NaivePeer, split: Split, optimizer, clip: float | None, batches: list[torch.Tensor]) -> int:
    model.train()
    tokens = 0
    for index in batches:
        ids, lengths, labels = split.ids[index], split.lengths[index], split.labels[index]
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(ids, lengths), labels).backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        tokens += int(lengths.sum())
    return tokens


def short_texts(vocab_size: int, num_classes: int, n: int = 6000, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 101, (n,), generator=g)
    ids = torch.randint(2, vocab_size, (n, 100), generator=g)
    ids[torch.arange(100)[None, :] >= lengths[:, None]] = 0
    return Split(ids, lengths, torch.randint(0, num_classes, (n,), generator=g))


def roofline_gflops() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * 2048**3 / best / 1e9


def _timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def flops_per_token(cfg: ModelConfig) -> float:
    """Forward + backward of the recurrence (3x the forward GEMMs), per real token."""
    directions = 2 if cfg.bidirectional else 1
    per_layer = [cfg.embed_dim] + [cfg.hidden_dim * directions] * (cfg.num_layers - 1)
    forward = sum(2 * directions * (inp * cfg.hidden_dim + cfg.hidden_dim**2) for inp in per_layer)
    return 3 * forward


def per_token(model: RNNClassifier) -> RNNClassifier:
    """The model, made to project every token's embedding rather than look the projection up."""
    model.projects_vocabulary = lambda ids: False  # type: ignore[method-assign]
    return model


def _median_ratio(rates: dict[str, list[float]], top: str, bottom: str) -> float:
    return statistics.median(a / b for a, b in zip(rates[top], rates[bottom], strict=True))


def measure(cfg: ModelConfig, split: Split, batch_size: int, t, rounds: int, per_round: int) -> dict:
    torch.manual_seed(0)
    models = {"peer": NaivePeer(cfg), "project": RNNClassifier(cfg), "per-token": per_token(RNNClassifier(cfg))}
    make = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    # The peer: torch.optim's class as a tutorial would use it; the project: the stage's own.
    optimizers = {k: FusedAdam.from_params(m.parameters(), t) for k, m in models.items() if k != "peer"}
    optimizers["peer"] = make(models["peer"].parameters(), lr=t.lr, weight_decay=t.weight_decay)
    g = torch.Generator().manual_seed(1)
    rates: dict[str, list[float]] = {k: [] for k in models}
    for round_ in range(rounds + 1):  # round 0 warms up
        plan = bucketed_batches(split.lengths, batch_size, g)[:per_round]
        random_plan = torch.randperm(len(split), generator=g)[: per_round * batch_size].split(batch_size)
        for arm, model in models.items():
            start = time.perf_counter()
            if arm == "peer":
                tokens = peer_steps(model, split, optimizers[arm], t.grad_clip, list(random_plan))
            else:
                _, tokens = train_one_epoch(model, split, plan, optimizers[arm], t.grad_clip, torch.device("cpu"))
            if round_:
                rates[arm].append(tokens / (time.perf_counter() - start))
    return {k: statistics.median(v) for k, v in rates.items()} | {
        "ratio": _median_ratio(rates, "project", "peer"),
        "table": _median_ratio(rates, "project", "per-token"),
    }


def measure_scoring(cfg: ModelConfig, split: Split, rounds: int) -> dict:
    """Texts per second of score_shard: 1024 rows per-token, fitted rows per-token, fitted rows with the table."""
    torch.manual_seed(0)
    model = RNNClassifier(cfg)
    fitted = score_batch_size(model, int(split.lengths.max()))
    token_model = per_token(copy.deepcopy(model))
    arms = {"1024": (token_model, 1024), "fitted": (token_model, fitted), "table": (model, fitted)}
    rates: dict[str, list[float]] = {k: [] for k in arms}
    for round_ in range(rounds + 1):  # round 0 warms up
        for arm, (scored, rows) in arms.items():
            train_stage.score_batch_size = lambda model, steps, rows=rows: rows  # type: ignore[assignment]
            seconds = _timed(lambda m=scored: train_stage.score_shard(m, split, World(), torch.device("cpu")))
            if round_:
                rates[arm].append(len(split) / seconds)
    train_stage.score_batch_size = score_batch_size
    return {k: statistics.median(v) for k, v in rates.items()} | {
        "rows": fitted,
        "vs 1024": _median_ratio(rates, "table", "1024"),
        "vs fitted": _median_ratio(rates, "table", "fitted"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=24, help="batches per round and contender")
    parser.add_argument("--threads", type=int, default=None, help="default: train.threads")
    parser.add_argument("--part", choices=("all", "training", "scoring"), default="all")
    args = parser.parse_args()
    p = params_module.load(Path(args.params), ("train", "baseline", "birnn", "stacked"))
    torch.set_num_threads(args.threads or p.train.threads)
    bbc = load_split("train")
    vocab_size, num_classes = int(bbc.ids.max()) + 1, int(bbc.labels.max()) + 1
    vocab_size = max(vocab_size, 1000)
    corpora = {"BBC News": bbc, "short texts 5-100": short_texts(vocab_size, num_classes)}
    roofline = roofline_gflops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, sgemm roofline {roofline:.0f} GFLOP/s")
    header = (
        f"{'corpus':<18} {'model':<9} {'batch':>5} {'peer tok/s':>11} {'project tok/s':>14} "
        f"{'ratio':>6} {'roofline':>8} {'per-token tok/s':>16} {'table':>6}"
    )
    print(header)
    print("-" * len(header))
    for corpus, split in corpora.items() if args.part != "scoring" else ():
        for name in ("baseline", "birnn"):
            cfg = ModelConfig.from_params(p.model(name), vocab_size=vocab_size, num_classes=num_classes)
            for batch_size in sorted({p.train.batch_size or 32, 32, 128}):
                r = measure(cfg, split, batch_size, p.train, args.rounds, args.batches)
                share = r["project"] * flops_per_token(cfg) / (roofline * 1e9)
                print(
                    f"{corpus:<18} {name:<9} {batch_size:>5} {r['peer'] / 1e3:>10.0f}k "
                    f"{r['project'] / 1e3:>13.0f}k {r['ratio']:>5.2f}x {share:>7.1%} "
                    f"{r['per-token'] / 1e3:>15.0f}k {r['table']:>5.2f}x",
                    flush=True,
                )
    if args.part == "training":
        return
    print()
    header = (
        f"{'scoring (BBC train)':<20} {'model':<9} {'1024 rows, per-token':>21} {'fitted, per-token':>18} "
        f"{'fitted, table':>14} {'vs 1024':>8} {'vs fitted':>9}"
    )
    print(header)
    print("-" * len(header))
    for name in ("baseline", "birnn", "stacked"):
        cfg = ModelConfig.from_params(p.model(name), vocab_size=vocab_size, num_classes=num_classes)
        r = measure_scoring(cfg, bbc, args.rounds)
        print(
            f"{'':<20} {name:<9} {r['1024']:>21.0f} {r['fitted']:>12.0f} ({r['rows']:>3}) "
            f"{r['table']:>14.0f} {r['vs 1024']:>7.2f}x {r['vs fitted']:>8.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
