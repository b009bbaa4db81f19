"""Data-parallel training on one machine: N processes x 1 thread against 1 process x N threads.

Runs the real stage command, `pipeline train MODEL --seed S`, on BBC News (data/prepared, run
`dvc repro prepare` first) in a scratch folder, alternating the two settings round by round
with the same global batch, epochs and data, and prints wall time and training tokens per
second (all ranks together) side by side, with the ratio.

    python benchmarks/train_processes.py [--model birnn] [--epochs 5] [--rounds 3] [--processes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def run_once(folder: Path, model: str, seed: int) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pipeline", "train", model, "--seed", str(seed)],
        cwd=folder,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    summary = json.loads((folder / "metrics" / "train" / model / f"seed{seed}.json").read_text())
    return wall, summary["tokens_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="birnn")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    root = Path.cwd()
    raw = yaml.safe_load((root / "params.yaml").read_text())
    seed = raw["train"]["seeds"][0]
    settings = {
        f"1 process x {args.processes} threads": {"processes": 1, "threads": args.processes},
        f"{args.processes} processes x 1 thread": {"processes": args.processes, "threads": 1},
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as scratch:
        folders = {}
        for i, (name, overrides) in enumerate(settings.items()):
            folder = Path(scratch) / str(i)
            shutil.copytree(root / "data" / "prepared", folder / "data" / "prepared")
            params = yaml.safe_load(yaml.safe_dump(raw))
            params["train"].update(overrides, max_epochs=args.epochs)
            params[args.model]["early_stopping"] = False  # every round runs the same epochs
            (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            folders[name] = folder
        for folder in folders.values():  # warm-up: imports, the C++ recurrence build
            run_once(folder, args.model, seed)
        for _ in range(args.rounds):
            for name, folder in folders.items():
                results[name].append(run_once(folder, args.model, seed))
    batch = raw["train"]["batch_size"]
    print(f"{args.model}, {args.epochs} epochs, global batch {batch}, median of {args.rounds} rounds")
    base_wall = base_rate = None
    for name, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        rate = statistics.median(r for _, r in runs)
        base_wall, base_rate = base_wall or wall, base_rate or rate
        print(
            f"{name:<26} wall {wall:6.1f} s ({base_wall / wall:4.2f}x)   "
            f"train tokens/s {rate / 1e3:6.0f}k ({rate / base_rate:4.2f}x)"
        )


if __name__ == "__main__":
    main()
