"""The evaluate stage's fastText reference on the tiny corpus: the scores file in the references'
format, the same bytes on a rerun (but for train_seconds), learning, probabilities placed by label
id, an honest parameter count, a quiet run, the temporary training file, and its params."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io as stdio
import json
from collections import Counter
from pathlib import Path

import fasttext
import numpy as np
import pytest
import yaml
from conftest import ROOT

from pipeline.core import params as params_module
from pipeline.core.errors import UserError
from pipeline.data.text import tokenise
from pipeline.stages import download, evaluate, prepare

SPLITS = ("train", "val", "test")
KEYS = ["seeds", "trainable_parameters", "served_seed", "train_seconds", "evaluation"]


def _json(path: str | Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


@pytest.fixture
def prepared(tiny_params, monkeypatch):
    """data/prepared for the tiny corpus. The references need no RNN, so evaluate scores no model."""
    with contextlib.redirect_stdout(stdio.StringIO()):
        download.run(tiny_params)
        prepare.run(tiny_params)
    monkeypatch.setattr(evaluate, "MODELS", ())
    return tiny_params


def _texts(split: str) -> list[dict]:
    return [json.loads(line) for line in Path(f"data/prepared/{split}.jsonl").read_text().splitlines()]


def test_scores_have_the_references_format(prepared, capfd):
    evaluate.run(prepared)
    out, err = capfd.readouterr()
    assert err == ""  # fastText's progress lines stay off
    assert [line.split(":")[0] for line in out.splitlines()] == ["reference", "reference_tokens", "fasttext"]
    labels = _json("data/prepared/labels.json")
    scores = _json("metrics/scores/fasttext.json")
    assert list(scores) == KEYS
    assert list(scores["seeds"]) == ["0"] and scores["served_seed"] == 0
    assert scores["evaluation"] == _json("metrics/predictions/stamp.json")["evaluation"]
    assert isinstance(scores["train_seconds"], float) and scores["train_seconds"] > 0
    reference = _json("metrics/scores/reference.json")["seeds"]["0"]
    assert list(scores["seeds"]["0"]) == list(reference) == ["train", "val", "test", "calibrated"]
    assert list(scores["seeds"]["0"]["calibrated"]) == list(reference["calibrated"])
    for split in ("train", "val", "test"):
        m = scores["seeds"]["0"][split]
        assert list(m) == list(reference[split])
        assert 0 <= m["accuracy"] <= 1 and 0 <= m["macro_f1"] <= 1 and m["loss"] > 0
        assert list(m["per_class"]) == labels
        truth = [labels.index(row["label"]) for row in _texts(split)]
        assert [c["support"] for c in m["per_class"].values()] == np.bincount(truth, minlength=len(labels)).tolist()
        assert np.asarray(m["confusion_matrix"]).shape == (len(labels), len(labels))
    predictions = _json("metrics/predictions/fasttext.json")
    assert [row["actual"] for row in predictions] == [row["label"] for row in _texts("test")]
    assert {row["predicted"] for row in predictions} <= set(labels)


def test_trainable_parameters_count_both_matrices(prepared):
    evaluate.run(prepared)
    p = prepared.evaluate.fasttext
    counts = Counter(token for row in _texts("train") for token in tokenise(row["text"]))
    counts["</s>"] = len(_texts("train"))  # fastText ends every line with this word
    words = sum(c >= p.min_count for c in counts.values())
    labels = len(_json("data/prepared/labels.json"))
    expected = (words + p.bucket) * p.dim + labels * p.dim
    assert _json("metrics/scores/fasttext.json")["trainable_parameters"] == expected


def test_a_rerun_gives_the_same_bytes_but_for_train_seconds(prepared):
    def outputs() -> dict[Path, bytes]:
        found = {path: path.read_bytes() for path in sorted(Path("metrics").rglob("*.json"))}
        scores = _json("metrics/scores/fasttext.json")
        assert "train_seconds" in scores
        del scores["train_seconds"]
        found[Path("metrics/scores/fasttext.json")] = json.dumps(scores).encode()
        return found

    evaluate.run(prepared)
    first = outputs()
    evaluate.run(prepared)
    assert outputs() == first


def test_fasttext_learns_the_tiny_corpus(prepared):
    evaluate.run(prepared)
    run = _json("metrics/scores/fasttext.json")["seeds"]["0"]
    # Three topics, so chance is a third; the topic words give each article away.
    assert run["train"]["accuracy"] >= 0.9
    assert run["val"]["accuracy"] >= 0.8
    assert run["test"]["accuracy"] >= 0.8
    # And confidently: an untrained model still ranks the topic words first, but its loss stays
    # at chance, log 3 = 1.10 (1.097 on val with lr 0.1).
    for split in SPLITS:
        assert run[split]["loss"] < 0.3


def test_probabilities_are_placed_by_label_id(tiny_params):
    # fastText orders labels by frequency: make label 2 the most frequent and 1 the rarest.
    rng = np.random.default_rng(0)
    lines, y = [], []
    for label, (word, n) in enumerate([("goal", 20), ("chip", 10), ("bank", 40)]):
        for _ in range(n):
            lines.append(" ".join([word, *rng.choice(["the", "a", "of", "and"], size=5)]))
            y.append(label)
    model, seconds = evaluate.fit_fasttext(lines, np.array(y), tiny_params.evaluate.fasttext)
    assert [int(name.removeprefix("__label__")) for name in model.labels] == [2, 0, 1]
    queries = ["goal of the", "chip and a", "bank the of", ""]
    proba = evaluate.fasttext_proba(model, queries, 3)
    assert proba.shape == (4, 3) and seconds > 0
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    best = [int(names[0].removeprefix("__label__")) for names in model.predict(queries, k=1)[0]]
    assert proba.argmax(axis=1).tolist() == best
    assert best[:3] == [0, 1, 2]


def test_the_training_file_lives_in_a_removed_folder(tiny_params, monkeypatch):
    seen: list[Path] = []
    train = fasttext.train_supervised

    def spy(path, **kwargs):
        seen.append(Path(path))
        assert Path(path).read_text(encoding="utf-8").splitlines()[0].startswith("__label__")
        if len(seen) == 2:
            raise RuntimeError("Encountered NaN.")
        return train(path, **kwargs)

    monkeypatch.setattr(fasttext, "train_supervised", spy)
    lines, y = ["goal team", "chip code", "bank tax"] * 4, np.array([0, 1, 2] * 4)
    evaluate.fit_fasttext(lines, y, tiny_params.evaluate.fasttext)
    assert not seen[0].parent.exists()
    with pytest.raises(UserError, match=r"^evaluate\.fasttext: training failed \(Encountered NaN\.\); lower its lr$"):
        evaluate.fit_fasttext(lines, y, tiny_params.evaluate.fasttext)
    assert not seen[1].parent.exists()


def test_training_follows_the_params(tiny_params):
    lines, y = ["goal team win", "chip code app", "bank tax trade"] * 8, np.array([0, 1, 2] * 8)
    p = tiny_params.evaluate.fasttext
    first, _ = evaluate.fit_fasttext(lines, y, p)
    again, _ = evaluate.fit_fasttext(lines, y, p)
    other, _ = evaluate.fit_fasttext(lines, y, dataclasses.replace(p, seed=p.seed + 1))
    assert np.array_equal(first.get_output_matrix(), again.get_output_matrix())
    assert not np.array_equal(first.get_output_matrix(), other.get_output_matrix())
    assert first.get_input_matrix().shape == (len(first.words) + p.bucket, p.dim)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda e: e.pop("fasttext"), "evaluate.fasttext: missing key (a mapping of keys to values)"),
        (lambda e: e["fasttext"].pop("dim"), "evaluate.fasttext.dim: missing key (an integer in [1, 1024])"),
        (lambda e: e["fasttext"].update(wordNgrams=2), "evaluate.fasttext.wordNgrams: unknown key (allowed: dim,"),
        (lambda e: e["fasttext"].update(lr=0.0), "evaluate.fasttext.lr: must be a number in (0, 10], got 0.0"),
    ],
)
def test_the_fasttext_section_is_validated(change, expected):
    raw = copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8")))
    change(raw["evaluate"])
    with pytest.raises(params_module.ParamsError) as err:
        params_module.parse(raw)
    assert expected in str(err.value)
