"""Figures for metrics/report.md, rendered from plain Python data to PNG by vl-convert.

Rendering only: callers read the metrics and pass them in, so any number of models and seeds
draws without a change here. Each figure is a Vega-Lite spec (the grammar `dvc plots` uses)
rendered offline by vl-convert's embedded Vega; the same data gives the same bytes.

- learning curves: model -> one run per seed, run = {metric: {split: [(epoch, value), ...]}}
- confusion matrices: model -> [(actual, predicted), ...] for the test documents
- spread across seeds: model -> one {split: accuracy} per seed
- reliability diagrams: model -> [{"scaling", "confidence", "accuracy", "count"}, ...], the
  non-empty confidence bins of the test split before and after temperature scaling
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.core import files

# The Vega-Lite release DVC's plot templates are written for ($schema v5); the offline
# `dvc plots` page bundles the same one, so report figures and the page draw alike.
VEGA_LITE = "5.21"
# Bundled inside vl-convert, so text looks the same whatever fonts the machine has.
FONT = "Liberation Sans"
SCALE = 1.5  # pixels per chart unit: sharp enough on high-density screens at 100-200 kB a figure
PALETTE = "tableau10"

Point = tuple[int, float]
Run = Mapping[str, Mapping[str, Sequence[Point]]]  # metric -> split -> [(epoch, value)]

INTEGER_LABELS = "datum.value % 1 ? '' : datum.label"
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}
METRIC_NAMES = {"accuracy": "Accuracy", "loss": "Loss (cross-entropy)"}
LEARNING_CURVES = "learning_curves.png"
CONFUSION = "confusion_matrices.png"
SEED_SPREAD = "seed_spread.png"
LADDER = "ladder.png"
RELIABILITY = "reliability.png"
SCALINGS = {"before": "before", "after": "after temperature scaling"}


def _colour(models: Sequence[str]) -> dict[str, Any]:
    """One colour per model, in the caller's order, the same in every figure."""
    return {"field": "model", "type": "nominal", "title": "Model", "scale": {"domain": list(models), "scheme": PALETTE}}


def _split_order(present: set[str]) -> list[str]:
    known = [SPLIT_NAMES[s] for s in SPLIT_NAMES if SPLIT_NAMES[s] in present]
    return known + sorted(present - set(known))


def learning_curves_spec(curves: Mapping[str, Sequence[Run]]) -> dict[str, Any]:
    """Train vs. validation per epoch: colour is the model, the dash pattern is the split."""
    rows: list[dict[str, Any]] = [
        {
            "model": model,
            "seed": seed,
            "metric": metric,
            "split": SPLIT_NAMES.get(split, split),
            "epoch": int(epoch),
            "value": float(value),
        }
        for model, runs in curves.items()
        for seed, run in enumerate(runs)
        for metric, by_split in run.items()
        for split, points in by_split.items()
        for epoch, value in points
    ]
    if not rows:
        raise ValueError("learning curves: no points to draw")
    splits = _split_order({r["split"] for r in rows})
    # Whole epochs only: a short run would otherwise get ticks at 1.5, 2.5...
    last = max(r["epoch"] for r in rows)
    epoch_axis = {"values": list(range(1, last + 1))} if last <= 12 else {"labelExpr": INTEGER_LABELS}
    metrics = [m for m in METRIC_NAMES if any(r["metric"] == m for r in rows)]
    metrics += sorted({r["metric"] for r in rows} - set(metrics))

    def panel(metric: str) -> dict[str, Any]:
        return {
            "transform": [{"filter": {"field": "metric", "equal": metric}}],
            "width": 320,
            "height": 240,
            "mark": {"type": "line", "strokeWidth": 2},
            "encoding": {
                "x": {
                    "field": "epoch",
                    "type": "quantitative",
                    "title": "Epoch",
                    "axis": {**epoch_axis, "format": "d"},
                },
                "y": {
                    "field": "value",
                    "type": "quantitative",
                    "title": METRIC_NAMES.get(metric, metric.replace("_", " ").capitalize()),
                    "scale": {"zero": False},
                },
                "color": _colour(list(curves)),
                "strokeDash": {
                    "field": "split",
                    "type": "nominal",
                    "title": "Split",
                    "scale": {"domain": splits, "range": [[1, 0], [6, 4], [2, 2], [8, 3, 2, 3]]},
                    "legend": {"symbolStrokeColor": "#444"},
                },
                "detail": {"field": "seed", "type": "nominal"},
            },
        }

    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": "Learning curves: train vs. validation per epoch",
        "data": {"values": rows},
        "hconcat": [panel(m) for m in metrics],
        "resolve": {"scale": {"color": "shared", "strokeDash": "shared"}},
    }


