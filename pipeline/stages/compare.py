"""compare stage: metrics/{scores,predictions,calibration,train}/, suspects.json -> compare.json, details.json,
report.md, errors.md, errors.jsonl, suspects.md.

Every model was trained once per seed of train.seeds; this stage
- summarises each model across its seeds: mean, standard deviation, min and max of the
  train/val/test accuracy, loss and macro-F1 and of the generalisation gap (train - val accuracy);
- walks the ablation ladder (pipeline.core.layout.LADDER): each rung's change of settings, read
  from params.yaml, and its change in accuracy against the rung before, with a paired t-test
  across seeds; the same for the After's counterfactuals against the After;
- checks the starter experiment's targets (`compare.targets`) on the window model, the BiRNN and
  the stacked BiRNN, each on the mean and seed by seed, with the size rule (parameters <=
  max_parameter_ratio x baseline);
- tests BiRNN against baseline and stacked against BiRNN with a paired t-test across seeds
  (run s of one model against run s of the other), and BiRNN against baseline with McNemar's
  exact test on the test predictions of the served seed;
- summarises calibration across seeds: each run's temperature and its val and test expected
  calibration error (ECE) and negative log-likelihood, before and after temperature scaling;
- draws the figures the report embeds (metrics/figures/, see figures.py): every run's learning
  curves (dvclive/<model>/seed<S>/), the served seed's test confusion matrices, the accuracies
  across seeds, and the served seed's reliability diagrams (metrics/calibration/);
- lists the errors (metrics/errors.md and errors.jsonl, pipeline.report.errors): every test
  article each RNN model's served seed misclassifies (texts from data/prepared/test.jsonl), the
  most frequent confusions and the articles every RNN model gets wrong; and renders the suspects
  stage's training articles of doubtful label (metrics/suspects.json) as metrics/suspects.md.

metrics/compare.json holds the headline figures only, for `dvc metrics diff` (of calibration, the
mean test ECE before and after scaling); everything else goes to metrics/details.json and the
Markdown files, which report.md links. All of them, the figures folder whole, are published as
one generation, once everything is drawn and written. A missed target is a result, not an error:
the stage fails only on missing or malformed inputs, or on inputs from different runs of a
stage (pipeline.core.stamps).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from typing import Any

from pipeline.core import calibrated, files, layout, stamps
from pipeline.core.errors import UserError
from pipeline.core.params import COUNTERFACTUALS, LADDER, MODELS, Params, Targets
from pipeline.data.articles import read_texts
from pipeline.report import errors, figures

SCORES_DIR = layout.METRICS / "scores"
PREDICTIONS = layout.METRICS / "predictions"
FIGURES = layout.METRICS / "figures"
ERRORS_MD = layout.METRICS / "errors.md"
ERRORS_JSONL = layout.METRICS / "errors.jsonl"
SUSPECTS_MD = layout.METRICS / "suspects.md"
SPLITS = ("train", "val", "test")
SCORES = ("accuracy", "loss", "macro_f1")
CALIBRATED = ("val", "test")  # the splits scored again after temperature scaling
REFERENCES = ("reference", "reference_tokens", "fasttext")
CHECKED = ("window", "birnn", "stacked")  # the models the starter experiment's targets apply to
PLOTTED = ("baseline", "birnn", "stacked", "window")  # learning curves and confusion matrices
RUNGS = {  # the ladder figure's rows
    "baseline": "1 Before",
    "plus_bidirectional": "2 + bidirectional",
    "plus_dropout": "3 + dropout",
    "plus_word_dropout": "4 + word dropout",
    "plus_max_readout": "5 + max readout",
    "birnn": "6 + early stopping = After",
    "birnn_unidirectional": "After, one way only",
    "birnn_final_readout": "After, final readout",
}
ALPHA = 0.05
DIGITS = 6
NAMES = {
    "baseline": "Before: RNN, unidirectional, no dropout",
    "plus_bidirectional": "Rung 2: + bidirectional",
    "plus_dropout": "Rung 3: + dropout",
    "plus_word_dropout": "Rung 4: + word dropout",
    "plus_max_readout": "Rung 5: + max readout",
    "birnn": "After: BiRNN with dropout",
    "birnn_unidirectional": "After, reading one way only",
    "birnn_final_readout": "After, final-state readout",
    "stacked": "Bonus: stacked BiRNN (2 layers)",
    "window": "Window: BiRNN under the training ceiling",
    "reference": "Reference: TF-IDF + logistic regression, whole articles",
    "reference_tokens": "Reference: TF-IDF + logistic regression, the RNNs' tokens (same truncation and vocabulary)",
    "fasttext": "Reference: fastText, word bigrams, whole articles",
}


def _round(x: float) -> float:
    return round(float(x), DIGITS)


def mcnemar_exact(b: int, c: int) -> dict[str, Any]:
    """McNemar's exact test on the discordant pairs b and c: scipy's two-sided binomial test, p = 1/2.

    The statistic is min(b, c), as in statsmodels' exact variant. With no discordant pair p is 1.
    """
    from scipy import stats  # imported here: 2 s, and only the two tests of this module need it

    p_value = stats.binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0
    # Significant digits, not decimals: a strong result must not print as p = 0.
    return {"b": b, "c": c, "statistic": min(b, c), "p_value": float(f"{p_value:.6g}")}


def paired_t(after: list[float], before: list[float]) -> dict[str, Any]:
    """Paired t-test of after - before across seeds; p is None where it is undefined."""
    diffs = [a - b for a, b in zip(after, before, strict=True)]
    mean = statistics.fmean(diffs)
    result: dict[str, Any] = {"mean_difference": _round(mean), "seeds": len(diffs), "t": None, "p_value": None}
    if len(diffs) < 2:
        return result
    sd = statistics.stdev(diffs)
    if sd == 0:  # every seed moved by the same amount: no spread to test against
        result["p_value"] = 1.0 if mean == 0 else 0.0
        return result
    from scipy import stats

    test = stats.ttest_rel(after, before)
    return result | {"t": _round(test.statistic), "p_value": float(f"{test.pvalue:.6g}")}


def _number(data: Any, keys: tuple[str, ...], path) -> float:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    if not isinstance(data, (int, float)) or isinstance(data, bool) or not math.isfinite(data):
        raise UserError(f"{path}: no finite number at {'.'.join(keys)}; rerun `dvc repro`")
    return data


def read_scores(name: str, seeds: tuple[int, ...], data: Any) -> tuple[dict[str, dict], int]:
    """({seed: {split: {accuracy, loss, macro_f1}}}, trainable parameters) from metrics/scores/<name>.json,
    already read as `data`."""
    path = SCORES_DIR / f"{name}.json"
    runs = data.get("seeds") if isinstance(data, dict) else None
    keys = [str(s) for s in seeds] if name not in REFERENCES else ["0"]
    if not isinstance(runs, dict) or any(k not in runs for k in keys):
        raise UserError(f"{path}: no scores for seeds {', '.join(keys)}; rerun `pipeline evaluate`")
    scores = {k: {s: {m: _number(runs[k], (s, m), path) for m in SCORES} for s in SPLITS} for k in keys}
    return scores, int(_number(data, ("trainable_parameters",), path))


def read_training(name: str, seed: int) -> dict[str, Any]:
    """A run's kept epoch, epochs run, training seconds and selection rule (with what the
    unconstrained rule would have kept, for a model under a training ceiling)."""
    path = layout.run_summary(name, seed)
    data = files.read_json(path, "training summary")
    summary: dict[str, Any] = {k: int(_number(data, (k,), path)) for k in ("best_epoch", "epochs_run")}
    summary["train_seconds"] = _number(data, ("train_seconds",), path)
    summary["selection"] = str(data.get("selection", ""))
    if isinstance(data.get("unconstrained"), dict):
        summary["unconstrained"] = {
            k: _number(data, ("unconstrained", k), path) for k in ("epoch", "train_accuracy", "val_accuracy")
        }
    return summary


def changes(params: Params, before: str, after: str) -> list[str]:
    """What differs between two model sections, as YAML writes it: `bidirectional: false → true`."""
    a, b = dataclasses.asdict(params.model(before)), dataclasses.asdict(params.model(after))
    return [f"{key}: {json.dumps(a[key])} → {json.dumps(b[key])}" for key in a if a[key] != b[key]]


def ladder(params: Params, per_seed) -> dict[str, Any]:
    """Each rung's change of settings and of accuracy against the rung before; each
    counterfactual's against the After; the whole climb from Before to After."""

    def step(after: str, before: str) -> dict[str, Any]:
        return {
            "model": after,
            "against": before,
            "change": changes(params, before, after),
            **{split: paired_t(per_seed(after, split), per_seed(before, split)) for split in SPLITS},
        }

    after = LADDER[-1]
    return {
        "rungs": [step(rung, previous) for previous, rung in zip(LADDER, LADDER[1:], strict=False)],
        "counterfactuals": [step(name, after) for name in COUNTERFACTUALS],
        "total": step(after, LADDER[0]),
    }


