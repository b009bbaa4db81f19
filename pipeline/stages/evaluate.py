"""evaluate stage: every run in models/<model>/seed<S>.pt + data/prepared/ -> metrics/{scores,predictions,calibration}/.

Scores each model's run for every seed of train.seeds, and three references, on the train,
val and test splits with scikit-learn: accuracy, loss (log loss, the mean cross-entropy, i.e. the
negative log-likelihood), macro-F1, the expected calibration error (ece: 15 equal-width bins of
the top-label confidence, pipeline.model.calibration), per-class precision/recall/F1 and the
confusion matrix. Each run is then calibrated by temperature scaling: one scalar T fitted on its
validation split alone, with its val and test loss and ECE after scaling (the argmax, and so
every accuracy, is unchanged). A reference's probabilities are scaled through their logarithms.
The references are fitted on the training split:
- `reference`: TF-IDF + logistic regression on whole articles (data/prepared/train.jsonl)
  through the pipeline's tokenizer (pipeline.model.reference);
- `reference_tokens`: the same on exactly what the RNNs read, the truncated ids of the .npz
  files mapped back to their vocabulary words (`<unk>` included): like for like;
- `fasttext`: supervised fastText (evaluate.fasttext, word n-grams) on the same whole articles,
  tokenised the same way and joined by spaces.

Writes, only after everything was computed, its three folders as one generation (files.generation):
- metrics/scores/<name>.json: {"seeds": {"<S>": {"train": {...}, "val": {...}, "test": {...},
  "calibrated": {"temperature": T, "val": {"loss", "ece"}, "test": {"loss", "ece"}}}},
  "trainable_parameters": n, "served_seed": S, "checkpoint_sha256": {"<S>": sha256},
  "evaluation": stamp} (a reference has the one "seed" 0), floats rounded to 6 digits so the
  same inputs give the same bytes; fasttext.json adds "train_seconds", the wall time of its
  training: the one field that differs between runs, and left out of the stamp;
- metrics/predictions/<name>.json: [{"actual", "predicted", "probability"}, ...] on the test
  split in data order for the served seed (probability: the predicted class's, after temperature
  scaling, as `pipeline predict` gives it), read by `dvc plots` (confusion matrices) and by
  compare (McNemar, the errors file), and stamp.json: {"evaluation": stamp} (pipeline.core.stamps);
- metrics/calibration/<name>.json: {"served_seed", "checkpoint_sha256" (a model's), "temperature",
  "bins": [{"scaling": "before" | "after", "lower", "upper", "confidence", "accuracy", "count"}]}:
  the served seed's temperature, which publish writes into models/<model>.pt, and its
  reliability diagram on the test split, drawn by compare and by `dvc plots`. No evaluation
  stamp here, so one model's file changes only with that model and publish reruns only for it.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import fasttext
import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
)

from pipeline.core import calibrated, files, layout, stamps
from pipeline.core.errors import UserError
from pipeline.core.params import MODELS, FastTextParams, Params, ReferenceParams
from pipeline.data.articles import read_texts
from pipeline.data.splits import Split, load_split, split_logits
from pipeline.data.text import Vocab, tokenise
from pipeline.model import calibration, checkpoints
from pipeline.model.network import ModelConfig, RNNClassifier, count_parameters
from pipeline.model.reference import fit_reference, reference_proba

PREPARED = layout.PREPARED
SCORES = layout.METRICS / "scores"
PREDICTIONS = layout.METRICS / "predictions"
SPLITS = ("train", "val", "test")
CALIBRATED = ("val", "test")  # scored again after temperature scaling, which is fitted on val
DIGITS = 6
RETRAIN = "retrain with `dvc repro`"
# fastText's label prefix. A token never holds "_" (pipeline.data.text), so none can pose as a label.
LABEL = "__label__"


def _round(x: float) -> float:
    return round(float(x), DIGITS)


def split_metrics(y_true: np.ndarray, proba: np.ndarray, labels: list[str]) -> dict:
    """Scores of one split from true label ids (N,) and class probabilities (N, C)."""
    classes = list(range(len(labels)))
    y_pred = proba.argmax(1)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    return {
        "accuracy": _round(accuracy_score(y_true, y_pred)),
        "loss": _round(log_loss(y_true, proba, labels=classes)),
        "macro_f1": _round(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
        "ece": _round(calibration.calibration_error(proba, y_true)),
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


def load_model(path: Path, labels: list[str], vocab_sha256: str, encoding: dict) -> RNNClassifier:
    """Load a run's checkpoint, refusing one trained on other prepared data."""
    ckpt = checkpoints.load_checkpoint(path)
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


def seen_tokens(split: Split, vocab: Vocab) -> list[list[str]]:
    """The words an RNN reads for each text: its truncated ids, mapped back to the vocabulary."""
    words = vocab.tokens
    return [[words[i] for i in row[:n]] for row, n in zip(split.ids.tolist(), split.lengths.tolist(), strict=True)]


