"""evaluate stage on the tiny corpus: metrics shape, agreement with sklearn, the reference, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix
from typer.testing import CliRunner

from pipeline import download, evaluate, prepare, train
from pipeline.cli import app
from pipeline.io import load_checkpoint
from pipeline.models import ModelConfig, RNNClassifier, predict_logits

OUTPUTS = ("baseline", "birnn", "reference")
SPLITS = ("train", "val", "test")


@pytest.fixture
def trained(tiny_params):
    """The tiny project after download, prepare and both trainings; cwd is its root."""
    download.run(tiny_params)
    prepare.run(tiny_params)
    for name in ("baseline", "birnn"):
        train.run(tiny_params, name)
    return tiny_params


def _json(path: str):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def test_metrics_have_every_split_metric_and_class(trained):
    evaluate.run(trained)
    labels = _json("data/prepared/labels.json")
    sizes = {s: n["size"] for s, n in _json("data/prepared/stats.json")["splits"].items()}
    for name in OUTPUTS:
        metrics = _json(f"metrics/{name}.json")
        assert set(SPLITS) <= set(metrics)
        assert metrics["trainable_parameters"] > 0
        for split in SPLITS:
            m = metrics[split]
            for key in ("accuracy", "macro_f1"):
                assert 0 <= m[key] <= 1
            assert m["loss"] > 0
            assert list(m["per_class"]) == labels
            assert all(set(c) == {"precision", "recall", "f1", "support"} for c in m["per_class"].values())
            cm = np.asarray(m["confusion_matrix"])
            assert cm.shape == (len(labels), len(labels))
            assert cm.sum() == sizes[split]
            assert [c["support"] for c in m["per_class"].values()] == cm.sum(1).tolist()
        predictions = _json(f"metrics/predictions/{name}.json")
        assert len(predictions) == sizes["test"]
        assert all(set(row) == {"actual", "predicted"} for row in predictions)
        assert {row["actual"] for row in predictions} <= set(labels)


def test_scores_agree_with_sklearn_and_with_the_checkpoint(trained):
    evaluate.run(trained)
    labels = _json("data/prepared/labels.json")
    test = np.load("data/prepared/test.npz")
    actual = [labels[k] for k in test["labels"]]
    for name in ("baseline", "birnn"):
        m = _json(f"metrics/{name}.json")["test"]
        rows = _json(f"metrics/predictions/{name}.json")
        assert [r["actual"] for r in rows] == actual  # test split, in data order
        predicted = [r["predicted"] for r in rows]
        assert m["accuracy"] == pytest.approx(accuracy_score(actual, predicted), abs=1e-6)
        assert m["confusion_matrix"] == confusion_matrix(actual, predicted, labels=labels).tolist()

        # Independently: the saved model's own logits give the same predictions and loss.
        ckpt = load_checkpoint(f"models/{name}.pt")
        model = RNNClassifier(ModelConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["model"])
        logits = predict_logits(model, torch.from_numpy(test["ids"]), torch.from_numpy(test["lengths"]), 4)
        assert [labels[k] for k in logits.argmax(1).tolist()] == predicted
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(test["labels"])).item()
        assert m["loss"] == pytest.approx(loss, abs=1e-5)


def test_reference_model_learns_the_tiny_corpus(trained):
    evaluate.run(trained)
    reference = _json("metrics/reference.json")
    # The topic words separate the tiny corpus; a working TF-IDF + logistic regression finds them.
    assert reference["train"]["accuracy"] >= 0.9
    assert reference["val"]["accuracy"] >= 0.8
    assert reference["test"]["accuracy"] >= 0.8
    assert reference["trainable_parameters"] > 0


def test_reference_sees_the_pipelines_tokens(tiny_params):
    texts = ["Don\u2019t panic, the UK's bank", "A chip, a robot: don't code"]
    vectorizer, _ = evaluate.fit_reference(texts, np.array([0, 1]), tiny_params.evaluate.reference)
    vocabulary = set(vectorizer.vocabulary_)
    # sklearn's default pattern would split "don't" and drop one-letter tokens such as "a".
    assert {"don't", "uk's", "a", "a chip", "don't code"} <= vocabulary
    assert "don" not in vocabulary and "Don\u2019t" not in vocabulary


def test_same_inputs_give_identical_bytes(trained):
    evaluate.run(trained)
    paths = [Path(f"metrics/{n}.json") for n in OUTPUTS] + [
        Path(f"metrics/predictions/{n}.json") for n in OUTPUTS
    ]
    first = {p: p.read_bytes() for p in paths}
    evaluate.run(trained)
    assert {p: p.read_bytes() for p in paths} == first


def _other_vocabulary():
    path = Path("data/prepared/vocab.json")
    vocab = json.loads(path.read_text())
    vocab["tokens"].append("zzz-not-trained-on")
    path.write_text(json.dumps(vocab))


def _other_labels():
    path = Path("data/prepared/labels.json")
    path.write_text(json.dumps([f"x{name}" for name in json.loads(path.read_text())]))


def _no_checkpoint():
    Path("models/birnn.pt").unlink()


@pytest.mark.parametrize(
    "damage, message",
    [
        (_other_vocabulary, "another vocabulary"),
        (_other_labels, "other labels"),
        (_no_checkpoint, "not found"),
    ],
)
def test_refuses_a_checkpoint_from_other_prepared_data(trained, damage, message):
    damage()
    result = CliRunner().invoke(app, ["evaluate"])
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    if damage is not _no_checkpoint:
        assert "retrain with `dvc repro`" in result.stderr
    assert not Path("metrics/baseline.json").exists()  # nothing is published on refusal
