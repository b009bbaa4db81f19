"""Run a command as a child process and read its wall time and peak RSS from the kernel.

The child is started by a small launcher process, not by the benchmark itself: a forked child
counts its parent's memory as its own until it execs, so a benchmark holding a large corpus
in memory would otherwise inflate every measurement.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

# Starts argv[1:], waits with wait4 (the child's own usage; ru_maxrss is KiB on Linux) and
# prints "exit-code max-rss-kib" on its stdout.
_LAUNCHER = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n"
)


def measure(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, float, float, str]:
    """Exit code, wall seconds, peak RSS in MB and stderr of `argv`."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *argv], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    seconds = time.perf_counter() - start
    code, kib = done.stdout.split()
    return int(code), seconds, int(kib) / 1024, done.stderr.strip()


def pipeline(stage: str, cwd: Path, pythonpath: str | Path) -> tuple[int, float, float, str]:
    """`python -m pipeline STAGE` in `cwd`, with the `pipeline` package found on `pythonpath`."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return measure([sys.executable, "-m", "pipeline", stage], cwd, env)
