"""A checkpoint as a classifier: the model with the vocabulary, labels and truncation it was trained
with, and the temperature its probabilities are scaled by.

Shared by predict, which labels texts with it, and export, which turns it into a file that
serves without this package. A checkpoint carries all of it, so nothing else is read. A served
checkpoint (models/<model>.pt, from publish) holds the temperature fitted on the validation
split; a run's own checkpoint has none, and serves with temperature 1 (its raw probabilities).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.core import files, layout
from pipeline.core.errors import UserError
from pipeline.core.params import MODELS
from pipeline.data.text import Vocab
from pipeline.model import checkpoints
from pipeline.model.network import ModelConfig, RNNClassifier


@dataclass(frozen=True)
class Classifier:
    """A checkpoint's model with the vocabulary, labels and truncation it was trained with."""

    model: RNNClassifier
    vocab: Vocab
    labels: tuple[str, ...]
    max_len: int
    keep: str
    temperature: float = 1.0  # probabilities are softmax(logits / temperature)


def checkpoint_path(model: str) -> Path:
    """A model's name (a section of params.yaml, e.g. birnn) is its served checkpoint; any other value is a path."""
    return layout.served_checkpoint(model) if model in MODELS else Path(model)


def load_classifier(checkpoint: Path, vocab_path: Path | None = None, device: torch.device | None = None) -> Classifier:
    """The checkpoint's model in eval mode on `device` (default the CPU) with its own vocabulary.

    `vocab_path`, if given, must be the vocabulary file the checkpoint was trained with.
    """
    ckpt = checkpoints.load_checkpoint(checkpoint)  # validated: every field has its type, range and shape
    tokens = ckpt.get("vocab")
    if tokens is None:
        raise UserError(f"{checkpoint}: holds no vocabulary (saved by an older version); retrain it with `dvc repro`")
    vocab = Vocab(tuple(tokens))
    if vocab.sha256() != ckpt["vocab_sha256"]:
        # The vocabulary is what predict reads with: it must be the one the model was trained with.
        raise UserError(
            f"{checkpoint}: vocab: does not match its vocab_sha256 (edited after training?); run `dvc repro`"
        )
    if vocab_path is not None:
        try:
            digest = files.sha256_file(vocab_path)
        except OSError as exc:
            raise UserError(f"{vocab_path}: cannot read the vocabulary ({exc.strerror or exc})") from None
        if digest != ckpt["vocab_sha256"]:
            raise UserError(f"{checkpoint}: was trained with another vocabulary than {vocab_path}")
    try:
        model = RNNClassifier(ModelConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{checkpoint}: not a checkpoint this version can use ({first}); run `dvc repro`") from None
    encoding = ckpt["encoding"]
    model.eval().to(device or torch.device("cpu"))
    temperature = float(ckpt.get("temperature", 1.0))
    return Classifier(model, vocab, tuple(ckpt["labels"]), encoding["max_len"], encoding["keep"], temperature)