def read_predictions(name: str) -> list[dict[str, Any]]:
    """The served seed's test predictions: [{"actual", "predicted", "probability"}] in data order."""
    path = PREDICTIONS / f"{name}.json"
    data = files.read_json(path, "test predictions")
    if not isinstance(data, list) or not all(
        isinstance(row, dict)
        and isinstance(row.get("actual"), str)
        and isinstance(row.get("predicted"), str)
        and isinstance(row.get("probability"), (int, float))
        and not isinstance(row.get("probability"), bool)
        for row in data
    ):
        raise UserError(
            f'{path}: expected a list of {{"actual", "predicted", "probability"}}; rerun `pipeline evaluate`'
        )
    return data


def pairs(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(row["actual"], row["predicted"]) for row in rows]


def read_calibration(name: str, seeds: tuple[int, ...], scores: dict[str, Any]) -> list[dict[str, Any]]:
    """The served seed's reliability bins (metrics/calibration/<name>.json), checked against the
    scores file it must come from (`scores`, as read): the same temperature and checkpoint."""
    fitted = calibrated.read(name)
    served = "0" if name in REFERENCES else str(seeds[0])
    path = SCORES_DIR / f"{name}.json"
    same = fitted.temperature == _number(scores, ("seeds", served, "calibrated", "temperature"), path)
    if name not in REFERENCES:
        same = same and fitted.checkpoint_sha256 == scores.get(stamps.KEY, {}).get(served)
    if not same:
        where = f"{layout.calibration_file(name)} and {path}"
        raise UserError(f"{where} come from different runs of `pipeline evaluate` ({stamps.RERUN})")
    return fitted.bins


