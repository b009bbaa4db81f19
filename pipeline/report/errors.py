"""metrics/errors.md and errors.jsonl, and metrics/suspects.md: the articles behind the numbers.

Rendering only: compare reads the test predictions of each model's served seed, the test texts
and the suspects stage's list, and passes them in.
- errors: every test article a served seed misclassifies, with its true and predicted class,
  the (temperature-scaled) probability of the predicted class and its first SHOWN characters;
  the most frequent confusion pairs; the articles every RNN model gets wrong. A class with no
  test article is named as such: nothing of it can be misclassified on test.
- suspects: the training articles cleanlab flags, with their given and suggested label.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

SHOWN = 200  # characters of each article
TOP_PAIRS = 10


def _cell(text: str) -> str:
    """Text for one Markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("\\", "\\\\").replace("|", "\\|")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> list[str]:
    rule = ["---:" if k in right else "---" for k in range(len(headers))]
    return [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join(rule) + " |",
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
    ]


def error_rows(
    predictions: Mapping[str, Sequence[Mapping[str, Any]]], texts: Sequence[str], models: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per misclassified test article and model, models in order, articles in data order.

    "line" is the article's line in data/prepared/test.jsonl (from 1)."""
    return [
        {
            "model": model,
            "line": k + 1,
            "actual": row["actual"],
            "predicted": row["predicted"],
            "probability": row["probability"],
            "text": texts[k][:SHOWN],
        }
        for model in models
        for k, row in enumerate(predictions[model])
        if row["actual"] != row["predicted"]
    ]


def summarise_errors(
    predictions: Mapping[str, Sequence[Mapping[str, Any]]],
    labels: Sequence[str],
    models: Sequence[str],
    references: Sequence[str],
) -> dict[str, Any]:
    """Counts for the report and errors.md: per model, per class, the confusion pairs, and the
    articles that every model gets wrong (with what they said, and which references miss them too)."""
    n = len(predictions[models[0]])
    actual = [row["actual"] for row in predictions[models[0]]]
    wrong = {m: [row["actual"] != row["predicted"] for row in predictions[m]] for m in (*models, *references)}
    pairs = Counter(
        (row["actual"], row["predicted"]) for m in models for row in predictions[m] if row["actual"] != row["predicted"]
    )
    makers = {
        pair: sum(any((r["actual"], r["predicted"]) == pair for r in predictions[m]) for m in models) for pair in pairs
    }
    support = Counter(actual)
    return {
        "articles": n,
        "per_model": {m: sum(wrong[m]) for m in models},
        "per_class": {
            label: {
                "articles": support[label],
                "errors": sum(wrong[m][k] for m in models for k in range(n) if actual[k] == label),
            }
            for label in labels
        },
        "without_test_article": [label for label in labels if support[label] == 0],
        # Most errors first; a tie keeps the order of the labels.
        "pairs": [
            {"actual": a, "predicted": p, "errors": count, "models": makers[(a, p)]}
            for (a, p), count in sorted(
                pairs.items(), key=lambda kv: (-kv[1], labels.index(kv[0][0]), labels.index(kv[0][1]))
            )
        ],
        "every_model_wrong": [
            {
                "line": k + 1,
                "actual": actual[k],
                "predicted": dict(Counter(predictions[m][k]["predicted"] for m in models).most_common()),
                "references_wrong": [r for r in references if wrong[r][k]],
            }
            for k in range(n)
            if all(wrong[m][k] for m in models)
        ],
    }


def render_errors(
    predictions: Mapping[str, Sequence[Mapping[str, Any]]],
    texts: Sequence[str],
    summary: Mapping[str, Any],
    names: Mapping[str, str],
    models: Sequence[str],
    served_seed: int,
) -> str:
    n = summary["articles"]
    lines = [
        "# Misclassified test articles",
        "",
        f"The served run (seed {served_seed}) of each RNN model on the {n} test articles of "
        "`data/prepared/test.jsonl`. *Line* is the article's line in that file; *probability* is the one the "
        "model gives its (wrong) class after temperature scaling, as `pipeline predict` prints it; *text* is "
        f"the article's first {SHOWN} characters. Every row is also in `errors.jsonl`, one JSON object a line.",
        "",
        "## Errors per model",
        "",
        *_table(
            ["Model", "Misclassified", "Error rate"],
            [
                [names[m], f"{summary['per_model'][m]} of {n}", f"{100 * summary['per_model'][m] / n:.1f} %"]
                for m in models
            ],
            right=(1, 2),
        ),
        "",
        "## Errors per class",
        "",
        f"Misclassified test articles of each true class, summed over the {len(models)} models.",
        "",
        *_table(
            ["Class", "Test articles", "Misclassified"],
            [
                [label, c["articles"], "no test article" if c["articles"] == 0 else c["errors"]]
                for label, c in summary["per_class"].items()
            ],
            right=(1, 2),
        ),
    ]
    if summary["without_test_article"]:
        missing = ", ".join(f"`{label}`" for label in summary["without_test_article"])
        lines += [
            "",
            f"No test article has the class {missing}: its errors, recall and calibration on test are not measured.",
        ]
    lines += ["", "## Most frequent confusions", ""]
    if summary["pairs"]:
        lines += [
            f"True class → predicted class, errors summed over the {len(models)} models; *models*: how many make it.",
            "",
            *_table(
                ["True", "Predicted", "Errors", "Models"],
                [[p["actual"], p["predicted"], p["errors"], p["models"]] for p in summary["pairs"][:TOP_PAIRS]],
                right=(2, 3),
            ),
        ]
    else:
        lines.append("None: every model classifies every test article correctly.")
    every = summary["every_model_wrong"]
    lines += ["", f"## Articles every RNN model gets wrong ({len(every)})", ""]
    if every:
        rows = [
            [
                e["line"],
                e["actual"],
                ", ".join(f"{label} ({count})" for label, count in e["predicted"].items()),
                ", ".join(e["references_wrong"]) or "none",
                _cell(texts[e["line"] - 1][:SHOWN]),
            ]
            for e in every
        ]
        lines += _table(["Line", "True", "Predicted (models)", "References also wrong", "Text"], rows, right=(0,))
    else:
        lines.append("None.")
    for m in models:
        wrong = [(k, row) for k, row in enumerate(predictions[m]) if row["actual"] != row["predicted"]]
        lines += ["", f"## {names[m]} (`{m}`): {len(wrong)} misclassified", ""]
        if wrong:
            lines += _table(
                ["Line", "True", "Predicted", "Probability", "Text"],
                [
                    [k + 1, row["actual"], row["predicted"], f"{row['probability']:.3f}", _cell(texts[k][:SHOWN])]
                    for k, row in wrong
                ],
                right=(0, 3),
            )
        else:
            lines.append("None.")
    return "\n".join(lines) + "\n"


def render_suspects(data: Mapping[str, Any]) -> str:
    """metrics/suspects.md from the suspects stage's metrics/suspects.json."""
    lines = [
        "# Suspect training labels",
        "",
        "Training articles whose given label the rest of the training split contradicts: cleanlab's "
        "`find_label_issues` (confident learning) on out-of-fold probabilities of the TF-IDF reference "
        f"({data['folds']} folds, seed {data['seed']}). Nothing was relabelled; each is for a person to check. "
        "*Line* is the article's line in `data/prepared/train.jsonl`; the probabilities are out-of-fold.",
        "",
    ]
    if not data["searched"]:
        return "\n".join([*lines, f"Not searched: {data['reason']}.", ""])
    lines += [
        f"**{data['count']} of {data['articles']} training articles flagged**; the reference's out-of-fold accuracy "
        f"is {100 * data['out_of_fold_accuracy']:.1f} % ({data['folds_used']} folds used).",
        "",
    ]
    if data["suspects"]:
        lines += _table(
            ["Line", "Given", "Suggested", "P(given)", "P(suggested)", "Text"],
            [
                [
                    s["line"],
                    s["given"],
                    s["suggested"],
                    f"{s['given_probability']:.3f}",
                    f"{s['suggested_probability']:.3f}",
                    _cell(s["text"]),
                ]
                for s in data["suspects"]
            ],
            right=(0, 3, 4),
        )
    return "\n".join(lines) + "\n"
