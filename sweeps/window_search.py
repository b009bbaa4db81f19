"""Search the starter experiment's training window: can a BiRNN keep val accuracy >= 0.85 with train accuracy < 0.92?

Every configuration is a DVC experiment, queued with `dvc exp run --queue -S ...` and run by
`dvc queue start -j N` workers, with train.seeds = 42, 43, 44. The search covers the
regularisers that keep the size rule: birnn.dropout, birnn.word_dropout, birnn.hidden_dim (only
widths whose BiRNN/baseline parameter ratio, counted on the built models, is within
compare.targets.max_parameter_ratio), train.weight_decay, prepare.max_vocab and prepare.max_len.

The experiments' target is the BiRNN's training stage, train@birnn (and prepare where prepare.*
changed), which trains every seed of train.seeds: the search reads nothing else, and train.*
(train.seeds too) are params of every model's training stage, so a whole-pipeline experiment
would train all ten models, then evaluate and compare them, every time.

Cores: the default is two queue workers whose stages train one run at a time, OMP_NUM_THREADS=1
(which caps train.threads), so two one-thread runs share the two cores; in general
OMP_NUM_THREADS = cores // jobs. That is faster in principle than one worker whose stage trains
two seeds side by side, though each run computes alike either way: three seeds on two processes
leave a core idle while the last trains alone (longer where early stopping ends the runs at
different epochs), and so do the serial parts of each experiment (DVC's copy of the commit,
check-params, prepare where it reruns, loading the data, committing), which a second worker
trains through. Only the queue's last experiment runs alone. Runs write the same bytes however
many train beside them (pipeline/stages/train.py), so the choice changes the wall time only.

Each run's metrics/train/birnn/seed<S>.json, committed in its experiment, holds the eval-mode
train and val accuracy of the epoch early stopping kept (lowest validation loss). The script
uses them only if the experiment's dvc.lock entries for train@birnn and prepare name the
configured params and train.seeds, and the md5 DVC recorded for the folder metrics/train/birnn
(a `cache: false` out) is the one recomputed from the committed files (folder_md5), which are
one summary per seed and nothing else.

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
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's pipeline package, whatever is installed

from pipeline.core import files, layout  # noqa: E402
from pipeline.core import params as params_module  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the modules beside this script
from window_report import decide, render  # noqa: E402
from window_space import KEYS, SAMPLE_SEED, SEEDS, configurations  # noqa: E402

OUT = ROOT / "sweeps" / "window_search"
POLL_S = 20
MODEL = "birnn"
STAGE = f"train@{MODEL}"  # the experiments' target: every seed of train.seeds, side by side
RUN_FIELDS = ("best_epoch", "epochs_run", "train_accuracy", "val_accuracy", "best_val_loss", "train_seconds")


def output(*args: str, env: dict | None = None, cwd: Path = ROOT) -> bytes:
    done = subprocess.run(args, check=False, cwd=cwd, env=env, capture_output=True)
    if done.returncode:
        said = (done.stderr or done.stdout).decode(errors="replace").strip()[-600:]
        sys.exit(f"error: `{' '.join(args)}` failed: {said}")
    return done.stdout


def sh(*args: str, env: dict | None = None, cwd: Path = ROOT) -> str:
    return output(*args, env=env, cwd=cwd).decode()


def cores() -> int:
    """The cores this process may run on (its affinity where the system tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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


def worker_threads(jobs: int) -> int:
    """The OMP_NUM_THREADS of each of `jobs` queue workers: the cores shared out, so that the runs
    their stages train side by side (train.threads, capped by it), one core each, fill them."""
    return max(1, cores() // jobs)


def run_queue(todo: list[tuple[str, dict]], extra: list[str], seeds, jobs: int) -> None:
    """Queue the experiments and let `jobs` workers run them; returns once none is left."""
    for name, config in todo:
        sets = [setting(k, config[k]) for k in KEYS] + [f"train.seeds=[{','.join(map(str, seeds))}]", *extra]
        sh("dvc", "exp", "run", "--queue", "-n", name, *[a for s in sets for a in ("-S", s)], STAGE)
    env = {
        **os.environ,
        # Caps the runs a stage trains side by side (train.threads, by pipeline/stages/train.py's
        # thread_count) and every library's thread pool: jobs x this busy cores in all.
        "OMP_NUM_THREADS": str(worker_threads(jobs)),
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


def folder_md5(contents: dict[str, bytes]) -> str:
    """The md5 DVC 3 records in dvc.lock for a folder out holding `contents` ({path inside it: bytes}).

    As dvc_data's Tree.digest computes it: the md5 of the JSON text (json.dumps, sort_keys) of
    the list of {"md5": the file's md5, "relpath": its posix path in the folder}, sorted by
    relpath, with ".dir" appended. A file's md5 is that of its bytes as they are (`hash: md5`;
    DVC 2's md5-dos2unix read CRLF as LF), whether or not the out is cached.
    """
    entries = sorted(
        ({"md5": hashlib.md5(data).hexdigest(), "relpath": path} for path, data in contents.items()),
        key=lambda entry: entry["relpath"],
    )
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def committed(rev: str, folder: str, repo: Path = ROOT) -> dict[str, bytes]:
    """{path inside `folder`: bytes} of every file under `folder` in commit `rev`."""
    listed = output("git", "ls-tree", "-r", "-z", "--name-only", rev, "--", f"{folder}/", cwd=repo)
    names = [name.decode() for name in listed.split(b"\0") if name]
    return {name[len(folder) + 1 :]: output("git", "show", f"{rev}:{name}", cwd=repo) for name in names}


def run_summaries(name: str, rev: str, config: dict, seeds, repo: Path = ROOT) -> dict[str, dict]:
    """{seed: figures} from metrics/train/birnn/seed<S>.json of an experiment, checked against
    its dvc.lock: the params train@birnn and prepare ran with, and the folder's md5."""
    lock = yaml.safe_load(sh("git", "show", f"{rev}:dvc.lock", cwd=repo))["stages"]
    stage, prepare = lock.get(STAGE), lock.get("prepare")
    if not stage or not prepare:
        sys.exit(f"error: {name}: dvc.lock has no {STAGE} or prepare stage; was it made by this pipeline?")
    sections = {**stage["params"]["params.yaml"], "prepare": prepare["params"]["params.yaml"]["prepare"]}
    used = {f"{section}.{k}": v for section, values in sections.items() for k, v in values.items()}
    folder = layout.run_summary(MODEL, seeds[0]).parent.as_posix()
    contents = committed(rev, folder, repo)
    out = next((o for o in stage.get("outs", []) if o["path"] == folder), {})
    recorded = (out.get("hash"), out.get("md5"), out.get("nfiles"), out.get("size"))
    recomputed = ("md5", folder_md5(contents), len(contents), sum(map(len, contents.values())))
    if any(used.get(k) != config[k] for k in KEYS) or used.get("train.seeds") != list(seeds) or recorded != recomputed:
        sys.exit(f"error: {name}: {folder}/ is not the output of a run with this configuration")
    names = {layout.run_summary(MODEL, s).name: s for s in seeds}
    if set(contents) != set(names):
        sys.exit(f"error: {name}: {folder}/ holds {', '.join(sorted(contents))}, not one summary per seed")
    runs = {}
    for file, seed in names.items():
        run = json.loads(contents[file])
        if run.get("seed") != seed or run.get("trainable_parameters") != config["parameters"]:
            sys.exit(f"error: {name}: {folder}/{file} has another seed or size than configured")
        runs[str(seed)] = {k: run[k] for k in RUN_FIELDS}
    return runs


def spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": round(statistics.fmean(values), 6),
        "sd": round(statistics.stdev(values) if len(values) > 1 else 0.0, 6),
    }


def summarise(name: str, config: dict, exp: dict, seeds, targets) -> dict:
    runs = run_summaries(name, exp["rev"], config, seeds)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--jobs", type=int, default=2, help="parallel queue workers; each gets OMP_NUM_THREADS = cores // jobs"
    )
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
        threads = worker_threads(args.jobs)
        print(f"running {len(todo)} experiments with {args.jobs} workers, OMP_NUM_THREADS={threads} ...", flush=True)
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
    timing = {
        "jobs": args.jobs,
        "omp_num_threads": worker_threads(args.jobs),
        "experiments_run": ran,
        "wall_seconds": round(wall, 1),
    }
    previous = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    if not ran and previous.get("commit") == commit and timing.keys() <= previous.keys():
        timing = {k: previous[k] for k in timing}  # nothing ran now: keep the timing of the run that did
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
    files.write_json(out.with_suffix(".json"), result)
    files.write_text(out.with_suffix(".md"), render(result))
    print(render(result))


if __name__ == "__main__":
    main()