def _predictions(y_true: np.ndarray, proba: np.ndarray, scaled: np.ndarray, labels: list[str]) -> list[dict]:
    """The test predictions: the class is the raw argmax (the one every accuracy counts), the
    probability the calibrated one of that class."""
    predicted = proba.argmax(1)
    chosen = scaled[np.arange(len(predicted)), predicted]
    return [
        {"actual": labels[a], "predicted": labels[p], "probability": _round(q)}
        for a, p, q in zip(y_true.tolist(), predicted.tolist(), chosen.tolist(), strict=True)
    ]


@dataclass(frozen=True)
class Scored:
    """One run's scores on every split, before and after temperature scaling, and what the served
    seed's run publishes: its test predictions, temperature and reliability bins."""

    scores: dict
    predictions: list
    temperature: float
    bins: list  # the test split's reliability bins, before and after scaling


def score_run(
    proba: dict[str, np.ndarray], logits: dict[str, np.ndarray], truth: dict[str, np.ndarray], labels: list[str]
) -> Scored:
    """Scores of a run from its probabilities and logits on every split: the raw scores, the
    temperature fitted on val, and the val and test loss and ECE after scaling."""
    scores: dict = {s: split_metrics(truth[s], proba[s], labels) for s in SPLITS}
    temperature = calibration.fit_temperature(logits["val"], truth["val"])
    scaled = {s: calibration.softmax(logits[s], temperature) for s in CALIBRATED}
    classes = list(range(len(labels)))
    scores["calibrated"] = {
        "temperature": temperature,
        **{
            s: {
                "loss": _round(log_loss(truth[s], scaled[s], labels=classes)),
                "ece": _round(calibration.calibration_error(scaled[s], truth[s])),
            }
            for s in CALIBRATED
        },
    }
    bins = [
        {"scaling": scaling, **row}
        for scaling, p in (("before", proba["test"]), ("after", scaled["test"]))
        for row in calibration.reliability(p, truth["test"])
    ]
    return Scored(scores, _predictions(truth["test"], proba["test"], scaled["test"], labels), temperature, bins)


def _summary_line(name: str, scores: dict) -> str:
    accuracies = ", ".join(f"{s} acc {scores[s]['accuracy']:.4f}" for s in SPLITS)
    after = scores["calibrated"]
    return (
        f"{name}: {accuracies}; T {after['temperature']:.3g}, "
        f"test ECE {scores['test']['ece']:.4f} -> {after['test']['ece']:.4f}"
    )


def _scored(
    name: str, proba: dict[str, np.ndarray], truth: dict[str, np.ndarray], labels: list[str], n_weights: int
) -> tuple[dict, Scored]:
    """A reference's scores file (its one "seed" 0), its test predictions and calibration."""
    run = score_run(proba, {s: calibration.logits_of(proba[s]) for s in SPLITS}, truth, labels)
    print(_summary_line(name, run.scores))
    result = {"seeds": {"0": run.scores}, "trainable_parameters": int(n_weights), "served_seed": 0}
    return result, run


def _reference(
    name: str,
    inputs: dict[str, list],
    truth: dict[str, np.ndarray],
    labels: list[str],
    p: ReferenceParams,
    pretokenised: bool,
) -> tuple[dict, Scored]:
    vectorizer, classifier = fit_reference(inputs["train"], truth["train"], p, pretokenised)
    proba = {s: reference_proba(vectorizer, classifier, inputs[s], len(labels)) for s in SPLITS}
    n_weights = classifier.coef_.size + classifier.intercept_.size
    return _scored(name, proba, truth, labels, n_weights)


def fit_fasttext(lines: list[str], y: np.ndarray, p: FastTextParams) -> tuple[fasttext.FastText._FastText, float]:
    """Supervised fastText on space-joined tokens and label ids; returns the model and its training seconds."""
    # fastText reads its file in order and the prepared split comes grouped by label: shuffle it
    # (seeded). One thread runs the updates in one order, so the same params give the same model.
    order = np.random.default_rng(p.seed).permutation(len(lines))
    with tempfile.TemporaryDirectory(prefix="fasttext-") as tmp:
        path = Path(tmp) / "train.txt"
        path.write_text("".join(f"{LABEL}{y[i]} {lines[i]}\n" for i in order), encoding="utf-8")
        start = time.perf_counter()
        try:
            model = fasttext.train_supervised(
                str(path),
                dim=p.dim,
                epoch=p.epoch,
                lr=p.lr,
                wordNgrams=p.word_ngrams,
                minCount=p.min_count,
                bucket=p.bucket,
                seed=p.seed,
                loss="softmax",
                thread=1,
                verbose=0,  # no progress lines on stderr
            )
        except RuntimeError as exc:  # "Encountered NaN.": the updates diverged
            raise UserError(f"evaluate.fasttext: training failed ({str(exc).strip()}); lower its lr") from None
        seconds = time.perf_counter() - start
    return model, seconds