def calibration_summary(name: str, data: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """{"temperature": spread, split: {"ece", "loss", "ece_scaled", "loss_scaled": spread}} across seeds."""
    path = SCORES_DIR / f"{name}.json"
    runs = [data["seeds"][k] for k in keys]
    summary: dict[str, Any] = {"temperature": spread([_number(r, ("calibrated", "temperature"), path) for r in runs])}
    for split in CALIBRATED:
        summary[split] = {
            **{m: spread([_number(r, (split, m), path) for r in runs]) for m in ("ece", "loss")},
            **{
                f"{m}_scaled": spread([_number(r, ("calibrated", split, m), path) for r in runs])
                for m in ("ece", "loss")
            },
        }
    return summary


def read_test_texts(labels: list[str], rows: list[dict[str, Any]]) -> list[str]:
    """The test articles, which must be the predictions' row for row."""
    ids = {label: k for k, label in enumerate(labels)}
    if any(row["actual"] not in ids for row in rows):
        raise UserError(f"{PREDICTIONS}: a prediction names a label the scores do not; rerun `pipeline evaluate`")
    expected = [ids[row["actual"]] for row in rows]
    return read_texts("test", labels, expected, against=f"{PREDICTIONS}/")[0]


def read_suspects() -> dict[str, Any]:
    data = files.read_json(layout.SUSPECTS, "suspect labels")
    keys = ("folds", "seed", "articles", "searched", "count", "suspects")
    if not isinstance(data, dict) or any(k not in data for k in keys) or not isinstance(data["suspects"], list):
        raise UserError(f"{layout.SUSPECTS}: not the suspects stage's list; rerun `pipeline suspects`")
    return data


def check_generations(seeds: tuple[int, ...], raw: dict[str, Any]) -> None:
    """Refuse inputs from different runs of a stage: new scores beside old predictions, a
    checkpoint's scores beside another run's summary or curves (pipeline.core.stamps). `raw`: the
    scores files as read, the same contents that the figures come from."""
    stamps.check_evaluation(raw, SCORES_DIR, PREDICTIONS)
    for name in MODELS:
        for seed in seeds:
            stamps.check_run(name, seed, raw[name], SCORES_DIR / f"{name}.json")


def discordant(before: list[tuple[str, str]], after: list[tuple[str, str]]) -> tuple[int, int]:
    """b: test documents only `before` got right; c: only `after` got right."""
    if [a for a, _ in before] != [a for a, _ in after]:
        raise UserError(
            f"{PREDICTIONS}: the models' predictions cover different test documents; rerun `pipeline evaluate`"
        )
    b = sum(pa == a and pb != a for (a, pa), (_, pb) in zip(before, after, strict=True))
    c = sum(pa != a and pb == a for (a, pa), (_, pb) in zip(before, after, strict=True))
    return b, c


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one seed), min and max."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {
        "mean": _round(statistics.fmean(values)),
        "sd": _round(sd),
        "min": _round(min(values)),
        "max": _round(max(values)),
    }


