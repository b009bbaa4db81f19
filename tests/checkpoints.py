"""Checkpoints of randomly initialised models, saved the way train saves them: no training needed."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from pipeline.data.text import PAD, UNK, Vocab
from pipeline.model import checkpoints
from pipeline.model.network import ModelConfig, RNNClassifier

WORDS = "match goal team bank market shares chip phone don't zürich's 3 5 full width".split()
LABELS = ("money", "sport", "tech")


def save_random_checkpoint(
    path: Path,
    tokens: tuple[str, ...] = (PAD, UNK, *WORDS),
    labels: tuple[str, ...] = LABELS,
    max_len: int = 8,
    keep: str = "head",
    seed: int = 0,
    temperature: float | None = None,
    **architecture: object,
) -> RNNClassifier:
    """Save a seeded random model of `architecture` (ModelConfig fields) with its vocabulary, and
    `temperature` as publish writes it into a served checkpoint (none: a run's checkpoint); return it."""
    arch = {"embed_dim": 6, "hidden_dim": 5, **architecture}
    cfg = ModelConfig(vocab_size=len(tokens), num_classes=len(labels), **arch)  # type: ignore[arg-type]
    torch.manual_seed(seed)
    model = RNNClassifier(cfg).eval()
    served = {} if temperature is None else {"temperature": temperature}
    checkpoints.save_checkpoint(
        path,
        served
        | {
            "model": model.state_dict(),
            "config": asdict(cfg),
            "labels": list(labels),
            "vocab": list(tokens),
            "vocab_sha256": Vocab(tokens).sha256(),
            "encoding": {"max_len": max_len, "keep": keep},
            "epoch": 1,
            "best_val_loss": 1.0,
            "seed": seed,
        },
    )
    return model
