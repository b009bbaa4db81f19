"""Shared fixtures: a tiny three-class corpus and tiny params, so every stage runs in seconds."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
import yaml

from pipeline.core import params as params_module

ROOT = Path(__file__).resolve().parents[1]

TOPIC_WORDS = {
    "sport": "match goal team coach league player season win score striker".split(),
    "tech": "software chip computer phone network internet data robot code app".split(),
    "money": "bank market shares profit economy investor price trade growth tax".split(),
}
FILLER = "the a of and to in on for with said it was is at by".split()


def pipeline_steps() -> list[list[str]]:
    """The `pipeline` command lines of every stage, in dvc.yaml's order (every model of params.MODELS)."""
    return [
        ["download"],
        ["prepare"],
        *(["train", m] for m in params_module.MODELS),  # every seed of each, as dvc.yaml's train stage
        ["evaluate"],
        *(["publish", m] for m in params_module.MODELS),  # after evaluate: it serves the fitted temperature
        ["suspects"],
        ["compare"],
    ]


def make_corpus(n_per_class: int = 16, seed: int = 0) -> list[dict[str, str]]:
    """Short documents whose topic words make the label learnable, mixed with filler."""
    rng = random.Random(seed)
    docs = []
    for label, words in TOPIC_WORDS.items():
        for _ in range(n_per_class):
            length = rng.randint(8, 30)
            tokens = [rng.choice(words) if rng.random() < 0.5 else rng.choice(FILLER) for _ in range(length)]
            docs.append({"text": " ".join(tokens).capitalize() + ".", "label": label})
    rng.shuffle(docs)
    return docs


def tiny_params_dict(corpus_path: str = "corpus.jsonl") -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw = copy.deepcopy(raw)
    raw["download"].update(source="jsonl", path=corpus_path)
    raw["prepare"].update(min_freq=1, max_vocab=500, max_len=24)
    raw["train"].update(seeds=[7, 8], batch_size=8, max_epochs=3, patience=2, threads=1)
    for name in params_module.MODELS:
        raw[name].update(embed_dim=8, hidden_dim=8)
    raw["evaluate"]["reference"].update(max_features=500)
    return raw


@pytest.fixture
def tiny_project(tmp_path, monkeypatch):
    """A working folder holding corpus.jsonl and params.yaml with tiny settings; cwd is set to it."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in make_corpus()), encoding="utf-8")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(), sort_keys=False))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def tiny_params(tiny_project):
    return params_module.load(tiny_project / "params.yaml")
