"""A checkpoint as a classifier: the model with the vocabulary, labels and truncation it was trained
with, and the temperature its probabilities are scaled by.

Shared by predict, which labels texts with it, and export, which turns it into a file that
serves without this package. A checkpoint carries all of it, so nothing else is read. A served
checkpoint (models/<model>.pt, from publish) holds the temperature fitted on the validation
split; a run's own checkpoint has none, and serves with temperature 1 (its raw probabilities).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.core import files, layout
from pipeline.core.errors import UserError
from pipeline.core.params import MODELS
from pipeline.data.text import PAD, UNK, Vocab
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
    ckpt = checkpoints.load_checkpoint(checkpoint)
    tokens = ckpt.get("vocab")
    if tokens is None:
        raise UserError(f"{checkpoint}: holds no vocabulary (saved by an older version); retrain it with `dvc repro`")
    if not isinstance(tokens, list) or tokens[:2] != [PAD, UNK] or not all(isinstance(t, str) for t in tokens):
        raise UserError(f"{checkpoint}: its vocabulary is malformed (expected tokens starting with {PAD}, {UNK})")
    vocab = Vocab(tuple(tokens))
    if vocab_path is not None:
        try:
            digest = files.sha256_file(vocab_path)
        except OSError as exc:
            raise UserError(f"{vocab_path}: cannot read the vocabulary ({exc.strerror or exc})") from None
        if digest != ckpt["vocab_sha256"]:
            raise UserError(f"{checkpoint}: was trained with another vocabulary than {vocab_path}")
    try:
        cfg = ModelConfig(**ckpt["config"])
        model = RNNClassifier(cfg)
        model.load_state_dict(ckpt["model"])
        labels = tuple(ckpt["labels"])
        max_len, keep = int(ckpt["encoding"]["max_len"]), ckpt["encoding"]["keep"]
    except KeyError as exc:
        raise UserError(f"{checkpoint}: has no {exc.args[0]!r} entry; run `dvc repro`") from None
    except (TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{checkpoint}: not a checkpoint this version can use ({first}); run `dvc repro`") from None
    if len(vocab) != cfg.vocab_size:
        raise UserError(
            f"{checkpoint}: its vocabulary has {len(vocab)} words but the model {cfg.vocab_size}; run `dvc repro`"
        )
    if (
        len(labels) != cfg.num_classes
        or not all(isinstance(label, str) for label in labels)
        or max_len < 1
        or keep not in ("head", "tail")
    ):
        raise UserError(f"{checkpoint}: labels or encoding do not fit the model; run `dvc repro`")
    temperature = ckpt.get("temperature", 1.0)
    if (
        not isinstance(temperature, (int, float))
        or isinstance(temperature, bool)
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise UserError(
            f"{checkpoint}: its temperature must be a positive number, got {temperature!r}; run `dvc repro`"
        )
    model.eval().to(device or torch.device("cpu"))
    return Classifier(model, vocab, labels, max_len, keep, float(temperature))
