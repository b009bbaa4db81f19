"""Faults under the real `dvc repro`, on the tiny corpus in a temporary git repo.

- A params typo, in params.yaml or through `dvc exp run -S`, costs nothing: one line naming the
  key, and every output byte for byte as it was (DVC removes a stage's outputs before running it,
  so the check must come first: the check-params stage).
- Each stage is killed with SIGKILL at seeded random moments, and a train stage also while its
  seeds train side by side in the workers it forked (the stage itself with SIGKILL, and `dvc repro`
  with SIGKILL and SIGTERM): after every kill no process of the stage is left, its workers
  included, and every output present is the uninterrupted run's, byte for byte; then `dvc repro`
  finishes with every output identical to the uninterrupted run's and no temp file anywhere.

Timing fields (seconds, tokens per second) are the only bytes allowed to differ between runs.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import tiny_params_dict
from dvc_repo import BIN, repo_env, runner, write_project

pytestmark = pytest.mark.e2e

OUTPUTS = ("data", "models", "metrics", "dvclive")
TIMING = ("train_seconds", "tokens_per_second", "seconds_per_epoch", "reference_train_seconds")
# The report's sentences that quote them (compare's per-run and fastText's training time).
TIMED_LINE = re.compile(rb"[\d.]+ s of training")
SHELLS = ("sh", "dash", "bash", "zsh")
# Each stage and how many kill points it gets, at moments up to `span` seconds after it starts
# (a point past its end lets it finish). A train stage loads for seconds, trains every seed in a
# worker of its own, then writes all the runs' outputs: most of the time goes there.
PLAN = {
    "check-params": (1, 0.5),
    "download": (2, 0.6),
    "prepare": (2, 0.8),
    "train@birnn": (3, 14.0),
    "train@stacked": (2, 14.0),
    "publish@birnn": (2, 0.4),
    "evaluate": (2, 4.5),
    "compare": (2, 2.5),
}
# Kills timed from the moment a train stage's workers are up, while they train: of `dvc repro`
# itself, and of the stage, whose workers must not train on without it.
WHILE_TRAINING = {
    "train@birnn": [("SIGKILL", 0.3), ("SIGTERM", 0.3), ("stage", 0.0), ("stage", 0.6)],
    "train@stacked": [("stage", 0.3)],
}


def _params() -> dict:
    """The tiny params, with each model's two seeds trained side by side in forked workers, every
    epoch of two hundred: about 4 s of training, several times the latest kill timed from the
    workers' start, on a fast machine too (forty epochs, under a second, once let them finish first)."""
    params = tiny_params_dict()
    params["train"].update(threads=2, max_epochs=200, patience=200)
    return params


def _init(repo: Path):
    write_project(repo, _params())
    env = repo_env(repo)
    sh = runner(repo, env)
    sh("git", "init", "-q")
    sh(str(BIN / "dvc"), "init", "-q")
    (repo / ".dvc" / "config").write_text("[core]\n    analytics = false\n    check_update = false\n")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "tiny project")
    return env, sh


def _untimed(data):
    if isinstance(data, dict):
        return {k: _untimed(v) for k, v in data.items() if k not in TIMING}
    return [_untimed(v) for v in data] if isinstance(data, list) else data


def _normalised(path: Path) -> bytes:
    """A file's bytes, with the timing fields of training summaries, curves and scores (fastText's
    training time) taken out, at any depth (compare's details.json gathers them), and the report's
    sentences that quote them."""
    if path.name == "seconds_per_epoch.tsv":
        return b"<timing>"
    timed = ("metrics/train/", "metrics/scores/", "dvclive/", "metrics/details.json")
    if path.suffix == ".json" and any(part in path.as_posix() for part in timed):
        return json.dumps(_untimed(json.loads(path.read_text(encoding="utf-8"))), sort_keys=True).encode()
    if path.name == "report.md":
        return TIMED_LINE.sub(b"<timing> s of training", path.read_bytes())
    return path.read_bytes()


def _snapshot(repo: Path, hidden: bool = True) -> dict[str, bytes]:
    """Every file and folder under the outputs' folders; without `hidden`, none whose name starts
    with a dot (temp files and folders, which a SIGKILL leaves for the next run to remove)."""
    entries = {}
    for folder in OUTPUTS:
        for path in sorted((repo / folder).rglob("*")):
            parts = path.relative_to(repo).parts
            # DVC's own: a failed `dvc repro` takes back the .gitignore lines of the stages it
            # did finish (treeverse/dvc#11091), whoever stopped it.
            if path.name == ".gitignore" or (not hidden and any(part.startswith(".") for part in parts)):
                continue
            entries["/".join(parts)] = _normalised(path) if path.is_file() else b"<folder>"
    return entries


def _strays(repo: Path) -> list[str]:
    """Temp files and folders anywhere in the project, outside git's and DVC's own."""
    return [
        str(p.relative_to(repo))
        for p in repo.rglob(".*")
        if p.name.endswith((".tmp", ".old")) and not {".git", ".dvc"} & set(p.relative_to(repo).parts)
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """An uninterrupted `dvc repro`, committed: the outputs every faulted run must end with."""
    repo = tmp_path_factory.mktemp("faults") / "reference"
    env, sh = _init(repo)
    sh(str(BIN / "dvc"), "repro")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "reference run")
    return repo, env


def _copy(reference, tmp_path) -> tuple[Path, dict[str, str]]:
    repo, env = reference
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy, symlinks=True)
    return copy, {**env, "PYTHONPATH": str(copy)}


