"""metrics/report.md from compare's details: the models across seeds, the ablation ladder, the
starter experiment's targets, in words."""

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


def _delta(test: dict[str, Any]) -> str:
    """ "+12.3 (p = 0.004)": a paired difference of accuracy in points, with its p-value."""
    return f"{100 * test['mean_difference']:+.1f} (p = {_p(test)})"


def _ladder(details: dict, names: dict[str, str]) -> list[str]:
    """The ablation ladder's table and what it says, in numbers."""
    summary, sizes, ladder = details["summary"], details["parameters"], details["ladder"]
    rows = [{"model": ladder["total"]["against"], "change": [], "val": None}, *ladder["rungs"]]
    lines = [
        "",
        "## What made the difference: the ablation ladder",
        "",
        "From the starter experiment's Before to its After one change at a time, every rung trained for every "
        "seed; Δ val is the change in validation accuracy against the row it names, in points, the mean "
        "over seeds with a paired t-test across seeds (run s against run s).",
        "",
        "| Rung | Change | Train acc | Val acc | Test acc | Gap (pp) | Parameters | Δ val | against |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]

    def row(label: str, step: dict) -> str:
        name, s = step["model"], summary[step["model"]]
        change = "; ".join(f"`{c}`" for c in step["change"]) or ("—" if step["val"] is None else "none")
        delta = "—" if step["val"] is None else _delta(step["val"])
        against = "—" if step["val"] is None else names[step["against"]].split(":")[0]
        cells = [_cell(s[split]["accuracy"]) for split in ("train", "val", "test")]
        return (
            f"| {label} | {change} | " + " | ".join(cells) + f" | {_cell(s['gap'])} | {sizes[name]:,} | {delta} "
            f"| {against} |"
        )

    for step in rows:
        lines.append(row(names[step["model"]], step))
    for step in ladder["counterfactuals"]:
        lines.append(row(names[step["model"]], step))
    total = ladder["total"]["val"]["mean_difference"]
    bidirectional = ladder["rungs"][0]
    rest = [step for step in ladder["rungs"][1:]]
    share = f"{100 * bidirectional['val']['mean_difference'] / total:.0f} %" if total else "n/a"
    parts = ", ".join(
        f"{' and '.join(c.split(':')[0].replace('_', ' ') for c in step['change']) or 'no change'} "
        f"{100 * step['val']['mean_difference']:+.1f}"
        for step in rest
    )
    lines += [
        "",
        f"**Reading both ways earns {100 * bidirectional['val']['mean_difference']:+.1f} points** of validation "
        f"accuracy on its own rung (p = {_p(bidirectional['val'])}), {share} of the "
        f"{100 * total:+.1f} points from Before to After; the other "
        f"{100 * (total - bidirectional['val']['mean_difference']):+.1f} come from the rest of the ladder ({parts}).",
    ]
    one_way, final = ladder["counterfactuals"]
    lines.append(
        f"**In the After, reading one way instead of both changes validation accuracy by "
        f"{100 * one_way['val']['mean_difference']:+.1f} points** (p = {_p(one_way['val'])}); the final state "
        f"instead of max pooling as the readout by {100 * final['val']['mean_difference']:+.1f} "
        f"(p = {_p(final['val'])}). A rung's gain depends on the rungs below it: what reading both ways "
        "earns over a final-state readout and what it earns once the readout pools over every state are "
        "the two numbers above."
    )
    return lines


def _window(details: dict, names: dict[str, str]) -> list[str]:
    """How the window model was selected, and what the same runs would have kept without the ceiling."""
    runs = list(details["training"]["window"].values())
    selection = runs[0]["selection"] if runs else ""
    lines = [
        "",
        f"Selected by early stopping on train and validation data only: the kept epoch is the {selection} "
        "(the ceiling is the starter experiment's own requirement; test accuracy took no part).",
    ]
    free = [r["unconstrained"] for r in runs if "unconstrained" in r]
    if free:
        val = sum(r["val_accuracy"] for r in free) / len(free)
        train = sum(r["train_accuracy"] for r in free) / len(free)
        under = sum(r["train_accuracy"] < details["targets"]["window"]["max_train_accuracy"]["threshold"] for r in free)
        lines.append(
            f"Without the ceiling, plain early stopping on the same runs would have kept val {100 * val:.1f} % and "
            f"train {100 * train:.1f} % on the mean ({under} of {len(free)} seeds under the ceiling); the "
            f"unconstrained BiRNN, {names['birnn'].split(': ', 1)[-1]}, is its own row above."
        )
    return lines


def _calibration(details: dict, names: dict[str, str]) -> list[str]:
    """Each model's temperature and its ECE and NLL before and after temperature scaling."""
    calibration, seeded = details["calibration"], details["parameters"]["ratio"]
    lines = [
        "",
        "## Calibration: do the probabilities mean what they say?",
        "",
        "Expected calibration error (ECE, in %: over 15 equal-width bins of the most likely class's probability, "
        "the share of texts in a bin times the gap between its accuracy and its mean probability) and negative "
        "log-likelihood (NLL, the loss), mean ± sd over seeds. *After*: the probabilities divided through one "
        "temperature T per run, fitted on that run's validation split alone; it never changes the most likely "
        "class, so every accuracy above stands. The served checkpoints carry their run's T, and `pipeline "
        "predict` and the exported model apply it. A reference's T scales its log-probabilities.",
        "",
        "| Model | T | Val ECE | Val ECE after | Test ECE | Test ECE after | Test NLL | Test NLL after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c in calibration.items():
        seed = name in seeded
        cells = [
            _cell(c["temperature"], 1, 2, seed),
            _cell(c["val"]["ece"], seeded=seed),
            _cell(c["val"]["ece_scaled"], seeded=seed),
            _cell(c["test"]["ece"], seeded=seed),
            _cell(c["test"]["ece_scaled"], seeded=seed),
            _cell(c["test"]["loss"], 1, 3, seed),
            _cell(c["test"]["loss_scaled"], 1, 3, seed),
        ]
        lines.append(f"| {names[name]} | " + " | ".join(cells) + " |")
    lines += ["", "The reliability diagrams (Figures, below) show the served seed's bins on the test split."]
    return lines


def _errors(details: dict, names: dict[str, str]) -> list[str]:
    """What the errors file and the suspect list hold, in numbers, with links to them."""
    e, s = details["errors"], details["suspects"]
    n, per_model = e["articles"], e["per_model"]
    fewest, most = min(per_model, key=per_model.get), max(per_model, key=per_model.get)
    lines = [
        "",
        "## The errors, and suspect training labels",
        "",
        f"- [errors.md](errors.md) (and `errors.jsonl`): every test article the served seed of each RNN model "
        f"misclassifies, from {per_model[fewest]} of {n} ({fewest}) to {per_model[most]} ({most}); "
        f"{len(e['every_model_wrong'])} article(s) every RNN model gets wrong.",
    ]
    if e["pairs"]:
        top = e["pairs"][0]
        lines.append(
            f"- The most frequent confusion: {top['actual']} read as {top['predicted']}, {top['errors']} errors "
            f"over the models ({top['models']} of {len(per_model)} make it)."
        )
    if e["without_test_article"]:
        missing = ", ".join(f"`{label}`" for label in e["without_test_article"])
        lines.append(f"- No test article has the class {missing}: its test scores are not measured.")
    if s["searched"]:
        lines.append(
            f"- [suspects.md](suspects.md): cleanlab flags **{s['count']} of {s['articles']} training articles** "
            f"whose given label the out-of-fold TF-IDF reference ({s['folds_used']} folds) contradicts; "
            "none was relabelled."
        )
    else:
        lines.append(f"- [suspects.md](suspects.md): the suspect-label search did not run: {s['reason']}.")
    return lines


def render_report(details: dict, names: dict[str, str]) -> str:
    summary, sizes, seeds = details["summary"], details["parameters"], details["seeds"]
    n = len(seeds)
    lines = [
        "# Results: what made the difference, and the starter experiment's window",
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
    lines += _ladder(details, names)
    lines += _calibration(details, names)
    lines += _errors(details, names)
    for name in details["targets"]:
        lines += ["", f"## Targets: {names[name]}", "", *_target_lines(name, details["targets"][name], sizes)]
        if name == "window":
            lines += _window(details, names)

    t = details["paired_t_test"]
    bvb, svb = t["birnn_vs_baseline"], t["stacked_vs_birnn"]
    stacked, birnn = summary["stacked"], summary["birnn"]
    lines += [
        "",
        "## Did stacking help? (the starter experiment's bonus question)",
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
        seconds = sum(r["train_seconds"] for r in runs.values()) / len(runs)
        lines.append(f"- {name}: kept epoch / epochs run per seed: {epochs}; {seconds:.1f} s of training per run")
    for name, seconds in details.get("reference_train_seconds", {}).items():
        lines.append(f"- {name}: {seconds:.1f} s of training (one fit)")
    lines.append("")
    return "\n".join(lines)
