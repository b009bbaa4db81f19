"""The C++ recurrence builds once per source and environment, whichever ninja a shell finds first."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LOAD = "from pipeline.model import recurrence; assert recurrence.compiled() is not None"


def _load(extensions: Path, path: str) -> None:
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(extensions), PATH=path)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    result = subprocess.run([sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "note:" not in result.stderr  # the kernel, not the fallback


def _library(extensions: Path) -> Path:
    (library,) = extensions.glob("pipeline_recurrence_*/pipeline_recurrence_*.so")
    return library


def test_a_shell_with_another_ninja_first_on_path_does_not_rebuild(tmp_path):
    system_first = os.pathsep.join(["/usr/local/bin", "/usr/bin", "/bin"])
    venv_first = os.pathsep.join([str(Path(sys.executable).parent), system_first])
    _load(tmp_path, venv_first)  # an activated venv, `dvc repro`
    built = _library(tmp_path).stat()
    if shutil.which("ninja", path=system_first) is None:
        pytest.skip("no second ninja on this machine to take the first one's place")
    _load(tmp_path, system_first)  # `make` with .venv/bin/python, an IDE, a cron job
    _load(tmp_path, venv_first)
    again = _library(tmp_path).stat()
    assert (again.st_ino, again.st_mtime_ns) == (built.st_ino, built.st_mtime_ns)


def test_threads_that_arrive_during_the_build_wait_for_it(monkeypatch):
    """compiled() under a thread pool: one build, and every caller gets the kernel, none the fallback."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor
    from types import ModuleType

    from pipeline.model import recurrence

    built = ModuleType("fake_kernel")
    builds = []
    started = threading.Event()

    def slow_build(load):
        builds.append(load)
        started.set()
        time.sleep(0.3)  # the other threads arrive while this build runs
        return built

    monkeypatch.setattr(recurrence, "_KERNEL", None)
    monkeypatch.setattr(recurrence, "_build", slow_build)
    monkeypatch.delenv("PIPELINE_PURE_PYTORCH", raising=False)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(recurrence.compiled)
        started.wait(10)
        rest = [pool.submit(recurrence.compiled) for _ in range(16)]
        results = [first.result(), *(f.result() for f in rest)]
    assert len(builds) == 1
    assert all(result is built for result in results)