def summarise(runs: dict[str, dict]) -> dict[str, Any]:
    """{split: {score: spread}, "gap": spread} across a model's seeds."""
    summary: dict[str, Any] = {s: {m: spread([run[s][m] for run in runs.values()]) for m in SCORES} for s in SPLITS}
    summary["gap"] = spread([run["train"]["accuracy"] - run["val"]["accuracy"] for run in runs.values()])
    return summary


def check_targets(runs: dict[str, dict], targets: Targets, ratio: float) -> dict[str, dict]:
    """Each target: the mean's value, the threshold, met on the mean, and by how many seeds."""
    val = [run["val"]["accuracy"] for run in runs.values()]
    train = [run["train"]["accuracy"] for run in runs.values()]
    checks = {
        "min_val_accuracy": (val, targets.min_val_accuracy, lambda v: v >= targets.min_val_accuracy),
        "max_train_accuracy": (train, targets.max_train_accuracy, lambda v: v < targets.max_train_accuracy),
        "max_parameter_ratio": ([ratio], targets.max_parameter_ratio, lambda v: v <= targets.max_parameter_ratio),
    }
    result = {}
    for key, (values, threshold, ok) in checks.items():
        mean = _round(statistics.fmean(values))  # decided on the value that is shown
        met_by = sum(ok(v) for v in values) if key != "max_parameter_ratio" else len(runs) * ok(ratio)
        result[key] = {
            "value": _round(mean),
            "threshold": threshold,
            "met": ok(mean),
            "seeds_met": met_by,
            "seeds": len(runs),
        }
    return result


def build(params: Params, predictions: dict[str, list[dict[str, Any]]]) -> tuple[dict, dict]:
    """(compare.json: the headline figures, details.json: everything the report shows), from the
    scores files and every model's and reference's test predictions (already read)."""
    seeds = params.train.seeds
    scores, sizes = {}, {}
    raw = {name: files.read_json(SCORES_DIR / f"{name}.json", "evaluation scores") for name in (*MODELS, *REFERENCES)}
    for name in (*MODELS, *REFERENCES):
        scores[name], sizes[name] = read_scores(name, seeds, raw[name])
    check_generations(seeds, raw)
    calibration = {name: calibration_summary(name, raw[name], list(scores[name])) for name in (*MODELS, *REFERENCES)}
    reliability = {name: read_calibration(name, seeds, raw[name]) for name in (*MODELS, *REFERENCES)}
    if sizes["baseline"] <= 0:
        raise UserError(f"{SCORES_DIR}/baseline.json: trainable_parameters must be > 0")
    summaries = {name: summarise(runs) for name, runs in scores.items()}
    ratios = {name: _round(sizes[name] / sizes["baseline"]) for name in MODELS}
    targets = {name: check_targets(scores[name], params.compare.targets, ratios[name]) for name in CHECKED}

    def per_seed(name: str, split: str) -> list[float]:
        return [scores[name][str(s)][split]["accuracy"] for s in seeds]

    reference_seconds = {
        name: _number(raw[name], ("train_seconds",), SCORES_DIR / f"{name}.json")
        for name in REFERENCES
        if "train_seconds" in raw[name]
    }

    b, c = discordant(pairs(predictions["baseline"]), pairs(predictions["birnn"]))
    labels = _labels(raw["baseline"])
    suspects = read_suspects()
    error_summary = errors.summarise_errors(predictions, labels, MODELS, REFERENCES)

    def headline_of(name: str) -> dict:
        # A reference is one deterministic fit: its value alone; a model: mean and sd over seeds.
        keys = ("mean", "sd") if name in MODELS else ("mean",)
        pick = (lambda s: {k: s[k] for k in keys}) if name in MODELS else (lambda s: s["mean"])
        ece = calibration[name]["test"]
        mean = (lambda s: {"mean": s["mean"]}) if name in MODELS else (lambda s: s["mean"])
        return {
            **{s: {m: pick(summaries[name][s][m]) for m in SCORES} for s in SPLITS},
            "gap": pick(summaries[name]["gap"]),
            # Calibration in the headline: the mean test ECE, before and after temperature scaling.
            "test_ece": {"before": mean(ece["ece"]), "after": mean(ece["ece_scaled"])},
        }

    headline = {
        "seeds": len(seeds),
        **{name: headline_of(name) for name in summaries},
        "targets": {
            name: {k: {"value": t["value"], "met": t["met"], "seeds_met": t["seeds_met"]} for k, t in ts.items()}
            for name, ts in targets.items()
        },
    }
    details = {
        "seeds": list(seeds),
        "served_seed": seeds[0],
        "summary": summaries,
        "per_seed": scores,
        "targets": targets,
        "parameters": {**{name: sizes[name] for name in MODELS}, "ratio": ratios},
        "paired_t_test": {
            f"{after}_vs_{before}": {
                split: paired_t(per_seed(after, split), per_seed(before, split)) for split in ("val", "test")
            }
            for after, before in (("birnn", "baseline"), ("stacked", "birnn"))
        },
        "mcnemar_test": {"birnn_vs_baseline": mcnemar_exact(b, c), "seed": seeds[0]},
        "ladder": ladder(params, per_seed),
        "training": {name: {str(s): read_training(name, s) for s in seeds} for name in MODELS},
        "reference_train_seconds": reference_seconds,
        "calibration": calibration,
        "reliability": reliability,
        "labels": labels,
        "errors": error_summary,
        "suspects": {k: v for k, v in suspects.items() if k != "suspects"},
    }
    return headline, details


