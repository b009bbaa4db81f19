"""evaluate stage: models/{baseline,birnn}.pt + data/prepared/ -> metrics/.

Scores both RNNs and a TF-IDF + logistic-regression reference on the train, val and test
splits with scikit-learn: accuracy, loss (log loss, the mean cross-entropy), macro-F1,
per-class precision/recall/F1 and the confusion matrix. The reference is fitted on
data/prepared/train.jsonl with the pipeline's own tokenizer, so all three models see the
same documents and the same tokens.

Writes, each atomically and only after everything was computed:
- metrics/{baseline,birnn,reference}.json: {"train": {...}, "val": {...}, "test": {...},
  "trainable_parameters": n}, floats rounded to 6 digits so the same inputs give the same bytes;
- metrics/predictions/{baseline,birnn,reference}.json: [{"actual", "predicted"}, ...] for the
  test split in data order, read by `dvc plots` (confusion matrices) and by compare (McNemar).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
)

from pipeline import io
from pipeline.errors import UserError
from pipeline.models import ModelConfig, RNNClassifier, count_parameters, predict_logits
from pipeline.params import MODELS, Params, ReferenceParams
from pipeline.text import tokenise
from pipeline.data import load_split

PREPARED = Path("data/prepared")
MODELS_DIR = Path("models")
METRICS = Path("metrics")
PREDICTIONS = METRICS / "predictions"
SPLITS = ("train", "val", "test")
DIGITS = 6
RETRAIN = "retrain with `dvc repro`"


def _round(x: float) -> float:
    return round(float(x), DIGITS)


def split_metrics(y_true: np.ndarray, proba: np.ndarray, labels: list[str]) -> dict:
    """Scores of one split from true label ids (N,) and class probabilities (N, C)."""
    classes = list(range(len(labels)))
    y_pred = proba.argmax(1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0
    )
    return {
        "accuracy": _round(accuracy_score(y_true, y_pred)),
        "loss": _round(log_loss(y_true, proba, labels=classes)),
        "macro_f1": _round(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
        "per_class": {
            name: {
                "precision": _round(precision[k]),
                "recall": _round(recall[k]),
                "f1": _round(f1[k]),
                "support": int(support[k]),
            }
            for k, name in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
    }


def load_model(name: str, labels: list[str], vocab_sha256: str, encoding: dict) -> RNNClassifier:
    """Load models/<name>.pt, refusing one trained on other prepared data."""
    path = MODELS_DIR / f"{name}.pt"
    ckpt = io.load_checkpoint(path)
    if ckpt["vocab_sha256"] != vocab_sha256:
        raise UserError(f"{path}: trained on another vocabulary than {PREPARED}/vocab.json; {RETRAIN}")
    if list(ckpt["labels"]) != labels:
        raise UserError(f"{path}: trained on other labels than {PREPARED}/labels.json; {RETRAIN}")
    if ckpt.get("encoding") != encoding:
        raise UserError(f"{path}: trained with other padding than {PREPARED}/stats.json; {RETRAIN}")
    try:
        model = RNNClassifier(ModelConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{path}: weights do not fit the saved config ({first}); {RETRAIN}") from None
    return model.eval()


def read_texts(split: str, label_ids: dict[str, int], expected: torch.Tensor) -> list[str]:
    """The split's original texts; their labels must match the .npz row for row."""
    path = PREPARED / f"{split}.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run `dvc repro prepare`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not readable text ({exc}); rerun `pipeline prepare`") from None
    rows = [row for _, row in io.jsonl_objects(lines, str(path))]
    try:
        texts = [row["text"] for row in rows]
        ids = [label_ids[row["label"]] for row in rows]
    except (KeyError, TypeError):
        raise UserError(f"{path}: rows do not match {PREPARED}/labels.json; rerun `pipeline prepare`") from None
    if ids != expected.tolist():
        raise UserError(f"{path}: does not match {split}.npz row for row; rerun `pipeline prepare`")
    return texts


def fit_reference(texts: list[str], y: np.ndarray, p: ReferenceParams):
    """TF-IDF over the pipeline's tokens (1..ngram_max-grams) + multinomial logistic regression."""
    vectorizer = TfidfVectorizer(
        tokenizer=tokenise,  # normalises too, exactly as prepare does
        lowercase=False,
        token_pattern=None,
        ngram_range=(1, p.ngram_max),
        max_features=p.max_features,
        dtype=np.float64,
    )
    # lbfgs is deterministic; random_state is fixed anyway so a solver change cannot make it vary.
    classifier = LogisticRegression(C=p.C, solver="lbfgs", max_iter=2000, random_state=0)
    classifier.fit(vectorizer.fit_transform(texts), y)
    return vectorizer, classifier


def _predictions(y_true: np.ndarray, proba: np.ndarray, labels: list[str]) -> list[dict[str, str]]:
    return [
        {"actual": labels[a], "predicted": labels[p]}
        for a, p in zip(y_true.tolist(), proba.argmax(1).tolist())
    ]


def run(params: Params) -> None:
    p = params.evaluate
    labels = io.read_json(PREPARED / "labels.json", "label list")
    stats = io.read_json(PREPARED / "stats.json", "prepare stats")
    if not isinstance(labels, list) or not isinstance(stats, dict) or "encoding" not in stats:
        raise UserError(f"{PREPARED}: labels.json or stats.json is malformed; rerun `pipeline prepare`")
    vocab_sha256 = io.sha256_file(PREPARED / "vocab.json")
    splits = {s: load_split(s, PREPARED) for s in SPLITS}
    truth = {s: splits[s].labels.numpy() for s in SPLITS}

    results: dict[str, dict] = {}
    predictions: dict[str, list] = {}
    for name in MODELS:
        model = load_model(name, labels, vocab_sha256, stats["encoding"])
        scores = {}
        for s, split in splits.items():
            logits = predict_logits(model, split.ids, split.lengths, p.batch_size)
            proba = torch.softmax(logits.double(), dim=1).numpy()
            scores[s] = split_metrics(truth[s], proba, labels)
            if s == "test":
                predictions[name] = _predictions(truth[s], proba, labels)
        results[name] = {**scores, "trainable_parameters": count_parameters(model)}
        print(f"{name}: " + ", ".join(f"{s} acc {scores[s]['accuracy']:.4f}" for s in SPLITS))

    label_ids = {name: k for k, name in enumerate(labels)}
    texts = {s: read_texts(s, label_ids, splits[s].labels) for s in SPLITS}
    vectorizer, classifier = fit_reference(texts["train"], truth["train"], p.reference)
    scores = {}
    for s in SPLITS:
        # Columns of predict_proba follow classifier.classes_; place them by label id.
        proba = np.zeros((len(texts[s]), len(labels)))
        proba[:, classifier.classes_] = classifier.predict_proba(vectorizer.transform(texts[s]))
        scores[s] = split_metrics(truth[s], proba, labels)
        if s == "test":
            predictions["reference"] = _predictions(truth[s], proba, labels)
    n_weights = classifier.coef_.size + classifier.intercept_.size
    results["reference"] = {**scores, "trainable_parameters": int(n_weights)}
    print("reference: " + ", ".join(f"{s} acc {scores[s]['accuracy']:.4f}" for s in SPLITS))

    for name, result in results.items():
        io.write_json(METRICS / f"{name}.json", result)
        io.write_json(PREDICTIONS / f"{name}.json", predictions[name])
