"""evaluate stage on the tiny corpus: every seed of every model, the references, agreement with
sklearn and with each run's checkpoint, what reference_tokens reads, calibration (each run's
temperature, ECE and NLL before and after, the served seed's calibration file), refusals
(fastText's own checks: test_fasttext.py)."""

from __future__ import annotations

import contextlib
import hashlib
import io as stdio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import make_corpus, tiny_params_dict
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core import layout
from pipeline.core import params as params_module
from pipeline.data.splits import load_split
from pipeline.data.text import UNK, Vocab, tokenise
from pipeline.model import calibration
from pipeline.model.checkpoints import load_checkpoint
from pipeline.model.network import ModelConfig, RNNClassifier, predict_logits
from pipeline.stages import download, evaluate, prepare, train

MODELS = params_module.MODELS
REFERENCES = ("reference", "reference_tokens", "fasttext")
TFIDF = ("reference", "reference_tokens")
SEEDS = (7, 8)  # conftest's tiny train.seeds
SPLITS = ("train", "val", "test")
MAX_LEN = 24  # conftest's tiny prepare.max_len


def _train_everything(root: Path, params) -> None:
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdio.StringIO()):
        mp.chdir(root)
        download.run(params)
        prepare.run(params)
        for name in MODELS:
            train.run(params, name)


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory) -> Path:
    """data/prepared and every run's checkpoint (every model x 2 seeds) for the tiny corpus."""
    root = tmp_path_factory.mktemp("trained")
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in make_corpus()))
    _train_everything(root, params_module.parse(tiny_params_dict()))
    return root


@pytest.fixture
def trained(tiny_project, tiny_params, trained_once):
    """A fresh copy of the trained project for each test; cwd is its root."""
    for folder in ("data/prepared", "models"):
        shutil.copytree(trained_once / folder, tiny_project / folder)
    return tiny_params


