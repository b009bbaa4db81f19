"""A stage's process ends with the command that started it, and one run at a time writes its outputs.

A stand-in for DVC starts `pipeline train` the way DVC does (`$SHELL -c "<cmd>"` with DVC_STAGE
set) and is then killed with SIGKILL while the stage's seeds train in the workers it forked: the
stage and its workers must stop within seconds, leave the previous outputs byte for byte, no temp
file and the lock free. Started by hand, a stage outlives its shell like any command, and a SIGTERM
stops it and its workers. A second run of the same stage is refused with one line while the first
holds its lock.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from pipeline.core import params as params_module
from pipeline.stages import download, prepare

ROOT = Path(__file__).resolve().parents[1]
# The locks of `pipeline train birnn` (every seed: DVC's train@birnn) and of `... --seed 7`.
STAGE_LOCK = Path(".pipeline-locks/train-birnn.lock")
SEED_LOCK = Path(".pipeline-locks/train-birnn-seed-7.lock")
# What DVC does for a stage: run its command through a shell, with DVC_STAGE in the command's
# environment (not in its own), here only if a stage name is given.
FAKE_DVC = """
import os, subprocess, sys
shell, command, stage = sys.argv[1:]
subprocess.run([shell, "-c", command], env=dict(os.environ, **({"DVC_STAGE": stage} if stage else {})))
"""
SHELLS = [s for s in ("/bin/bash", "/bin/sh") if Path(s).exists()]  # bash execs the command, dash does not


def _env(**extra: str) -> dict[str, str]:
    # Without OMP_NUM_THREADS, which would cap train.threads: the seeds train in two workers.
    env = {k: v for k, v in os.environ.items() if k not in ("DVC_STAGE", "PIPELINE_GUARDIAN", "OMP_NUM_THREADS")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def _pipeline(*args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, env=_env(**extra), timeout=600
    )


def _under_parent(shell: str, command: str, stage: str = "") -> subprocess.Popen:
    """`command` started by a parent process through `shell -c`, as DVC starts a stage."""
    return subprocess.Popen(
        [sys.executable, "-c", FAKE_DVC, shell, command, stage],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def _outputs() -> dict[str, bytes]:
    """Every file the train stage writes, and any temp file or folder, anywhere in the project."""
    files = {}
    for folder in ("models", "dvclive", "metrics"):
        for path in sorted(Path(folder).rglob("*")):
            files[str(path)] = path.read_bytes() if path.is_file() else b"<dir>"
    return files


def _temp_files() -> list[str]:
    return [str(p) for p in Path().rglob(".*") if p.name.endswith((".tmp", ".old"))]


def _lock_holder(lock: Path, timeout: float = 180) -> psutil.Process:
    """The process that holds a train run's lock (its pid is in the lock file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = lock.read_text().strip() if lock.exists() else ""
        if pid.isdigit():
            try:
                holder = psutil.Process(int(pid))
                if holder.status() != psutil.STATUS_ZOMBIE:
                    return holder
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.1)
    raise AssertionError("the stage never took its lock")