def confusion_spec(predictions: Mapping[str, Sequence[tuple[str, str]]]) -> dict[str, Any]:
    """One matrix per model: rows are the actual class, columns the predicted one."""
    labels = sorted({label for pairs in predictions.values() for pair in pairs for label in pair})
    if not labels:
        raise ValueError("confusion matrices: no predictions to draw")
    rows = []
    for model, pairs in predictions.items():
        counts = Counter(pairs)
        totals = Counter(actual for actual, _ in pairs)
        for actual in labels:
            for predicted in labels:
                n = counts[(actual, predicted)]
                share = n / totals[actual] if totals[actual] else 0.0
                rows.append(
                    {"model": model, "actual": actual, "predicted": predicted, "count": n, "share": round(share, 6)}
                )
    side = max(150, 34 * len(labels))
    axis = {"type": "nominal", "sort": labels}
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": {
            "text": "Test confusion matrices",
            "subtitle": "cell: number of test documents; colour: share of the actual class",
        },
        "data": {"values": rows},
        "facet": {
            "column": {
                "field": "model",
                "type": "nominal",
                "sort": list(predictions),
                "title": None,
                "header": {"labelFontSize": 13},
            }
        },
        "spec": {
            "width": side,
            "height": side,
            "encoding": {
                "x": {**axis, "field": "predicted", "title": "Predicted class", "axis": {"labelAngle": -40}},
                "y": {**axis, "field": "actual", "title": "Actual class"},
            },
            "layer": [
                {
                    "mark": "rect",
                    "encoding": {
                        "color": {
                            "field": "share",
                            "type": "quantitative",
                            "title": "Share",
                            "scale": {"scheme": "blues", "domain": [0, 1]},
                            "legend": {"format": ".0%"},
                        }
                    },
                },
                {
                    "mark": {"type": "text", "fontSize": 11},
                    "encoding": {
                        "text": {"field": "count", "type": "quantitative"},
                        "color": {"condition": {"test": "datum.share > 0.5", "value": "white"}, "value": "black"},
                    },
                },
            ],
        },
    }


def seed_spread_spec(scores: Mapping[str, Sequence[Mapping[str, float]]], title: str | None = None) -> dict[str, Any]:
    """Accuracy of every seed as a dot, the range across seeds as a bar, the mean as a tick."""
    rows: list[dict[str, Any]] = [
        {"model": model, "seed": seed, "split": SPLIT_NAMES.get(split, split), "accuracy": float(acc)}
        for model, runs in scores.items()
        for seed, by_split in enumerate(runs)
        for split, acc in by_split.items()
    ]
    if not rows:
        raise ValueError("spread across seeds: no scores to draw")
    counts = sorted({len(runs) for runs in scores.values() if runs})
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    seeds = "1 seed" if n == "1" else f"{n} seeds"
    y = {"field": "model", "type": "nominal", "sort": list(scores), "title": None}
    x = {
        "field": "accuracy",
        "type": "quantitative",
        "title": "Accuracy",
        "scale": {"zero": False, "padding": 8},
        "axis": {"format": ".0%", "tickCount": 4},
    }
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": {
            "text": title or f"Accuracy across seeds ({seeds} per model)",
            "subtitle": "dot: one seed; bar: lowest to highest; tick: mean",
        },
        "data": {"values": rows},
        "facet": {
            "column": {
                "field": "split",
                "type": "nominal",
                "sort": _split_order({r["split"] for r in rows}),
                "title": None,
                "header": {"labelFontSize": 13},
            }
        },
        "resolve": {"scale": {"x": "independent"}},
        "spec": {
            "width": 200,
            "height": {"step": 28},
            "encoding": {"y": y, "color": _colour(list(scores))},
            "layer": [
                {
                    "mark": {"type": "rule", "strokeWidth": 3, "opacity": 0.5},
                    "encoding": {"x": {**x, "aggregate": "min"}, "x2": {"field": "accuracy", "aggregate": "max"}},
                },
                {"mark": {"type": "tick", "thickness": 2, "size": 18}, "encoding": {"x": {**x, "aggregate": "mean"}}},
                {
                    "mark": {"type": "circle", "size": 60, "opacity": 0.85},
                    "encoding": {"x": x, "detail": {"field": "seed", "type": "nominal"}},
                },
            ],
        },
    }


