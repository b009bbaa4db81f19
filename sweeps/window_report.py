"""The window search's conclusion and table: what sweeps/window_search.py writes to window_search.md.

Pure functions of the collected configurations (no DVC, no training), so the rule that
decides the default can be tested on made-up scores.
"""

from __future__ import annotations

from window_space import KEYS


def decide(rows: list[dict], within: float = 0.02) -> dict:
    best = max(rows, key=lambda r: r["val_accuracy"]["mean"])
    meeting = [r for r in rows if r["meets_both"]]
    close = [r for r in meeting if r["val_accuracy"]["mean"] >= best["val_accuracy"]["mean"] - within]
    pick = max(close, key=lambda r: r["val_accuracy"]["mean"]) if close else None
    return {
        "best": best["name"],
        "meeting_both": [r["name"] for r in meeting],
        "within": within,
        "proposed_default": pick["name"] if pick else None,
        "best_meeting": max(meeting, key=lambda r: r["val_accuracy"]["mean"])["name"] if meeting else None,
    }


def pct(s: dict) -> str:
    return f"{100 * s['mean']:.1f} ± {100 * s['sd']:.1f}"


def row_line(i: int, r: dict, n: int) -> str:
    cells = [
        i,
        r["name"] + (" ✓" if r["meets_both"] else ""),
        *(r[k] for k in KEYS),
        f"{r['ratio']:.2f}",
        pct(r["val_accuracy"]),
        pct(r["train_accuracy"]),
        f"{100 * r['gap']['mean']:.1f}",
        f"{r['seeds_val_met']}/{n}",
        f"{r['seeds_train_met']}/{n}",
        f"{r['seeds_at_epoch_limit']}/{n}",
        ", ".join(str(s["best_epoch"]) for s in r["per_seed"].values()),
    ]
    return "| " + " | ".join(map(str, cells)) + " |"


def verdict(rows: list[dict], d: dict, floor: str, ceiling: str) -> str:
    by_name = {r["name"]: r for r in rows}
    best = by_name[d["best"]]
    best_text = f"{best['name']} ({pct(best['val_accuracy'])} % val, {pct(best['train_accuracy'])} % train)"
    if d["proposed_default"]:
        p = by_name[d["proposed_default"]]
        return (
            f"**{p['name']} meets both targets on the mean, within {100 * d['within']:g} points of the best mean "
            f"val accuracy**: {pct(p['val_accuracy'])} % val and {pct(p['train_accuracy'])} % train; the best is "
            f"{best_text}. It is the proposed new default."
        )
    if d["best_meeting"]:
        m = by_name[d["best_meeting"]]
        cost = 100 * (best["val_accuracy"]["mean"] - m["val_accuracy"]["mean"])
        return (
            f"**The ceiling costs accuracy.** {len(d['meeting_both'])} of {len(rows)} configurations meet "
            f"val ≥ {floor} and train < {ceiling} on the mean. The best of them, {m['name']}, reaches "
            f"{pct(m['val_accuracy'])} % val ({pct(m['train_accuracy'])} % train), {cost:.1f} points below the "
            f"best configuration, {best_text}; the rule allows {100 * d['within']:g}."
        )
    return (
        f"**The ceiling costs accuracy.** None of the {len(rows)} configurations meets val ≥ {floor} and "
        f"train < {ceiling} on the mean. The best is {best_text}."
    )


def render(result: dict, top: int = 12) -> str:
    rows, n, t = result["configurations"], len(result["seeds"]), result["targets"]
    floor, ceiling = f"{100 * t['min_val_accuracy']:g} %", f"{100 * t['max_train_accuracy']:g} %"
    head = ["#", "experiment", "dropout", "word dropout", "hidden", "weight decay", "vocab", "tokens"]
    head += ["size ratio", "val acc %", "train acc %", "gap pp", f"seeds val ≥ {floor}"]
    head += [f"seeds train < {ceiling}", "seeds ended by the epoch limit", "kept epochs"]
    table = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    table += [row_line(i, r, n) for i, r in enumerate(rows, 1) if i <= top or r["meets_both"]]
    commit, seeds = result["commit"][:10], ", ".join(map(str, result["seeds"]))
    intro = (
        f"{len(rows)} BiRNN configurations × {n} seeds ({seeds}), made by `make sweep` (sweeps/window_search.py, "
        f"sample seed {result['sample_seed']}). Accuracies are eval-mode, on the whole split, at the epoch early "
        "stopping kept (lowest validation loss), mean ± sd across seeds; the size ratio is BiRNN / baseline "
        f"parameters at that vocabulary (limit {t['max_parameter_ratio']:g}). Sorted by mean val accuracy; shown: "
        f"the top {top} and every configuration meeting val ≥ {floor} and train < {ceiling} on the mean (✓). "
        "Test accuracy was not used."
    )
    how = (
        f"Each configuration is a DVC experiment of commit {commit} (`dvc exp show --rev {commit}`) whose "
        "target is the BiRNN's training stage, train@birnn, which trains every seed; its figures are in the "
        "experiment's metrics/train/birnn/seed<S>.json (`dvc exp show`'s compare.json columns are the base "
        f"commit's). Wall time: {result['wall_seconds']:.0f} s for {result['experiments_run']} experiments run by "
        f"{result['jobs']} queue workers with OMP_NUM_THREADS={result['omp_num_threads']}, which caps the runs "
        f"a stage trains side by side ({result['train_seconds']:.0f} s of training in all). Every "
        "configuration's numbers: sweeps/window_search.json."
    )
    lines = [
        "# The starter experiment's training window, searched",
        "",
        intro,
        "",
        verdict(rows, result["decision"], floor, ceiling),
    ]
    window = [r for r in rows if r["meets_both"]]
    if window:
        capped = sum(r["seeds_at_epoch_limit"] > 0 for r in window)
        lines += [
            "",
            f"{capped} of the {len(window)} configurations in the window have runs that the epoch limit "
            f"(train.max_epochs = {result['max_epochs']}) ended before early stopping could: their validation loss "
            f"had improved within the last {result['patience']} epochs, so with a higher limit they may keep a later, "
            "better-fitted epoch (column: seeds ended by the epoch limit).",
        ]
    return "\n".join([*lines, "", *table, "", how, ""])