def _gone(process: psutil.Process, timeout: float) -> bool:
    try:
        process.wait(timeout)
    except psutil.TimeoutExpired:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # not our child: already reaped by whoever is its parent now
        pass
    return True


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _workers(stage: psutil.Process, timeout: float = 180) -> list[psutil.Process]:
    """The two workers the stage forks to train its seeds (children running its own command line
    for a while: a subprocess shows it too, for the moment before its exec), once both are up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        command = stage.cmdline()
        found = []
        for child in stage.children():
            try:
                if child.cmdline() == command and _running(child) and time.time() - child.create_time() > 0.5:
                    found.append(child)
            except psutil.Error:
                continue
        if len(found) == 2:
            return found
        time.sleep(0.05)
    raise AssertionError("the stage never forked its two workers")


def _all_gone(processes: list[psutil.Process], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_running(p) for p in processes):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _lock_free(lock: Path) -> bool:
    """Nobody holds `lock` (a worker would, through the stage's open lock file it inherits)."""
    if not lock.exists():
        return True
    with open(lock) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
    return True


@pytest.fixture
def trained_once(tiny_project):
    """Prepared data and the birnn's finished runs of both seeds (the previous outputs); params
    then make a run long, with the seeds side by side in two workers."""
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["train"]["threads"] = 2
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    loaded = params_module.parse(raw)
    download.run(loaded)
    prepare.run(loaded)
    assert _pipeline("train", "birnn").returncode == 0
    raw["train"].update(max_epochs=100_000, patience=100_000)  # runs until stopped
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    yield tiny_project
    for proc in psutil.process_iter():  # a failed test must not leave an endless run behind
        try:
            if proc.pid != os.getpid() and Path(proc.cwd()) == tiny_project:
                proc.kill()
        except psutil.Error:
            continue


@pytest.mark.parametrize("shell", SHELLS)
def test_a_stage_under_dvc_stops_when_dvc_is_killed_and_changes_nothing(trained_once, shell):
    before = _outputs()
    parent = _under_parent(shell, f"{sys.executable} -m pipeline train birnn", "train@birnn")
    stage = _lock_holder(STAGE_LOCK)
    workers = _workers(stage)
    time.sleep(1)  # into the training loop
    assert all(_running(w) for w in workers), "a worker ended by itself"
    parent.kill()
    assert _gone(stage, timeout=30), "the stage outlived the command that started it"
    assert _all_gone(workers, timeout=30), "a worker outlived its stage"
    _, err = parent.communicate(timeout=30)  # the stage held the same stderr: it has ended
    assert err.strip().splitlines()[-1].startswith("interrupted; rerun the command"), err
    assert _outputs() == before
    assert _temp_files() == []
    assert _lock_free(STAGE_LOCK)


def test_a_stage_started_by_hand_outlives_its_shell_and_a_sigterm_cleans_up(trained_once):
    before = _outputs()
    parent = _under_parent(SHELLS[0], f"{sys.executable} -m pipeline train birnn")
    stage = _lock_holder(STAGE_LOCK)
    workers = _workers(stage)
    parent.kill()
    time.sleep(2)
    # nohup-style use keeps working, the workers' training included
    assert all(_running(p) for p in (stage, *workers))
    stage.terminate()
    assert _gone(stage, timeout=30)
    assert _all_gone(workers, timeout=30), "a worker outlived its stage"
    _, err = parent.communicate(timeout=30)
    assert err.strip().splitlines()[-1].startswith("interrupted; rerun the command"), err
    assert _outputs() == before
    assert _temp_files() == []
    assert not STAGE_LOCK.parent.exists()  # an interrupted run takes its lock file with it


@pytest.mark.parametrize(
    "run, lock",
    [("train birnn", STAGE_LOCK), ("train birnn --seed 7", SEED_LOCK)],
    ids=["every seed", "one seed"],
)
def test_a_second_run_of_the_same_stage_is_refused_in_one_line(trained_once, run, lock):
    before = _outputs()
    lock.parent.mkdir(exist_ok=True)
    with open(lock, "w") as held:  # as a run in progress holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        result = _pipeline(*run.split())
    assert result.returncode == 2
    assert result.stderr == (
        f"error: `pipeline {run}` is already running in this folder (pid 4242); "
        "wait for it to end or stop it, then rerun\n"
    )
    assert _outputs() == before
    assert _temp_files() == []
    # The holder is gone (its lock file stays, as after a kill -9): the next run takes the lock,
    # and a finished run leaves no lock file behind.
    _short_params("short.yaml")
    assert _pipeline(*run.split(), "--params", "short.yaml").returncode == 0
    assert not lock.parent.exists()


def _short_params(path: str) -> None:
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["train"].update(max_epochs=2, patience=2)
    Path(path).write_text(yaml.safe_dump(raw, sort_keys=False))


def test_two_real_runs_at_once_one_is_refused_and_other_seeds_run(trained_once):
    first = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "train", "birnn", "--seed", "7"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    holder = _lock_holder(SEED_LOCK)
    assert holder.pid == first.pid
    second = _pipeline("train", "birnn", "--seed", "7")
    assert second.returncode == 2
    assert second.stderr.count("\n") == 1
    assert f"is already running in this folder (pid {first.pid})" in second.stderr
    # Another seed is another output set: not refused (its params are made short again first).
    _short_params("other.yaml")
    assert _pipeline("train", "birnn", "--seed", "8", "--params", "other.yaml").returncode == 0
    first.terminate()
    assert first.wait(timeout=60) == 130
    assert _temp_files() == []


@pytest.mark.e2e
@pytest.mark.parametrize("killed", ["dvc", "launcher"])
def test_torchrun_workers_stop_with_the_command_that_started_them(trained_once, killed):
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["train"].update(processes=2, batch_size=8)
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    before = _outputs()
    mark = f"{killed}-{os.getpid()}"  # inherited by every process of this run
    command = f"{sys.executable} -m pipeline train birnn"  # the train@birnn stage's command
    parent = subprocess.Popen(
        [sys.executable, "-c", FAKE_DVC, SHELLS[-1], command, "train@birnn" if killed == "dvc" else ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(STAGE_TEST_MARK=mark),
    )

    def run_processes() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter():
            try:
                env = proc.environ()
                if env.get("STAGE_TEST_MARK") == mark and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append((proc, env))
            except psutil.Error:
                continue
        return found

    def workers() -> int:
        # torchrun's children; a worker's own children (torch's extension loader runs ninja,
        # for one) inherit RANK too, and are not workers.
        ranked = {p.pid: p for p, env in run_processes() if "RANK" in env}
        parents = []
        for p in ranked.values():
            try:
                parents.append(p.ppid())
            except psutil.Error:  # ended since
                continue
        return sum(1 for parent in parents if parent not in ranked)

    deadline = time.monotonic() + 180
    while workers() < 2:
        assert time.monotonic() < deadline, "the workers never started"
        time.sleep(0.2)
    time.sleep(2)  # into the training loop
    assert workers() == 2, "a worker ended by itself"
    if killed == "dvc":
        parent.kill()
    else:  # `pipeline train` itself, which launched torchrun
        launcher = next(p for p, env in run_processes() if p.cmdline()[1:3] == ["-m", "pipeline"] and "RANK" not in env)
        launcher.kill()
    deadline = time.monotonic() + 60
    while left := run_processes():
        assert time.monotonic() < deadline, f"left running: {[p.cmdline() for p, _ in left]}"
        time.sleep(0.2)
    parent.wait(timeout=30)
    assert _outputs() == before
    assert _temp_files() == []