def _json(path: str | Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _set_seeds(seeds) -> params_module.Params:
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["train"]["seeds"] = list(seeds)
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return params_module.load("params.yaml")


def _run_logits(name: str, seed: int, split: str) -> torch.Tensor:
    """The logits of one run's own checkpoint on a prepared split, computed here independently."""
    ckpt = load_checkpoint(layout.run_checkpoint(name, seed))
    model = RNNClassifier(ModelConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    data = np.load(f"data/prepared/{split}.npz")
    return predict_logits(model, torch.from_numpy(data["ids"]), torch.from_numpy(data["lengths"]), 4)


def test_scores_cover_every_seed_of_every_model_and_both_references(trained):
    evaluate.run(trained)
    labels = _json("data/prepared/labels.json")
    sizes = {s: n["size"] for s, n in _json("data/prepared/stats.json")["splits"].items()}
    assert sorted(p.name for p in Path("metrics/scores").iterdir()) == sorted(f"{n}.json" for n in MODELS + REFERENCES)
    assert sorted(p.name for p in Path("metrics/predictions").iterdir()) == sorted(
        [*(f"{n}.json" for n in MODELS + REFERENCES), "stamp.json"]
    )
    assert sorted(p.name for p in Path("metrics/calibration").iterdir()) == sorted(
        f"{n}.json" for n in MODELS + REFERENCES
    )
    stamp = _json("metrics/predictions/stamp.json")["evaluation"]
    for name in MODELS + REFERENCES:
        scores = _json(f"metrics/scores/{name}.json")
        expected_seeds = ["0"] if name in REFERENCES else ["7", "8"]
        assert list(scores["seeds"]) == expected_seeds
        assert scores["evaluation"] == stamp
        if name in MODELS:  # each run names the checkpoint it scored (pipeline.core.stamps)
            assert scores["checkpoint_sha256"] == {
                s: hashlib.sha256(layout.run_checkpoint(name, int(s)).read_bytes()).hexdigest() for s in expected_seeds
            }
        assert scores["served_seed"] == int(expected_seeds[0])
        assert scores["trainable_parameters"] > 0
        for run in scores["seeds"].values():
            assert list(run) == [*SPLITS, "calibrated"]
            calibrated = run["calibrated"]
            assert list(calibrated) == ["temperature", "val", "test"] and calibrated["temperature"] > 0
            assert all(set(calibrated[s]) == {"loss", "ece"} for s in ("val", "test"))
            for split in SPLITS:
                m = run[split]
                for key in ("accuracy", "macro_f1", "ece"):
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
        assert all(set(row) == {"actual", "predicted", "probability"} for row in predictions)
        assert all(0 < row["probability"] <= 1 for row in predictions)
        assert {row["actual"] for row in predictions} <= set(labels)
    for name in MODELS:
        ckpt = load_checkpoint(layout.run_checkpoint(name, 7))
        n = sum(v.numel() for v in ckpt["model"].values())
        assert _json(f"metrics/scores/{name}.json")["trainable_parameters"] == n


def test_each_seed_is_scored_with_its_own_checkpoint(trained):
    evaluate.run(trained)
    labels = _json("data/prepared/labels.json")
    for split in SPLITS:
        y = np.load(f"data/prepared/{split}.npz")["labels"]
        for name in MODELS:
            scores = _json(f"metrics/scores/{name}.json")["seeds"]
            losses = []
            for seed in SEEDS:
                logits = _run_logits(name, seed, split)
                proba = torch.softmax(logits.double(), 1).numpy()
                m = scores[str(seed)][split]
                predicted = proba.argmax(1)
                assert m["accuracy"] == pytest.approx(accuracy_score(y, predicted), abs=1e-6)
                assert m["loss"] == pytest.approx(log_loss(y, proba, labels=range(len(labels))), abs=1e-5)
                assert m["macro_f1"] == pytest.approx(
                    f1_score(y, predicted, average="macro", labels=range(len(labels)), zero_division=0), abs=1e-6
                )
                assert m["confusion_matrix"] == confusion_matrix(y, predicted, labels=range(len(labels))).tolist()
                losses.append(m["loss"])
            assert losses[0] != losses[1], (name, split)  # two runs, not one scored twice


@pytest.mark.parametrize("seeds", [(7, 8), (8, 7)])
def test_predictions_are_the_served_seeds_on_the_test_split(trained, seeds):
    params = _set_seeds(seeds)
    evaluate.run(params)
    labels = _json("data/prepared/labels.json")
    actual = [labels[k] for k in np.load("data/prepared/test.npz")["labels"]]
    for name in MODELS:
        assert _json(f"metrics/scores/{name}.json")["served_seed"] == seeds[0]
        assert list(_json(f"metrics/scores/{name}.json")["seeds"]) == [str(s) for s in seeds]
        rows = _json(f"metrics/predictions/{name}.json")
        assert [r["actual"] for r in rows] == actual  # test split, in data order
        served = [labels[k] for k in _run_logits(name, seeds[0], "test").argmax(1).tolist()]
        assert [r["predicted"] for r in rows] == served


def test_only_the_seeds_in_params_are_scored(trained):
    for name in MODELS:
        layout.run_checkpoint(name, 8).unlink()  # a seed no longer in train.seeds need not exist
    evaluate.run(_set_seeds([7]))
    for name in MODELS:
        assert list(_json(f"metrics/scores/{name}.json")["seeds"]) == ["7"]


def test_both_references_learn_the_tiny_corpus(trained):
    evaluate.run(trained)
    for name in TFIDF:
        scores = _json(f"metrics/scores/{name}.json")
        run = scores["seeds"]["0"]
        # The topic words separate the tiny corpus; a working TF-IDF + logistic regression finds them.
        assert run["train"]["accuracy"] >= 0.9
        assert run["val"]["accuracy"] >= 0.8
        assert run["test"]["accuracy"] >= 0.8
        assert scores["trainable_parameters"] > 0


def test_reference_sees_the_pipelines_tokens(tiny_params):
    texts = ["Don\u2019t panic, the UK's bank", "A chip, a robot: don't code"]
    vectorizer, _ = evaluate.fit_reference(texts, np.array([0, 1]), tiny_params.evaluate.reference)
    vocabulary = set(vectorizer.vocabulary_)
    # sklearn's default pattern would split "don't" and drop one-letter tokens such as "a".
    assert {"don't", "uk's", "a", "a chip", "don't code"} <= vocabulary
    assert "don" not in vocabulary and "Don\u2019t" not in vocabulary


def test_seen_tokens_are_the_truncated_vocabulary_mapped_words(trained):
    vocab = Vocab.load("data/prepared/vocab.json")
    known = set(vocab.tokens)
    lengths = []
    for split in SPLITS:
        texts = [json.loads(line)["text"] for line in Path(f"data/prepared/{split}.jsonl").read_text().splitlines()]
        seen = evaluate.seen_tokens(load_split(split), vocab)
        expected = [[t if t in known else UNK for t in tokenise(text)][:MAX_LEN] for text in texts]
        assert seen == expected
        lengths += [len(tokenise(t)) for t in texts]
    assert max(lengths) > MAX_LEN  # the tiny corpus does get truncated


def test_reference_tokens_never_reads_past_max_len(tiny_project, monkeypatch):
    """A word only ever after the 24th token is in the whole-article reference, never in reference_tokens;
    a word outside the RNNs' vocabulary reaches reference_tokens only as <unk>."""
    filler = " ".join(["the"] * MAX_LEN)
    docs = [{**d, "text": f"{d['text']} {filler} zebra"} for d in make_corpus()]
    Path("corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    raw = tiny_params_dict()
    raw["prepare"]["max_vocab"] = 20  # the rarer topic words become <unk>
    raw["train"]["seeds"] = [7]
    params = params_module.parse(raw)
    _train_everything(tiny_project, params)

    fitted = {}
    original = evaluate.fit_reference

    def spy(texts, y, p, pretokenised=False):
        vectorizer, classifier = original(texts, y, p, pretokenised)
        fitted["reference_tokens" if pretokenised else "reference"] = (texts, vectorizer)
        return vectorizer, classifier

    monkeypatch.setattr(evaluate, "fit_reference", spy)
    with contextlib.redirect_stdout(stdio.StringIO()):
        evaluate.run(params)

    vocab = _json("data/prepared/vocab.json")["tokens"]
    whole = set(fitted["reference"][1].vocabulary_)
    seen_texts, seen_vectorizer = fitted["reference_tokens"]
    seen = set(seen_vectorizer.vocabulary_)
    assert len(vocab) == 20
    assert "zebra" in vocab and "zebra" in whole  # in every training text, so among the 20 words kept
    assert not any("zebra" in feature.split() for feature in seen)
    assert all(len(tokens) <= MAX_LEN for tokens in seen_texts)
    assert UNK in seen and UNK not in whole
    assert {f.split()[0] for f in seen} <= set(vocab)
    assert any(word not in vocab for word in {f.split()[0] for f in whole})
    assert set(_json("metrics/scores/reference_tokens.json")["seeds"]) == {"0"}


def _untimed(path: Path) -> bytes:
    """A file's bytes; fastText's training wall time, the one field that may differ, taken out."""
    if path.name != "fasttext.json" or path.parent.name != "scores":
        return path.read_bytes()
    return json.dumps({k: v for k, v in _json(path).items() if k != "train_seconds"}).encode()


def test_same_inputs_give_identical_bytes(trained):
    evaluate.run(trained)
    paths = sorted(Path("metrics").rglob("*.json"))
    assert len(paths) == 3 * len(MODELS + REFERENCES) + 1  # and the predictions' stamp.json
    first = {p: _untimed(p) for p in paths}
    evaluate.run(trained)
    assert {p: _untimed(p) for p in sorted(Path("metrics").rglob("*.json"))} == first


def _other_vocabulary():
    path = Path("data/prepared/vocab.json")
    vocab = json.loads(path.read_text())
    vocab["tokens"].append("zzz-not-trained-on")
    path.write_text(json.dumps(vocab))


def _other_labels():
    path = Path("data/prepared/labels.json")
    path.write_text(json.dumps([f"x{name}" for name in json.loads(path.read_text())]))


def _other_max_len():
    path = Path("data/prepared/stats.json")
    stats = json.loads(path.read_text())
    stats["encoding"]["max_len"] += 1
    path.write_text(json.dumps(stats))


def _one_run_on_another_vocabulary():
    path = layout.run_checkpoint("stacked", 8)
    torch.save({**torch.load(path, weights_only=True), "vocab_sha256": "0" * 64}, path)


def _one_run_on_other_labels():
    path = layout.run_checkpoint("birnn", 8)
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, "labels": list(reversed(ckpt["labels"]))}, path)


def _a_seed_not_trained():
    layout.run_checkpoint("stacked", 8).unlink()


@pytest.mark.parametrize(
    "damage, message",
    [
        (_other_vocabulary, "models/baseline/seed7.pt: trained on another vocabulary"),
        (_other_labels, "models/baseline/seed7.pt: trained on other labels"),
        (_other_max_len, "models/baseline/seed7.pt: trained with other padding"),
        (_one_run_on_another_vocabulary, "models/stacked/seed8.pt: trained on another vocabulary"),
        (_one_run_on_other_labels, "models/birnn/seed8.pt: trained on other labels"),
        (_a_seed_not_trained, "models/stacked/seed8.pt: model checkpoint not found"),
    ],
)
def test_refuses_a_run_from_other_prepared_data(trained, damage, message):
    damage()
    result = CliRunner().invoke(app, ["evaluate"])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {message}")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    if damage is not _a_seed_not_trained:
        assert "retrain with `dvc repro`" in result.stderr
    assert not Path("metrics").exists()  # nothing is published on refusal


def test_each_run_is_calibrated_on_its_own_validation_logits(trained):
    evaluate.run(trained)
    labels = _json("data/prepared/labels.json")
    y = {split: np.load(f"data/prepared/{split}.npz")["labels"] for split in ("val", "test")}
    for name in ("baseline", "birnn", "window"):
        scores = _json(f"metrics/scores/{name}.json")
        for seed in SEEDS:
            run = scores["seeds"][str(seed)]
            temperature = run["calibrated"]["temperature"]
            logits = {split: _run_logits(name, seed, split).double().numpy() for split in y}
            # Fitted on val alone (the logits here come in other batches: equal to float32 rounding).
            assert temperature == pytest.approx(calibration.fit_temperature(logits["val"], y["val"]), rel=1e-4)
            for split in ("val", "test"):
                raw = calibration.softmax(logits[split])
                scaled = calibration.softmax(logits[split], temperature)
                assert run[split]["ece"] == pytest.approx(calibration.calibration_error(raw, y[split]), abs=1e-6)
                assert run["calibrated"][split]["ece"] == pytest.approx(
                    calibration.calibration_error(scaled, y[split]), abs=1e-6
                )
                nll = log_loss(y[split], scaled, labels=range(len(labels)))
                assert run["calibrated"][split]["loss"] == pytest.approx(nll, abs=1e-5)
            # Fitted on val: the val NLL can only go down.
            assert run["calibrated"]["val"]["loss"] <= run["val"]["loss"] + 1e-6
        served = _json(f"metrics/calibration/{name}.json")
        assert served["served_seed"] == SEEDS[0]
        assert served["temperature"] == scores["seeds"][str(SEEDS[0])]["calibrated"]["temperature"]
        assert served["checkpoint_sha256"] == scores["checkpoint_sha256"][str(SEEDS[0])]
        assert {b["scaling"] for b in served["bins"]} == {"before", "after"}
        for scaling in ("before", "after"):
            assert sum(b["count"] for b in served["bins"] if b["scaling"] == scaling) == len(y["test"])
        # The predictions' probability is the served (scaled) probability of the predicted class.
        logits = _run_logits(name, SEEDS[0], "test").double().numpy()
        scaled = calibration.softmax(logits, served["temperature"])
        rows = _json(f"metrics/predictions/{name}.json")
        assert [r["probability"] for r in rows] == pytest.approx(scaled.max(1).tolist(), abs=1e-6)
    for name in REFERENCES:
        served = _json(f"metrics/calibration/{name}.json")
        assert served["served_seed"] == 0 and "checkpoint_sha256" not in served
        assert served["temperature"] == _json(f"metrics/scores/{name}.json")["seeds"]["0"]["calibrated"]["temperature"]


def test_a_class_with_no_test_article_is_scored_without_nan(tiny_project):
    """A fourth class of three documents: prepare's split rounds its test share to none."""
    docs = make_corpus() + [{"text": f"Rain wind storm cloud forecast {k}.", "label": "weather"} for k in range(3)]
    Path("corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    raw = tiny_params_dict()
    raw["train"]["seeds"] = [7]
    params = params_module.parse(raw)
    _train_everything(tiny_project, params)
    with contextlib.redirect_stdout(stdio.StringIO()):
        evaluate.run(params)
    labels = _json("data/prepared/labels.json")
    test_labels = np.load("data/prepared/test.npz")["labels"]
    assert "weather" in labels and labels.index("weather") not in test_labels
    for path in Path("metrics").rglob("*.json"):
        assert "NaN" not in path.read_text() and "Infinity" not in path.read_text(), path
    run = _json("metrics/scores/birnn.json")["seeds"]["7"]
    assert run["test"]["per_class"]["weather"]["support"] == 0
    assert 0 <= run["test"]["ece"] <= 1 and 0 <= run["calibrated"]["test"]["ece"] <= 1


@pytest.mark.parametrize(
    "array, change, problem",
    [
        ("ids", lambda a, stats, labels: a.__setitem__((0, 0), stats["vocab_size"]), "ids: 1 values outside"),
        ("labels", lambda a, stats, labels: a.__setitem__(0, len(labels)), "labels: 1 values outside"),
    ],
)
def test_refuses_prepared_arrays_out_of_range_before_scoring(trained, array, change, problem):
    stats, labels = _json("data/prepared/stats.json"), _json("data/prepared/labels.json")
    path = Path("data/prepared/val.npz")
    with np.load(path) as data:
        arrays = {k: data[k].copy() for k in data.files}
    change(arrays[array], stats, labels)
    np.savez(path, **arrays)
    result = CliRunner().invoke(app, ["evaluate"])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {path}: {problem}")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not Path("metrics/scores").exists()
