"""compare stage: metrics/ -> metrics/compare.json and metrics/report.md.

Reads evaluate's scores (metrics/{baseline,birnn,reference}.json), the training summaries
(metrics/train_{baseline,birnn}.json) and the test predictions (metrics/predictions/), then
- checks the seed's targets on the BiRNN (`compare.targets`) and the issue's size rule
  (BiRNN parameters <= compare.targets.max_parameter_ratio x baseline);
- reports each model's generalisation gap (train - val accuracy) and the BiRNN - baseline
  deltas per split and metric;
- runs McNemar's exact test of BiRNN vs. baseline on the test set.

A missed target is a result, not an error: the stage fails only on missing or malformed inputs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pipeline import io
from pipeline.errors import UserError
from pipeline.params import MODELS, Params, Targets

METRICS = Path("metrics")
PREDICTIONS = METRICS / "predictions"
SPLITS = ("train", "val", "test")
SCORES = ("accuracy", "loss", "macro_f1")
ALPHA = 0.05
DIGITS = 6
NAMES = {
    "baseline": "Before: baseline RNN (unidirectional)",
    "birnn": "After: BiRNN (bidirectional + dropout)",
    "reference": "Reference: TF-IDF + logistic regression",
}


def _round(x: float) -> float:
    return round(float(x), DIGITS)


def mcnemar_exact(b: int, c: int) -> dict[str, Any]:
    """McNemar's exact test on the discordant pairs b and c: two-sided binomial, p = 1/2.

    Under the null each discordant pair is a fair coin, so p = 2 P(X <= min(b, c)) for
    X ~ Binomial(b + c, 1/2), capped at 1; this equals scipy.stats.binomtest's two-sided
    p-value, computed exactly with integers (and without scipy's 2 s import in every run).
    The statistic is min(b, c), as in statsmodels' exact variant. With no discordant pair
    the two models cannot be told apart and p is 1.
    """
    n, k = b + c, min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    p_value = min(1.0, 2 * tail / 2**n)
    # Significant digits, not decimals: a strong result must not print as p = 0.
    return {"b": b, "c": c, "statistic": k, "p_value": float(f"{p_value:.6g}")}


def _number(data: Any, keys: tuple[str, ...], path: Path) -> float:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    if not isinstance(data, (int, float)) or isinstance(data, bool):
        raise UserError(f"{path}: no number at {'.'.join(keys)}; rerun `dvc repro`")
    return data


def read_scores(name: str) -> dict[str, dict[str, float]]:
    """{split: {accuracy, loss, macro_f1}} from metrics/<name>.json."""
    path = METRICS / f"{name}.json"
    data = io.read_json(path, "evaluation metrics")
    return {s: {m: _number(data, (s, m), path) for m in SCORES} for s in SPLITS}


def read_training(name: str) -> dict[str, int]:
    path = METRICS / f"train_{name}.json"
    data = io.read_json(path, "training summary")
    keys = ("trainable_parameters", "best_epoch", "epochs_run")
    return {k: int(_number(data, (k,), path)) for k in keys}


def read_predictions(name: str) -> list[tuple[str, str]]:
    path = PREDICTIONS / f"{name}.json"
    data = io.read_json(path, "test predictions")
    if not isinstance(data, list) or not all(
        isinstance(row, dict)
        and isinstance(row.get("actual"), str)
        and isinstance(row.get("predicted"), str)
        for row in data
    ):
        raise UserError(f'{path}: expected a list of {{"actual", "predicted"}}; rerun `pipeline evaluate`')
    return [(row["actual"], row["predicted"]) for row in data]


def discordant(baseline: list[tuple[str, str]], birnn: list[tuple[str, str]]) -> tuple[int, int]:
    """b: test documents only the baseline got right; c: only the BiRNN got right."""
    if [a for a, _ in baseline] != [a for a, _ in birnn]:
        raise UserError(
            f"{PREDICTIONS}: baseline and birnn predictions cover different test documents; "
            "rerun `pipeline evaluate`"
        )
    b = sum(pa == a and pb != a for (a, pa), (_, pb) in zip(baseline, birnn))
    c = sum(pa != a and pb == a for (a, pa), (_, pb) in zip(baseline, birnn))
    return b, c


def check_targets(birnn: dict, targets: Targets, ratio: float) -> dict[str, dict]:
    """Each target with its value, threshold and whether it is met."""
    val, train = birnn["val"]["accuracy"], birnn["train"]["accuracy"]
    checks = {
        "min_val_accuracy": (val, targets.min_val_accuracy, val >= targets.min_val_accuracy),
        "max_train_accuracy": (train, targets.max_train_accuracy, train < targets.max_train_accuracy),
        "max_parameter_ratio": (ratio, targets.max_parameter_ratio, ratio <= targets.max_parameter_ratio),
    }
    return {k: {"value": v, "threshold": t, "met": met} for k, (v, t, met) in checks.items()}


def build(params: Params) -> tuple[dict, dict]:
    """compare.json's content, and the scores it was computed from (for the report)."""
    scores = {name: read_scores(name) for name in (*MODELS, "reference")}
    training = {name: read_training(name) for name in MODELS}
    b, c = discordant(read_predictions("baseline"), read_predictions("birnn"))

    sizes = {name: training[name].pop("trainable_parameters") for name in MODELS}
    if sizes["baseline"] <= 0:
        raise UserError(f"{METRICS}/train_baseline.json: trainable_parameters must be > 0")
    ratio = _round(sizes["birnn"] / sizes["baseline"])
    targets = check_targets(scores["birnn"], params.compare.targets, ratio)
    result = {
        "targets_met": all(t["met"] for t in targets.values()),
        "targets": targets,
        "generalisation_gap": {
            name: _round(s["train"]["accuracy"] - s["val"]["accuracy"]) for name, s in scores.items()
        },
        "birnn_minus_baseline": {
            split: {m: _round(scores["birnn"][split][m] - scores["baseline"][split][m]) for m in SCORES}
            for split in SPLITS
        },
        "mcnemar_test": mcnemar_exact(b, c),
        "parameters": {**sizes, "ratio": ratio},
        "training": training,
    }
    return result, scores


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _mark(met: bool) -> str:
    return "✓" if met else "✗"


def render_report(result: dict, scores: dict) -> str:
    """metrics/report.md: the seed's Before/After reading, from compare.json's numbers."""
    gap, targets, sizes = result["generalisation_gap"], result["targets"], result["parameters"]
    lines = [
        "# Results: BiRNN vs. baseline RNN",
        "",
        "| Model | Train acc | Val acc | Test acc | Train loss | Val loss | Test loss "
        "| Gap (train − val acc) | Parameters |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label in NAMES.items():
        s = scores[name]
        size = f"{sizes[name]:,}" if name in sizes else "—"
        lines.append(
            f"| {label} | {_pct(s['train']['accuracy'])} | {_pct(s['val']['accuracy'])} "
            f"| {_pct(s['test']['accuracy'])} | {s['train']['loss']:.3f} | {s['val']['loss']:.3f} "
            f"| {s['test']['loss']:.3f} | {100 * gap[name]:.1f} pp | {size} |"
        )
    lines.append("")
    for name in MODELS:
        s = scores[name]
        lines += [
            f"{NAMES[name].split(':')[0]}: Training accuracy {_pct(s['train']['accuracy'])}, "
            f"Validation accuracy {_pct(s['val']['accuracy'])}, "
            f"Losses {s['train']['loss']:.2f} / {s['val']['loss']:.2f}",
            "",
        ]
    val, train, size = (
        targets[k] for k in ("min_val_accuracy", "max_train_accuracy", "max_parameter_ratio")
    )
    lines += [
        "## Targets (BiRNN)",
        "",
        f"- {_mark(val['met'])} validation accuracy at least {_pct(val['threshold'])}: {_pct(val['value'])}",
        f"- {_mark(train['met'])} training accuracy below {_pct(train['threshold'])}: {_pct(train['value'])}",
        f"- {_mark(size['met'])} at most {size['threshold']:.2f} × the baseline's parameters: "
        f"{sizes['birnn']:,} / {sizes['baseline']:,} = {size['value']:.3f}",
        "",
        f"All targets met: {'yes ✓' if result['targets_met'] else 'no ✗'}",
        "",
        "## Training",
        "",
    ]
    for name in MODELS:
        tr = result["training"][name]
        lines.append(f"- {name}: best epoch {tr['best_epoch']} of {tr['epochs_run']} run")
    test = result["mcnemar_test"]
    reading = "significant" if test["p_value"] < ALPHA else "not significant"
    lines += [
        "",
        "## BiRNN vs. baseline on the test set (McNemar's exact test)",
        "",
        f"{test['b']} test documents only the baseline classified correctly, {test['c']} only the "
        f"BiRNN; exact two-sided p = {test['p_value']:.4g}: the difference is {reading} at {ALPHA}.",
        "",
    ]
    return "\n".join(lines)


def run(params: Params) -> None:
    result, scores = build(params)
    report = render_report(result, scores)
    io.write_json(METRICS / "compare.json", result)
    io.write_text(METRICS / "report.md", report)
    met = "all targets met" if result["targets_met"] else "targets missed"
    print(f"compare: {met}; McNemar p = {result['mcnemar_test']['p_value']:.4g} ({METRICS}/report.md)")
