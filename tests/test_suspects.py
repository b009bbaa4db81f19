"""suspects stage: cleanlab on out-of-fold TF-IDF probabilities finds deliberately flipped labels
in a tiny training split, lists them with their given and suggested label, and copes with any
split prepare can write (classes smaller than the folds, one article a class)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TOPIC_WORDS, make_corpus
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.stages import suspects

LABELS = sorted(TOPIC_WORDS)  # money, sport, tech


def _write_train(docs: list[dict]) -> None:
    folder = Path("data/prepared")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels.json").write_text(json.dumps(sorted({d["label"] for d in docs})))
    (folder / "train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")


def _run() -> dict:
    result = CliRunner().invoke(app, ["suspects"])
    assert result.exit_code == 0, result.output
    return json.loads(Path("metrics/suspects.json").read_text(encoding="utf-8"))


def test_a_flipped_label_is_found_with_the_label_it_should_have(tiny_project):
    docs = make_corpus(n_per_class=20, seed=3)
    flipped = {}
    for k, (given, true) in {5: ("tech", "sport"), 11: ("sport", "money")}.items():
        docs[k] = {"text": " ".join(TOPIC_WORDS[true] * 2) + ".", "label": given}
        flipped[k + 1] = (given, true)  # its line in train.jsonl
    _write_train(docs)
    found = _run()
    assert found["searched"] and found["articles"] == len(docs) and found["folds_used"] == 5
    listed = {s["line"]: s for s in found["suspects"]}
    for line, (given, true) in flipped.items():
        assert line in listed, found["suspects"]
        assert (listed[line]["given"], listed[line]["suggested"]) == (given, true)
        assert listed[line]["given_probability"] < listed[line]["suggested_probability"]
        assert listed[line]["text"] == docs[line - 1]["text"][:200]
    assert found["count"] == len(found["suspects"]) <= len(flipped) + 2  # few clean articles doubted
    # Nothing is relabelled: the split is as it was.
    assert [json.loads(line) for line in Path("data/prepared/train.jsonl").read_text().splitlines()] == docs
    again = Path("metrics/suspects.json").read_bytes()
    _run()
    assert Path("metrics/suspects.json").read_bytes() == again  # same params, same bytes


def test_a_clean_split_has_no_suspect_and_small_classes_do_not_break_it(tiny_project):
    docs = [d for d in make_corpus(n_per_class=12, seed=1) if d["label"] != "tech"]
    docs += [{"text": "chip computer phone network data.", "label": "tech"}] * 2 + [
        {"text": "software app code robot internet.", "label": "tech"}
    ]  # three articles: fewer than the five folds
    _write_train(docs)
    found = _run()
    assert found["searched"] and found["folds_used"] == 5
    assert 0 <= found["count"] == len(found["suspects"])
    assert all(s["given"] in LABELS and s["suggested"] in LABELS for s in found["suspects"])


def test_one_article_a_class_cannot_be_cross_validated_and_says_so(tiny_project):
    _write_train([{"text": "goal match team", "label": "sport"}, {"text": "bank market", "label": "money"}])
    found = _run()
    assert found["searched"] is False and found["count"] == 0 and found["suspects"] == []
    assert "single training article" in found["reason"]


def test_fewer_articles_than_folds_use_fewer_folds(tiny_project):
    docs = [{"text": "goal match team win", "label": "sport"}] * 3 + [{"text": "bank market shares", "label": "money"}]
    _write_train(docs)
    found = _run()
    assert found["searched"] and found["folds_used"] == 3


def test_a_fold_without_a_second_class_predicts_the_one_it_saw(tiny_project, tiny_params):
    import numpy as np

    texts = ["goal match", "goal team", "bank market"]
    proba, folds = suspects.out_of_fold_proba(
        texts, np.array([0, 0, 1]), 2, tiny_params.evaluate.reference, tiny_params.suspects
    )
    assert folds == 2 and proba.sum(1) == pytest.approx(np.ones(3))


def test_missing_training_texts_are_one_line_exit_2(tiny_project):
    result = CliRunner().invoke(app, ["suspects"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: data/prepared/labels.json: label list not found")
    assert len(result.stderr.strip().splitlines()) == 1 and not Path("metrics").exists()