def fasttext_proba(model: fasttext.FastText._FastText, lines: list[str], n_labels: int) -> np.ndarray:
    """Class probabilities (N, C), columns by label id."""
    names, probs = model.predict(lines, k=-1)  # every label, most probable first
    proba = np.zeros((len(lines), n_labels))
    for row, (row_names, row_probs) in enumerate(zip(names, probs, strict=True)):
        proba[row, [int(name.removeprefix(LABEL)) for name in row_names]] = row_probs
    # fastText reports exp(log(p + 1e-5)) in float32: rescale each row to sum to one.
    return proba / proba.sum(axis=1, keepdims=True)


def _fasttext(
    texts: dict[str, list[str]], truth: dict[str, np.ndarray], labels: list[str], p: FastTextParams
) -> tuple[dict, Scored, float]:
    lines = {s: [" ".join(tokenise(text)) for text in texts[s]] for s in SPLITS}
    model, seconds = fit_fasttext(lines["train"], truth["train"], p)
    proba = {s: fasttext_proba(model, lines[s], len(labels)) for s in SPLITS}
    # Every weight training can change: the input matrix, one row of `dim` per kept word and per
    # hashed n-gram bucket (a bucket no n-gram hashes to is counted too: it is in the model), and
    # the output matrix, one row per label; fastText has no biases.
    n_weights = model.get_input_matrix().size + model.get_output_matrix().size
    result, run = _scored("fasttext", proba, truth, labels, n_weights)
    return result, run, seconds


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def run(params: Params) -> None:
    p, seeds = params.evaluate, params.train.seeds
    labels = files.read_json(PREPARED / "labels.json", "label list")
    stats = files.read_json(PREPARED / "stats.json", "prepare stats")
    if (
        not isinstance(labels, list)
        or not isinstance(stats, dict)
        or not isinstance(stats.get("encoding"), dict)
        or not _is_int(stats.get("vocab_size"))
    ):
        raise UserError(f"{PREPARED}: labels.json or stats.json is malformed; rerun `pipeline prepare`")
    vocab_sha256 = files.sha256_file(PREPARED / "vocab.json")
    # The width is the checkpoint's to check (its encoding against stats.json), below.
    splits = {s: load_split(s, PREPARED, vocab_size=stats["vocab_size"], num_classes=len(labels)) for s in SPLITS}
    truth = {s: splits[s].labels.numpy() for s in SPLITS}

    results: dict[str, dict] = {}
    served: dict[str, Scored] = {}
    for name in MODELS:
        runs, scored = {}, {}
        for seed in seeds:
            path = layout.run_checkpoint(name, seed)
            model = load_model(path, labels, vocab_sha256, stats["encoding"])
            scored[str(seed)] = files.sha256_file(path)
            logits = {s: split_logits(model, split, p.batch_size).double() for s, split in splits.items()}
            proba = {s: torch.softmax(logits[s], dim=1).numpy() for s in SPLITS}
            run = score_run(proba, {s: logits[s].numpy() for s in SPLITS}, truth, labels)
            runs[str(seed)] = run.scores
            if seed == seeds[0]:
                served[name] = run
            print(_summary_line(layout.run_name(name, seed), run.scores))
        results[name] = {
            "seeds": runs,
            "trainable_parameters": count_parameters(model),
            "served_seed": seeds[0],
            stamps.KEY: scored,
        }

    texts = {s: read_texts(s, labels, splits[s].labels.tolist())[0] for s in SPLITS}
    results["reference"], served["reference"] = _reference(
        "reference", texts, truth, labels, p.reference, pretokenised=False
    )
    vocab = Vocab.load(PREPARED / "vocab.json")
    seen = {s: seen_tokens(splits[s], vocab) for s in SPLITS}
    results["reference_tokens"], served["reference_tokens"] = _reference(
        "reference_tokens", seen, truth, labels, p.reference, pretokenised=True
    )
    results["fasttext"], served["fasttext"], seconds = _fasttext(texts, truth, labels, p.fasttext)
    # Timing is written beside the results but not stamped: the same inputs keep the same stamp.
    timing = {"fasttext": {"train_seconds": round(seconds, 3)}}

    # The three folders are swapped in as one generation: never one model's new scores beside
    # another's old ones, nor new scores beside old predictions; and scores and predictions carry
    # the run's stamp, so compare refuses a mix that a killed swap left.
    stamp = stamps.evaluation_stamp(results)
    with files.generation() as outputs:
        scores_dir, predicted, calibration_dir = map(outputs.folder, (SCORES, PREDICTIONS, layout.CALIBRATION))
        for name, result in results.items():
            files.write_json(scores_dir / f"{name}.json", {**result, **timing.get(name, {}), stamps.EVALUATION: stamp})
            files.write_json(predicted / f"{name}.json", served[name].predictions)
            run = served[name]
            seed, sha = (seeds[0], result[stamps.KEY][str(seeds[0])]) if name in MODELS else (0, None)
            calibrated.write(
                calibration_dir / f"{name}.json", calibrated.Calibrated(seed, sha, run.temperature, run.bins)
            )
        files.write_json(predicted / stamps.PREDICTIONS_FILE, {stamps.EVALUATION: stamp})
