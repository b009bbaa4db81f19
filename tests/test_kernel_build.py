"""The C++ recurrence builds once per source, environment and CPU, whichever ninja a shell finds first.

These tests compile for real (20-60 s a build), so the file builds twice: once for this machine,
shared by every test here, and once for a CPU it pretends to be.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LOAD = "from pipeline.model import recurrence; print(recurrence.require_kernel(allow_fallback=False)['kernel'])"
SYSTEM_FIRST = os.pathsep.join(["/usr/local/bin", "/usr/bin", "/bin"])
VENV_FIRST = os.pathsep.join([str(Path(sys.executable).parent), SYSTEM_FIRST])


def _load(extensions: Path, path: str) -> Path:
    """Load the kernel in a fresh process with this PATH; it must be the kernel, not the fallback."""
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(extensions), PATH=path)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env.pop("PIPELINE_PURE_PYTORCH", None)
    result = subprocess.run([sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "note:" not in result.stderr
    return Path(result.stdout.strip())


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The kernel built for this machine in a fresh extensions folder: the library's path."""
    return _load(tmp_path_factory.mktemp("torch_extensions"), VENV_FIRST)  # an activated venv, `dvc repro`


def test_a_shell_with_another_ninja_first_on_path_does_not_rebuild(built):
    """A system ninja first on PATH, or none at all: the pinned ninja runs and finds the build current."""
    before = built.stat()
    extensions = built.parents[1]
    assert _load(extensions, SYSTEM_FIRST) == built  # `make` with .venv/bin/python, an IDE, a cron job
    assert _load(extensions, VENV_FIRST) == built
    after = built.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_cache_that_travels_to_another_cpu_builds_anew_beside_the_first(built, monkeypatch):
    from pipeline.model import recurrence

    before = built.stat()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(built.parents[1]))
    monkeypatch.delenv("PIPELINE_PURE_PYTORCH", raising=False)
    monkeypatch.setattr(recurrence, "_KERNEL", None)
    monkeypatch.setattr(recurrence, "_cpu_key", lambda: "x86_64\nAVX512\nmodel name: another CPU")
    other = Path(recurrence.require_kernel(allow_fallback=False)["kernel"])
    assert other.is_file()
    assert other.parents[1] == built.parents[1] and other.parent != built.parent
    after = built.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # this CPU's build, intact


CPUINFO = """processor\t: {n}
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz
cpu MHz\t\t: {mhz}
flags\t\t: fpu sse sse2 avx avx2 fma{extra}
bogomips\t: 5000.00
"""


def test_the_cpu_key_follows_the_instruction_set_not_the_clock(tmp_path, monkeypatch):
    from pipeline.model import recurrence

    def key(mhz: str, extra: str = "") -> str:
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text("\n".join(CPUINFO.format(n=n, mhz=mhz, extra=extra) for n in range(2)))
        monkeypatch.setattr(recurrence, "_CPUINFO", cpuinfo)
        return recurrence._cpu_key()

    assert key("2500.000") == key("3100.412")
    assert key("2500.000") != key("2500.000", extra=" avx512f")


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
    monkeypatch.setattr(recurrence, "_blas_problem", lambda kernel: None)
    monkeypatch.delenv("PIPELINE_PURE_PYTORCH", raising=False)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(recurrence.compiled)
        started.wait(10)
        rest = [pool.submit(recurrence.compiled) for _ in range(16)]
        results = [first.result(), *(f.result() for f in rest)]
    assert len(builds) == 1
    assert all(result is built for result in results)


# The kernel's forward and backward on a small input, as the sha256 of their bytes.
RESULTS = """
import hashlib, torch
from pipeline.model import recurrence
info = recurrence.require_kernel(allow_fallback={allow})
kernel = recurrence.compiled()
if kernel is not None:
    torch.manual_seed(0)
    pre, weight = torch.randn(2, 5, 3, 4), torch.randn(2, 4, 4) * 0.3  # (D, T, B, H), (D, H, H)
    kernel.forward_(pre, weight, 1)
    grad = kernel.backward(torch.ones_like(pre), pre, weight, 1)
    print(info["kernel"], hashlib.sha256(pre.numpy().tobytes() + grad.numpy().tobytes()).hexdigest())
"""


def _results(extensions: Path, allow_fallback: bool = False, **env: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, TORCH_EXTENSIONS_DIR=str(extensions), PATH=VENV_FIRST, **env)
    environment["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    environment.pop("PIPELINE_PURE_PYTORCH", None)
    script = RESULTS.format(allow=allow_fallback)
    return subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=300)


def _truncate(library: Path) -> None:
    data = library.read_bytes()
    library.write_bytes(data[: len(data) // 2])


def _flip_middle(library: Path) -> None:
    data = bytearray(library.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])  # same size
    library.write_bytes(bytes(data))


def test_a_damaged_library_is_rebuilt_and_never_loaded(built):
    """Cut to half, or 64 bytes flipped in the middle: a fresh process rebuilds it (where it loaded
    the damaged one, it died of SIGBUS) and computes what the undamaged kernel computed; with no
    compiler to rebuild it, the PyTorch loop runs with its note, or the kernel is refused."""
    extensions = built.parents[1]
    undamaged = _results(extensions)
    assert undamaged.returncode == 0, undamaged.stderr
    assert undamaged.stdout.split()[0] == str(built)

    def rebuilds() -> None:
        rebuilt = _results(extensions)
        assert rebuilt.returncode == 0, f"{rebuilt.returncode}: {rebuilt.stderr}"  # a signal: negative
        assert "note:" not in rebuilt.stderr
        assert rebuilt.stdout == undamaged.stdout  # the same library path, the same numbers

    _truncate(built)
    rebuilds()
    _flip_middle(built)
    no_compiler = _results(extensions, allow_fallback=True, CXX="/bin/false")
    assert no_compiler.returncode == 0, no_compiler.stderr
    notes = [line for line in no_compiler.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "using the PyTorch loop" in notes[0]
    assert not built.exists()  # the damaged library was removed, not loaded
    refused = _results(extensions, CXX="/bin/false")
    assert refused.returncode == 1 and "the C++ recurrence cannot be used (it did not build" in refused.stderr
    rebuilds()
