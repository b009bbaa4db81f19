"""suspects stage: data/prepared/train.jsonl -> metrics/suspects.json, the training articles whose label looks wrong.

Out-of-sample probabilities for every training article come from the TF-IDF reference
(evaluate.reference, pipeline.model.reference) fitted in `suspects.folds` folds, stratified by
label and shuffled with `suspects.seed`: each article is scored by the fit that did not see it.
cleanlab's find_label_issues (confident learning) reads them with the given labels and names
the articles whose given label the others contradict. Nothing is relabelled: the list is a
report, for a person to check.

Any corpus prepare accepts gets a list. A class with fewer training articles than folds is
missing from some folds (StratifiedKFold's warning about it is left out of the log); there are
never more folds than the largest class has articles; a fold whose training part holds a
single class predicts that class. Where every class has one training article, nothing can be
held out: the search is skipped and the file says why.

metrics/suspects.json: {"folds", "seed", "articles", "searched", and either "reason" or
"folds_used" and "out_of_fold_accuracy"; "count", "suspects": [{"line", "given", "suggested",
"given_probability", "suggested_probability", "text"}]}, most doubtful first (cleanlab's
self-confidence ranking); "line" is the article's line in data/prepared/train.jsonl, "text" its
first 200 characters, and the probabilities are the out-of-fold ones.
"""

from __future__ import annotations

import warnings

import numpy as np

from pipeline.core import files, layout
from pipeline.core.errors import UserError
from pipeline.core.params import Params, ReferenceParams, SuspectsParams
from pipeline.data.articles import read_texts
from pipeline.model.reference import fit_reference, reference_proba

PREPARED = layout.PREPARED
SHOWN = 200  # characters of each article in the list
DIGITS = 6


def out_of_fold_proba(texts: list[str], y: np.ndarray, n_labels: int, p: ReferenceParams, s: SuspectsParams):
    """(probabilities (N, n_labels) of each text from the fit that did not see it, folds used);
    None for the probabilities where no class has two articles to split."""
    from sklearn.model_selection import StratifiedKFold

    folds = min(s.folds, int(np.bincount(y).max()))
    if folds < 2:
        return None, folds
    proba = np.zeros((len(texts), n_labels))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=s.seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        parts = list(splitter.split(np.zeros(len(y)), y))
    for train, held_out in parts:
        classes = np.unique(y[train])
        if len(classes) == 1:  # the one thing a fit on one class can say
            proba[held_out, classes[0]] = 1.0
            continue
        vectorizer, classifier = fit_reference([texts[i] for i in train], y[train], p)
        proba[held_out] = reference_proba(vectorizer, classifier, [texts[i] for i in held_out], n_labels)
    return proba, folds


def find_suspects(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Indices of the articles cleanlab flags, most doubtful first."""
    from cleanlab.filter import find_label_issues

    # One process: the same input gives the same list, and no worker is forked. Its warning that a
    # small class "may not flag all label issues" holds for any class of a few articles; left out.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="May not flag all label issues", category=UserWarning)
        return np.asarray(find_label_issues(y, proba, return_indices_ranked_by="self_confidence", n_jobs=1))


def run(params: Params) -> None:
    p, s = params.evaluate.reference, params.suspects
    labels = files.read_json(PREPARED / "labels.json", "label list")
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels) or len(labels) < 2:
        raise UserError(f"{PREPARED}/labels.json: not a list of two or more labels; rerun `pipeline prepare`")
    texts, ids = read_texts("train", labels)
    y = np.asarray(ids, dtype=np.int64)
    result: dict = {"folds": s.folds, "seed": s.seed, "articles": len(texts)}
    proba, folds = out_of_fold_proba(texts, y, len(labels), p, s)
    if proba is None:
        reason = "every class has a single training article: there is nothing to cross-validate"
        result |= {"searched": False, "reason": reason, "count": 0, "suspects": []}
        print(f"suspects: not searched, {reason}")
    else:
        flagged = find_suspects(y, proba)
        suggested = proba.argmax(1)
        rows = [
            {
                "line": int(i) + 1,
                "given": labels[y[i]],
                "suggested": labels[suggested[i]],
                "given_probability": round(float(proba[i, y[i]]), DIGITS),
                "suggested_probability": round(float(proba[i, suggested[i]]), DIGITS),
                "text": texts[i][:SHOWN],
            }
            for i in flagged.tolist()
        ]
        accuracy = round(float((suggested == y).mean()), DIGITS)
        result |= {"searched": True, "folds_used": folds, "out_of_fold_accuracy": accuracy}
        result |= {"count": len(rows), "suspects": rows}
        print(f"suspects: {len(rows)} of {len(texts)} training articles flagged ({layout.SUSPECTS})")
    files.write_json(layout.SUSPECTS, result)