def reliability_spec(bins: Mapping[str, Sequence[Mapping[str, Any]]], columns: int = 5) -> dict[str, Any]:
    """One reliability diagram per model: accuracy against mean confidence per bin, a dot's area
    its number of texts, before and after temperature scaling, with the diagonal of perfect calibration."""
    rows: list[dict[str, Any]] = [
        {
            "model": model,
            "scaling": SCALINGS.get(str(b["scaling"]), str(b["scaling"])),
            "confidence": float(b["confidence"]),
            "accuracy": float(b["accuracy"]),
            "count": int(b["count"]),
        }
        for model, model_bins in bins.items()
        for b in model_bins
    ]
    if not rows:
        raise ValueError("reliability diagrams: no bins to draw")
    unit = {"type": "quantitative", "scale": {"domain": [0, 1]}, "axis": {"format": ".0%", "tickCount": 5}}
    x, y = {**unit, "title": "Mean confidence"}, {**unit, "title": "Accuracy"}
    scaling = {
        "field": "scaling",
        "type": "nominal",
        "title": "Probabilities",
        "scale": {"domain": [v for v in SCALINGS.values() if any(r["scaling"] == v for r in rows)]},
    }
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": {
            "text": "Reliability diagrams (test split, served seed)",
            "subtitle": "dot: one of 15 equal-width confidence bins, its area the number of texts; "
            "dashed: perfect calibration",
        },
        "data": {"values": rows},
        "facet": {
            "field": "model",
            "type": "nominal",
            "sort": list(bins),
            "title": None,
            "header": {"labelFontSize": 12},
        },
        "columns": columns,
        "spec": {
            "width": 170,
            "height": 170,
            "layer": [
                {
                    "mark": {"type": "rule", "strokeDash": [4, 4], "color": "#999"},
                    "encoding": {
                        "x": {"datum": 0, **x},
                        "y": {"datum": 0, **y},
                        "x2": {"datum": 1},
                        "y2": {"datum": 1},
                    },
                },
                {
                    "mark": {"type": "line", "strokeWidth": 1.5, "opacity": 0.7},
                    "encoding": {
                        "x": {"field": "confidence", **x},
                        "y": {"field": "accuracy", **y},
                        "color": scaling,
                    },
                },
                {
                    "mark": {"type": "circle", "opacity": 0.8},
                    "encoding": {
                        "x": {"field": "confidence", **x},
                        "y": {"field": "accuracy", **y},
                        "color": scaling,
                        "size": {"field": "count", "type": "quantitative", "title": "Texts in the bin"},
                    },
                },
            ],
        },
        "resolve": {"scale": {"size": "shared"}},
    }


def render_png(spec: Mapping[str, Any]) -> bytes:
    import vl_convert  # imported here: the 80 MB library loads only when a figure is drawn

    config = {"font": FONT, "background": "white", "legend": {"labelLimit": 0}}
    return vl_convert.vegalite_to_png(dict(spec), vl_version=VEGA_LITE, scale=SCALE, config=config)


def write(
    folder: str | Path,
    curves: Mapping[str, Sequence[Run]],
    predictions: Mapping[str, Sequence[tuple[str, str]]],
    seed_scores: Mapping[str, Sequence[Mapping[str, float]]],
    ladder: Mapping[str, Sequence[Mapping[str, float]]] | None = None,
    reliability: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> dict[str, Path]:
    """Render every figure into `folder` as PNG; returns {alt text: path} in reading order."""
    folder = Path(folder)
    specs = {
        (LEARNING_CURVES, "Train vs. validation accuracy and loss per epoch"): learning_curves_spec(curves),
        (CONFUSION, "Test confusion matrices"): confusion_spec(predictions),
        (SEED_SPREAD, "Accuracy across seeds"): seed_spread_spec(seed_scores),
    }
    if reliability:
        specs[(RELIABILITY, "Reliability diagrams, test split, before and after temperature scaling")] = (
            reliability_spec(reliability)
        )
    if ladder:
        title = "The ablation ladder: one change a rung, from Before to After"
        specs[(LADDER, "The ablation ladder: train and val accuracy per rung, one dot per seed")] = seed_spread_spec(
            ladder, title
        )
    images = {key: render_png(spec) for key, spec in specs.items()}  # all drawn before any is written
    for (name, _), png in images.items():
        files.write_bytes(folder / name, png)
    return {alt: folder / name for name, alt in images}
