"""Prepared splits on disk -> tensors and batches, and whole-split scoring; shared by train and evaluate.

Batches are index tensors into a split held in memory. Training batches come from a seeded
length-bucketing sampler: texts of similar length share a batch, so a batch is cut to its
longest text and little time goes into padding; the order of the batches is shuffled.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pipeline.core import layout
from pipeline.core.errors import UserError
from pipeline.data import arrays

if TYPE_CHECKING:
    from pipeline.model.network import RNNClassifier

PREPARED = layout.PREPARED
BUCKET_BATCHES = 50  # batches per bucketing pool: texts are sorted by length within a pool
# Scoring runs in batches whose recurrent states, (D, T, B, H) floats per layer, stay in
# cache; more rows per batch only spill to memory. On the BBC train split (2 threads), these
# batches against 1024 rows: baseline 1.94x, BiRNN 1.69x, stacked 1.74x the texts per second
# (benchmarks/train_throughput.py --part scoring, medians of 9 interleaved rounds).
SCORE_STATE_BYTES = 12 << 20


@dataclass(frozen=True)
class Split:
    ids: torch.Tensor  # (N, T) int64, right-padded with PAD_ID
    lengths: torch.Tensor  # (N,) int64
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows at `index`, cut to their longest text: padding beyond it is never read."""
        lengths = self.lengths[index]
        return self.ids[index, : int(lengths.max())], lengths, self.labels[index]


def load_split(
    name: str,
    folder: Path = PREPARED,
    *,
    vocab_size: int | None = None,
    num_classes: int | None = None,
    max_len: int | None = None,
) -> Split:
    """A prepared split, its arrays checked once (arrays.load): ids within the vocabulary, labels
    within the classes and the width `max_len`, where the caller gives them."""
    bounds = {"vocab_size": vocab_size, "num_classes": num_classes, "max_len": max_len}
    loaded = arrays.load(folder / f"{name}.npz", ("ids", "lengths", "labels"), **bounds)
    split = Split(*(torch.from_numpy(loaded[k]).long() for k in ("ids", "lengths", "labels")))
    if len(split) == 0:
        raise UserError(f"{folder / name}.npz: the {name} split is empty")
    return split


def bucketed_batches(lengths: torch.Tensor, batch_size: int | None, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch of shuffled batches (index tensors) of texts of similar length.

    A seeded permutation is cut into pools of BUCKET_BATCHES batches; each pool is sorted
    by length (stably, so equal lengths keep the random order) and cut into batches, and
    the batches of all pools are shuffled. `batch_size` None is one full batch.
    """
    order = torch.randperm(len(lengths), generator=generator)
    if batch_size is None or batch_size >= len(lengths):
        return [order]
    pool = batch_size * BUCKET_BATCHES
    batches: list[torch.Tensor] = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[torch.sort(lengths[chunk], descending=True, stable=True).indices]
        batches.extend(chunk.split(batch_size))
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


def by_length(lengths: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Index batches in order of length, for scoring: the fewest padded steps."""
    yield from torch.sort(lengths, descending=True, stable=True).indices.split(batch_size)


def score_batch_size(model: RNNClassifier, steps: int) -> int:
    """Rows per scoring batch for texts of up to `steps` tokens: a power of two, 16 to 1024."""
    cfg = model.cfg
    row = (2 if cfg.bidirectional else 1) * cfg.num_layers * cfg.hidden_dim * max(steps, 1) * 4
    rows = max(SCORE_STATE_BYTES // row, 16)
    return min(1 << (rows.bit_length() - 1), 1024)


@torch.inference_mode()
def split_logits(model: RNNClassifier, split: Split, batch_size: int) -> torch.Tensor:
    """Eval-mode logits (N, C) on the CPU, in the split's order, computed on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    logits = torch.empty(len(split), model.cfg.num_classes)
    for index in by_length(split.lengths, batch_size):
        ids, lengths, _ = split.batch(index)
        logits[index] = model(ids.to(device, non_blocking=True), lengths).float().cpu()
    return logits
