"""Search the seed's training window: can a BiRNN keep val accuracy >= 0.85 with train accuracy < 0.92?

Every configuration is a DVC experiment, queued with `dvc exp run --queue -S ...` and run by
`dvc queue start -j N` workers, with train.seeds = 42, 43, 44. The search covers the
regularisers that keep the size rule: birnn.dropout, birnn.word_dropout, birnn.hidden_dim (only
widths whose BiRNN/baseline parameter ratio, counted on the built models, is within
compare.targets.max_parameter_ratio), train.weight_decay, prepare.max_vocab and prepare.max_len.

The experiments' targets are the BiRNN's trainings, train@birnn-<seed> (and prepare where
prepare.* changed): DVC's run cache never restores a train run, because those stages also write
outputs with `cache: false` that are neither metrics nor plots, so a whole-pipeline experiment
would retrain the baseline and the stacked BiRNN, three seeds each, every time. Each run's
metrics/train/birnn/seed<S>.json, committed in its experiment, holds the eval-mode train and
val accuracy of the epoch early stopping kept (lowest validation loss); the script checks it
against the run's dvc.lock entry (the params and the file's md5) before using it.

Configurations: the current defaults, then for a few fixed (weight_decay, max_vocab, max_len)
contexts the default BiRNN settings plus a seeded sample of the BiRNN grid, printed first.
Validation figures only choose: test accuracy is never read. Writes sweeps/window_search.json
(every configuration) and sweeps/window_search.md (the table and the decision).

    python sweeps/window_search.py [--jobs 2] [--list] [--dry-run] [--rev COMMIT]

A second call at the same commit reuses the experiments that succeeded and reruns the rest;
--rev collects (and re-renders) the experiments of an earlier commit without running any.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's pipeline package, whatever is installed

from pipeline import io  # noqa: E402
from pipeline import params as params_module  # noqa: E402
from pipeline.models import ModelConfig, RNNClassifier, count_parameters  # noqa: E402

SEEDS = (42, 43, 44)
SAMPLE_SEED = 20240  # picks the sampled BiRNN settings; change it for a different sample
DROPOUT = (0.3, 0.5, 0.7)
WORD_DROPOUT = (0.3, 0.5, 0.7)
HIDDEN_DIM = (48, 64, 80, 96)  # parameter_ratio drops the widths over the size rule per vocabulary
# (train.weight_decay, prepare.max_vocab, prepare.max_len): the defaults first, then one step along
# each axis, then all three towards a smaller, more regularised model.
CONTEXTS = (
    (0.3, 1000, 100),
    (1.0, 1000, 100),
    (0.1, 1000, 100),
    (0.3, 500, 100),
    (0.3, 2000, 100),
    (0.3, 1000, 50),
    (0.3, 1000, 200),
    (1.0, 500, 50),
)
SAMPLED = {0: 11}  # sampled BiRNN settings per context (context index: count); others get 3
KEYS = (
    "birnn.dropout",
    "birnn.word_dropout",
    "birnn.hidden_dim",
    "train.weight_decay",
    "prepare.max_vocab",
    "prepare.max_len",
)
CLASSES = 5  # BBC News's topics; each run's parameter count in its summary confirms it
OUT = ROOT / "sweeps" / "window_search"
POLL_S = 20


def sh(*args: str, env: dict | None = None) -> str:
    done = subprocess.run(args, check=False, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"error: `{' '.join(args)}` failed: {(done.stderr or done.stdout).strip()[-600:]}")
    return done.stdout


def parameters(p, hidden_dim: int, max_vocab: int) -> tuple[int, int]:
    """(BiRNN, baseline) trainable parameters, counted on the built models. The vocabulary is
    max_vocab: BBC News has over 16,000 training words seen twice, so the cap always binds
    (each run's summary confirms the BiRNN's count)."""
    base = ModelConfig.from_params(p.baseline, vocab_size=max_vocab, num_classes=CLASSES)
    birnn = ModelConfig.from_params(p.birnn, vocab_size=max_vocab, num_classes=CLASSES)
    birnn = ModelConfig(**{**birnn.__dict__, "hidden_dim": hidden_dim})
    return count_parameters(RNNClassifier(birnn)), count_parameters(RNNClassifier(base))


def configurations(p) -> list[dict]:
    """The defaults first, then per context its default BiRNN and a seeded sample of the grid."""
    default = dict(
        zip(
            KEYS,
            (
                p.birnn.dropout,
                p.birnn.word_dropout,
                p.birnn.hidden_dim,
                p.train.weight_decay,
                p.prepare.max_vocab,
                p.prepare.max_len,
            ),
            strict=True,
        )
    )
    if tuple(default[k] for k in KEYS[3:]) != CONTEXTS[0]:
        sys.exit("error: CONTEXTS[0] must be params.yaml's (weight_decay, max_vocab, max_len)")
    limit, rng = p.compare.targets.max_parameter_ratio, random.Random(SAMPLE_SEED)

    def ratio(h: int, vocab: int) -> float:
        birnn, base = parameters(p, h, vocab)
        return birnn / base

    configs = []
    for index, context in enumerate(CONTEXTS):
        fits = [(d, w, h) for d in DROPOUT for w in WORD_DROPOUT for h in HIDDEN_DIM if ratio(h, context[1]) <= limit]
        anchor = tuple(default[k] for k in KEYS[:3])
        for birnn in (anchor, *rng.sample([c for c in fits if c != anchor], SAMPLED.get(index, 3))):
            config = dict(zip(KEYS, (*birnn, *context), strict=True))
            config["parameters"], config["baseline_parameters"] = parameters(p, birnn[2], context[1])
            config["ratio"] = round(config["parameters"] / config["baseline_parameters"], 4)
            configs.append(config)
    return configs


def setting(key: str, value) -> str:
    # params.yaml is strict about types: a float must stay a float on the command line.
    return f"{key}={float(value)!r}" if isinstance(value, float) else f"{key}={value}"


def experiments(rev: str = "HEAD") -> dict[str, dict]:
    """{name: {"rev", "failed", "params"}} of the experiments of commit `rev`, from `dvc exp show --json`."""
    found = {}
    for baseline in json.loads(sh("dvc", "exp", "show", "--json", "--no-pager", "--rev", rev)):
        for group in baseline.get("experiments") or []:
            failed = (group.get("executor") or {}).get("state") == "failed"
            for exp in group.get("revs") or []:
                data = exp.get("data") or {}
                found[exp.get("name") or group.get("name")] = {
                    "rev": exp.get("rev"),
                    "failed": failed or bool(exp.get("error")),
                    "params": (data.get("params") or {}).get("params.yaml", {}).get("data", {}),
                }
    return found


def matches(exp: dict, config: dict, seeds: tuple[int, ...]) -> bool:
    def value(key: str):
        section, field = key.split(".")
        return exp["params"].get(section, {}).get(field)

    return all(value(k) == config[k] for k in KEYS) and value("train.seeds") == list(seeds)


def busy(names: set[str]) -> bool | None:
    """Whether `dvc queue status` still lists one of `names` as queued or running; None if it failed."""
    done = subprocess.run(("dvc", "queue", "status"), check=False, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:  # e.g. a worker's temporary copy half made: ask again at the next poll
        return None
    for line in done.stdout.splitlines():
        cells = line.split()
        if len(cells) >= 3 and cells[1] in names and cells[-1] in ("Queued", "Running"):
            return True
    return False


def run_queue(todo: list[tuple[str, dict]], extra: list[str], seeds, jobs: int) -> None:
    """Queue the experiments and let `jobs` workers run them; returns once none is left."""
    targets = [f"train@birnn-{s}" for s in seeds]
    for name, config in todo:
        sets = [setting(k, config[k]) for k in KEYS] + [f"train.seeds=[{','.join(map(str, seeds))}]", *extra]
        sh("dvc", "exp", "run", "--queue", "-n", name, *[a for s in sets for a in ("-S", s)], *targets)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",  # one thread per worker: two workers share the two cores
        "PYTHONPATH": str(ROOT),  # the workers run this checkout's pipeline, whatever is installed
    }
    log = ROOT / ".dvc" / "tmp" / "window_search.log"
    with open(log, "a") as out:  # the workers inherit this file: a pipe would never close
        subprocess.run(
            ("dvc", "queue", "start", "-j", str(jobs)),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
        )
    names, failures = {name for name, _ in todo}, 0
    while (state := busy(names)) is not False:
        failures = failures + 1 if state is None else 0
        if failures == 10:
            sys.exit("error: `dvc queue status` failed 10 times running; once it shows none running, rerun this script")
        time.sleep(POLL_S)


def run_summary(name: str, rev: str, config: dict, seed: int) -> dict:
    """metrics/train/birnn/seed<S>.json of an experiment, checked against its dvc.lock entry."""
    path = f"metrics/train/birnn/seed{seed}.json"
    text = sh("git", "show", f"{rev}:{path}")
    lock = yaml.safe_load(sh("git", "show", f"{rev}:dvc.lock"))["stages"]
    stage = lock.get(f"train@birnn-{seed}") or {}
    used = {
        **{f"birnn.{k}": v for k, v in stage["params"]["params.yaml"]["birnn"].items()},
        **stage["params"]["params.yaml"],
        **{f"prepare.{k}": v for k, v in lock["prepare"]["params"]["params.yaml"]["prepare"].items()},
    }
    md5 = next((o["md5"] for o in stage.get("outs", []) if o["path"] == path), None)
    run = json.loads(text)
    if any(used.get(k) != config[k] for k in KEYS) or md5 != hashlib.md5(text.encode()).hexdigest():
        sys.exit(f"error: {name}: {path} is not the output of a run with this configuration")
    if run.get("seed") != seed or run.get("trainable_parameters") != config["parameters"]:
        sys.exit(f"error: {name}: {path} has another seed or size than configured")
    return {
        k: run[k]
        for k in ("best_epoch", "epochs_run", "train_accuracy", "val_accuracy", "best_val_loss", "train_seconds")
    }


def spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": round(statistics.fmean(values), 6),
        "sd": round(statistics.stdev(values) if len(values) > 1 else 0.0, 6),
    }


def summarise(name: str, config: dict, exp: dict, seeds, targets) -> dict:
    runs = {str(s): run_summary(name, exp["rev"], config, s) for s in seeds}
    limit, patience = exp["params"]["train"]["max_epochs"], exp["params"]["train"]["patience"]
    val = [r["val_accuracy"] for r in runs.values()]
    train = [r["train_accuracy"] for r in runs.values()]
    row = {
        "name": name,
        "rev": exp["rev"],
        **config,
        "val_accuracy": spread(val),
        "train_accuracy": spread(train),
        "gap": spread([t - v for t, v in zip(train, val, strict=True)]),
        "seeds_val_met": sum(v >= targets.min_val_accuracy for v in val),
        "seeds_train_met": sum(t < targets.max_train_accuracy for t in train),
        # Runs that early stopping had not ended: the epoch limit did, with val loss still improving.
        "seeds_at_epoch_limit": sum(
            r["epochs_run"] == limit and r["best_epoch"] > limit - patience for r in runs.values()
        ),
        "per_seed": runs,
    }
    row["meets_both"] = (
        row["val_accuracy"]["mean"] >= targets.min_val_accuracy
        and row["train_accuracy"]["mean"] < targets.max_train_accuracy
        and config["ratio"] <= targets.max_parameter_ratio
    )
    return row


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
        "targets are the BiRNN's trainings, train@birnn-<seed>; its figures are in the experiment's "
        "metrics/train/birnn/seed<S>.json (`dvc exp show`'s compare.json columns are the base commit's). "
        f"Wall time: {result['wall_seconds']:.0f} s for {result['experiments_run']} experiments run by "
        f"{result['jobs']} queue workers with OMP_NUM_THREADS=1 ({result['train_seconds']:.0f} s of training "
        "in all). Every configuration's numbers: sweeps/window_search.json."
    )
    lines = ["# The seed's training window, searched", "", intro, "", verdict(rows, result["decision"], floor, ceiling)]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="parallel queue workers")
    parser.add_argument("--list", action="store_true", help="print the configurations and stop")
    parser.add_argument("--rev", help="collect the experiments of this earlier commit and run nothing")
    parser.add_argument(
        "--dry-run", action="store_true", help="2 configurations, 1 seed, 3 epochs; results go to sweeps/dry_run.*"
    )
    args = parser.parse_args()
    os.chdir(ROOT)
    p = params_module.load("params.yaml")
    configs = configurations(p)
    seeds, extra, prefix, out = SEEDS, [], "win", OUT
    if args.dry_run:
        configs, seeds, extra, prefix = [configs[0], configs[-1]], SEEDS[:1], ["train.max_epochs=3"], "dry"
        out = OUT.with_name("dry_run")
    names = [f"{prefix}-{i:02d}" for i in range(len(configs))]
    print(f"{len(configs)} configurations x {len(seeds)} seeds (sample seed {SAMPLE_SEED}):")
    for name, c in zip(names, configs, strict=True):
        print(f"  {name}  " + "  ".join(f"{k.split('.')[1]}={c[k]}" for k in KEYS) + f"  ratio={c['ratio']:.3f}")

    if args.list:
        return
    commit, started, ran = sh("git", "rev-parse", args.rev or "HEAD").strip(), time.monotonic(), 0
    for attempt in (1, 2):  # a failed experiment gets one more try
        have = experiments(commit)
        todo = [(n, c) for n, c in zip(names, configs, strict=True) if not (n in have and not have[n]["failed"])]
        clash = [
            n
            for n, c in zip(names, configs, strict=True)
            if n in have and not have[n]["failed"] and not matches(have[n], c, seeds)
        ]
        if clash:
            sys.exit(f"error: experiments {', '.join(clash)} exist with other params; `dvc exp remove` them first")
        if not todo or args.rev:
            break
        if sh("git", "status", "--porcelain", "--", "pipeline", "dvc.yaml", "dvc.lock", "params.yaml"):
            sys.exit(
                "error: commit pipeline/, dvc.yaml, dvc.lock and params.yaml first: queue workers see only commits"
            )
        if attempt == 2:
            print(f"retrying {len(todo)} failed: {', '.join(n for n, _ in todo)}", flush=True)
        if any(n in have for n, _ in todo):  # a failed task keeps its name until it leaves the queue
            sh("dvc", "queue", "remove", "--failed")
        print(f"running {len(todo)} experiments with {args.jobs} workers ...", flush=True)
        run_queue(todo, extra, seeds, args.jobs)
        ran += len(todo)
    wall = time.monotonic() - started

    have = experiments(commit)
    failed = [n for n in names if n not in have or have[n]["failed"]]
    if failed:
        sys.exit(f"error: experiments {', '.join(failed)} are missing or failed; see `dvc queue logs <name>`")
    targets = p.compare.targets
    rows = sorted(
        (summarise(n, c, have[n], seeds, targets) for n, c in zip(names, configs, strict=True)),
        key=lambda r: -r["val_accuracy"]["mean"],
    )
    timing = {"jobs": args.jobs, "experiments_run": ran, "wall_seconds": round(wall, 1)}
    previous = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    if not ran and previous.get("commit") == commit:  # nothing ran now: keep the timing of the run that did
        timing = {k: previous[k] for k in timing}
    train = have[names[0]]["params"]["train"]
    result = {
        "commit": commit,
        "seeds": list(seeds),
        "sample_seed": SAMPLE_SEED,
        **timing,
        "max_epochs": train["max_epochs"],
        "patience": train["patience"],
        "train_seconds": round(sum(r["train_seconds"] for row in rows for r in row["per_seed"].values()), 1),
        "targets": {
            "min_val_accuracy": targets.min_val_accuracy,
            "max_train_accuracy": targets.max_train_accuracy,
            "max_parameter_ratio": targets.max_parameter_ratio,
        },
        "decision": decide(rows),
        "configurations": rows,
    }
    io.write_json(out.with_suffix(".json"), result)
    io.write_text(out.with_suffix(".md"), render(result))
    print(render(result))


if __name__ == "__main__":
    main()
