"""The TF-IDF reference: TF-IDF over the pipeline's tokens + multinomial logistic regression.

No I/O here. Shared by evaluate, which scores it beside the RNNs, and suspects, which fits it
fold by fold for out-of-sample probabilities on the training split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from pipeline.core.params import ReferenceParams
from pipeline.data.text import tokenise


def _identity(tokens: list[str]) -> list[str]:
    return tokens


def fit_reference(texts: Sequence, y: np.ndarray, p: ReferenceParams, pretokenised: bool = False):
    """TF-IDF over the pipeline's tokens (1..ngram_max-grams) + multinomial logistic regression.

    `texts` are raw texts, tokenised as prepare does, or (pretokenised) lists of tokens.
    """
    vectorizer = TfidfVectorizer(
        tokenizer=_identity if pretokenised else tokenise,  # tokenise normalises too, as prepare does
        lowercase=False,
        token_pattern=None,
        ngram_range=(1, p.ngram_max),
        max_features=p.max_features,
        dtype=np.float64,
    )
    # lbfgs is deterministic; random_state is fixed anyway so a solver change cannot make it vary.
    classifier = LogisticRegression(C=p.C, solver="lbfgs", max_iter=2000, random_state=0)
    # One BLAS thread: lbfgs's sums then run in one order, so the same data gives the same fit.
    with threadpool_limits(limits=1):
        classifier.fit(vectorizer.fit_transform(texts), y)
    return vectorizer, classifier


def reference_proba(vectorizer, classifier, texts: Sequence, n_labels: int) -> np.ndarray:
    """Class probabilities (N, n_labels), columns by label id; 0 for a label the fit never saw."""
    with threadpool_limits(limits=1):
        probabilities = classifier.predict_proba(vectorizer.transform(texts))
    proba = np.zeros((len(texts), n_labels))
    proba[:, classifier.classes_] = probabilities  # predict_proba's columns follow classes_
    return proba
