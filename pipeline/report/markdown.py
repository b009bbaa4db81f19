"""metrics/report.md from compare's details: the seed's Before/After table across seeds, in words."""

from __future__ import annotations

from typing import Any

ALPHA = 0.05


def _cell(s: dict[str, float], scale: float = 100, digits: int = 1, seeded: bool = True) -> str:
    """ "92.7 ± 0.6": the mean and the standard deviation across seeds; a reference has one fit."""
    mean = f"{scale * s['mean']:.{digits}f}"
    return f"{mean} ± {scale * s['sd']:.{digits}f}" if seeded else mean


def _p(test: dict[str, Any]) -> str:
    return "n/a (one seed)" if test["p_value"] is None else f"{test['p_value']:.3g}"


def _target_lines(name: str, targets: dict, sizes: dict) -> list[str]:
    val, train, size = (targets[k] for k in ("min_val_accuracy", "max_train_accuracy", "max_parameter_ratio"))

    def mark(t: dict) -> str:
        return "✓" if t["met"] else "✗"

    return [
        f"- {mark(val)} validation accuracy at least {100 * val['threshold']:.0f} %: mean {100 * val['value']:.1f} % "
        f"({val['seeds_met']} of {val['seeds']} seeds)",
        f"- {mark(train)} training accuracy below {100 * train['threshold']:.0f} %: mean {100 * train['value']:.1f} % "
        f"({train['seeds_met']} of {train['seeds']} seeds)",
        f"- {mark(size)} at most {size['threshold']:.2f} × the baseline's parameters: "
        f"{sizes[name]:,} / {sizes['baseline']:,} = {size['value']:.3f}",
    ]


def render_report(details: dict, names: dict[str, str]) -> str:
    summary, sizes, seeds = details["summary"], details["parameters"], details["seeds"]
    n = len(seeds)
    lines = [
        "# Results: BiRNN vs. baseline RNN",
        "",
        f"Every RNN was trained once per seed ({', '.join(map(str, seeds))}); cells are the mean ± the "
        f"standard deviation across the {n} runs, in % for accuracies. The served checkpoints "
        f"(`models/<model>.pt`) are the runs of seed {details['served_seed']}, the first seed, "
        "chosen before any score.",
        "",
        "| Model | Train acc | Val acc | Test acc | Train loss | Val loss | Val macro-F1 "
        "| Gap (train − val) | Parameters |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label in names.items():
        s, seeded = summary[name], name in sizes["ratio"]
        size = f"{sizes[name]:,} ({sizes['ratio'][name]:.2f} ×)" if seeded else "—"
        cells = [_cell(s[split]["accuracy"], seeded=seeded) for split in ("train", "val", "test")]
        cells += [_cell(s[split]["loss"], 1, 3, seeded) for split in ("train", "val")]
        cells += [_cell(s["val"]["macro_f1"], seeded=seeded), _cell(s["gap"], seeded=seeded) + " pp", size]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Range across seeds (min – max):", ""]
    for name in sizes["ratio"]:
        s = summary[name]
        lines.append(
            f"- {name}: val accuracy {100 * s['val']['accuracy']['min']:.1f} – "
            f"{100 * s['val']['accuracy']['max']:.1f} %, "
            f"train accuracy {100 * s['train']['accuracy']['min']:.1f} – {100 * s['train']['accuracy']['max']:.1f} %, "
            f"gap {100 * s['gap']['min']:.1f} – {100 * s['gap']['max']:.1f} pp"
        )
    for name in ("birnn", "stacked"):
        lines += ["", f"## Targets: {names[name]}", "", *_target_lines(name, details["targets"][name], sizes)]

    t = details["paired_t_test"]
    bvb, svb = t["birnn_vs_baseline"], t["stacked_vs_birnn"]
    stacked, birnn = summary["stacked"], summary["birnn"]
    lines += [
        "",
        "## Did stacking help? (the seed's bonus question)",
        "",
        "A second bidirectional layer changed validation accuracy by "
        f"{100 * svb['val']['mean_difference']:+.1f} points "
        f"on average over the {n} seeds (paired t-test p = {_p(svb['val'])}; test: "
        f"{100 * svb['test']['mean_difference']:+.1f} points, p = {_p(svb['test'])}), and the generalisation gap "
        f"from {_cell(birnn['gap'])} to {_cell(stacked['gap'])} pp, at {sizes['ratio']['stacked']:.2f} × "
        "the baseline's parameters.",
        "",
        "## BiRNN vs. baseline",
        "",
        f"- Across seeds (paired t-test on accuracy): val {100 * bvb['val']['mean_difference']:+.1f} points, "
        f"p = {_p(bvb['val'])}; test {100 * bvb['test']['mean_difference']:+.1f} points, p = {_p(bvb['test'])}.",
    ]
    mc = details["mcnemar_test"]["birnn_vs_baseline"]
    reading = "significant" if mc["p_value"] < ALPHA else "not significant"
    lines += [
        f"- Served seed {details['mcnemar_test']['seed']} on the test set (McNemar's exact test): {mc['b']} documents "
        f"only the baseline classified correctly, {mc['c']} only the BiRNN; p = {mc['p_value']:.4g}, "
        f"{reading} at {ALPHA}.",
        "",
        "## Training",
        "",
    ]
    for name, runs in details["training"].items():
        epochs = ", ".join(f"{r['best_epoch']}/{r['epochs_run']}" for r in runs.values())
        lines.append(f"- {name}: kept epoch / epochs run per seed: {epochs}")
    lines.append("")
    return "\n".join(lines)