def _labels(data: Any) -> list[str]:
    """The labels in order, from a scores file's per-class scores (every label has one)."""
    per_class = data["seeds"][next(iter(data["seeds"]))]["test"].get("per_class")
    if not isinstance(per_class, dict) or not per_class:
        raise UserError(f"{SCORES_DIR}/baseline.json: no per-class scores; rerun `pipeline evaluate`")
    return list(per_class)


def run(params: Params) -> None:
    from pipeline.report.markdown import render_report

    predictions = {m: read_predictions(m) for m in (*MODELS, *REFERENCES)}
    headline, details = build(params, predictions)
    texts = read_test_texts(details["labels"], predictions[MODELS[0]])
    error_list = errors.error_rows(predictions, texts, MODELS)
    errors_md = errors.render_errors(predictions, texts, details["errors"], NAMES, MODELS, params.train.seeds[0])
    suspects_md = errors.render_suspects(read_suspects())
    curves = ("accuracy", "loss"), ("train", "val")
    # Every output as one generation: the figures folder whole (a figure no longer drawn goes)
    # and each file beside it; where a write fails (a full disk), none of them.
    with files.generation() as outputs:
        drawn = figures.write(
            outputs.folder(FIGURES),
            curves={
                m: [files.read_learning_curves(layout.run_curves(m, s), *curves) for s in params.train.seeds]
                for m in PLOTTED
            },
            predictions={m: pairs(predictions[m]) for m in (*PLOTTED, *REFERENCES)},
            seed_scores={
                m: [{s: run[s]["accuracy"] for s in SPLITS} for run in details["per_seed"][m].values()] for m in MODELS
            },
            ladder={
                RUNGS[m]: [{s: run[s]["accuracy"] for s in ("train", "val")} for run in details["per_seed"][m].values()]
                for m in (*LADDER, *COUNTERFACTUALS)
            },
            reliability=details.pop("reliability"),
        )
        # Linked where they will be, through a symlinked figures folder too.
        links = {alt: (FIGURES / path.name).relative_to(layout.METRICS).as_posix() for alt, path in drawn.items()}
        embedded = [f"![{alt}]({link})\n" for alt, link in links.items()]
        report = render_report(details, NAMES) + "\n".join(["", "## Figures", "", *embedded])
        files.write_json(outputs.file(layout.METRICS / "compare.json"), headline)
        files.write_json(outputs.file(layout.METRICS / "details.json"), details)
        files.write_bytes(outputs.file(ERRORS_JSONL), b"".join(map(files.jsonl_line, error_list)))
        files.write_text(outputs.file(ERRORS_MD), errors_md)
        files.write_text(outputs.file(SUSPECTS_MD), suspects_md)
        files.write_text(outputs.file(layout.METRICS / "report.md"), report)
    window = details["targets"]["window"]
    met = [k for k, t in window.items() if t["met"]]
    print(
        f"compare: the window model meets {len(met)} of {len(window)} targets on the mean of "
        f"{len(params.train.seeds)} seeds; "
        f"McNemar p = {details['mcnemar_test']['birnn_vs_baseline']['p_value']:.4g} ({layout.METRICS}/report.md)"
    )