def _all_files(repo: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(repo)): p.read_bytes()
        for p in sorted(repo.rglob("*"))
        if p.is_file()
        and ".git" not in p.relative_to(repo).parts[:1]
        and p.relative_to(repo).parts[:2] != (".dvc", "tmp")
    }


@pytest.mark.parametrize("how", ["edit params.yaml", "dvc exp run -S"])
def test_a_params_typo_through_dvc_costs_nothing(reference, tmp_path, how):
    repo, env = _copy(reference, tmp_path)
    before = _all_files(repo)
    if how == "edit params.yaml":
        text = (repo / "params.yaml").read_text()
        (repo / "params.yaml").write_text(
            text.replace("birnn:\n  cell: rnn\n", "birnn:\n  cell: rnn\n  dropuot: 0.4\n", 1)
        )
        command = [str(BIN / "dvc"), "repro"]
    else:
        command = [str(BIN / "dvc"), "exp", "run", "-S", "+birnn.dropuot=0.4"]
    assert "dropuot" not in before["params.yaml"].decode()
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    ours = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("error: ")]
    assert ours == [
        "error: birnn.dropuot: unknown key (allowed: cell, embed_dim, hidden_dim, num_layers, bidirectional, "
        "dropout, word_dropout, readout, early_stopping, max_train_accuracy, weight_decay)"
    ]
    output = done.stdout + done.stderr
    assert "Running stage 'check-params'" in output
    assert "Running stage 'train" not in output
    after = _all_files(repo)
    assert "dropuot" in after.pop("params.yaml").decode()
    before.pop("params.yaml")
    assert after == before  # models, metrics, curves, dvc.lock: byte for byte


def _stage_process(dvc: subprocess.Popen, stage: str, timeout: float = 300) -> psutil.Process | None:
    """The running `pipeline` process of `stage` under this `dvc repro`, or None if dvc ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for child in psutil.Process(dvc.pid).children(recursive=True):
                try:
                    if child.name() not in SHELLS and child.environ().get("DVC_STAGE") == stage:
                        return child
                except psutil.Error:
                    continue
        except psutil.NoSuchProcess:
            pass
        if dvc.poll() is not None:
            return None
        time.sleep(0.02)
    raise AssertionError(f"{stage} never started")


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _workers(stage: psutil.Process, count: int = 2, timeout: float = 300) -> list[psutil.Process]:
    """The `count` workers a train stage forks to train its seeds (its children running its own
    command line for a while: a subprocess shows it too, for the moment before its exec), once
    they are all up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            command, children = stage.cmdline(), stage.children()
        except psutil.NoSuchProcess:
            raise AssertionError("the train stage ended before its workers started") from None
        found = []
        for child in children:
            try:
                if child.cmdline() == command and _running(child) and time.time() - child.create_time() > 0.2:
                    found.append(child)
            except psutil.Error:
                continue
        if len(found) >= count:
            return found
        time.sleep(0.01)
    raise AssertionError("the train stage's workers never started")


def _left_running(stage: str) -> list[psutil.Process]:
    left = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("DVC_STAGE") == stage and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
        except psutil.Error:
            continue
    return left


def _kill_once(repo: Path, env: dict[str, str], stage: str, delay: float, victim: str, training: bool) -> None:
    """`dvc repro <stage>`; `delay` s into the stage (with `training`, `delay` s after its workers
    are up), send a signal to the stage or to dvc."""
    dvc = subprocess.Popen(
        [str(BIN / "dvc"), "repro", stage],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        process = _stage_process(dvc, stage)
        workers = []
        if process is not None:
            if training:
                workers = _workers(process)
            time.sleep(delay)
            if training:
                assert all(_running(worker) for worker in workers), "the workers ended before the kill"
            if victim == "stage":
                try:
                    process.send_signal(signal.SIGKILL)
                except psutil.NoSuchProcess:
                    pass  # it finished first: a kill point past its end
            else:
                dvc.send_signal(getattr(signal, victim))
        dvc.wait(timeout=600)
        deadline = time.monotonic() + 30
        while left := _left_running(stage):
            assert time.monotonic() < deadline, f"{stage} outlived `dvc repro` ({victim}): {left}"
            time.sleep(0.1)
        # Found above by the DVC_STAGE they inherit; by their own identity here, pid reuse aside.
        assert not [worker for worker in workers if _running(worker)], f"a worker of {stage} outlived it ({victim})"
    finally:
        if dvc.poll() is None:
            dvc.kill()
            dvc.wait()


def test_killed_stages_leave_no_trace_and_dvc_repro_finishes_identically(reference, tmp_path):
    repo = tmp_path / "repo"
    env, sh = _init(repo)
    env = {**env, "PYTHONPATH": str(repo)}
    expected = _snapshot(reference[0])
    rng = random.Random(20260)
    for stage, (points, span) in PLAN.items():
        kills = [(victim, delay, True) for victim, delay in WHILE_TRAINING.get(stage, [])]
        kills += [("stage", delay, False) for delay in sorted(rng.uniform(0.0, span) for _ in range(points))]
        for victim, delay, training in kills:
            _kill_once(repo, env, stage, delay, victim, training)
            present = _snapshot(repo, hidden=False)
            mixed = [path for path, data in present.items() if expected.get(path) != data]
            moment = f"{delay:.2f} s" + (" after its workers started" if training else "")
            assert mixed == [], f"after killing {stage} ({victim}) at {moment}: not the reference's: {mixed}"
    sh(str(BIN / "dvc"), "repro")
    assert _snapshot(repo) == expected
    assert "Data and pipelines are up to date" in sh(str(BIN / "dvc"), "status")
    assert _strays(repo) == []
