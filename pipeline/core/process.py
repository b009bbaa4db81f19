"""How a stage's process lives: it ends with the command that started it, and it alone writes
its outputs.

- Under `dvc repro` (DVC sets DVC_STAGE) and as a torchrun worker of `pipeline train`, a stage
  stops as on Ctrl-C when that command dies, even by kill -9: its temp files are removed and
  nothing is published, so no orphan finishes later over the outputs of the next run. Linux's
  PR_SET_PDEATHSIG covers a direct child; DVC runs commands through `$SHELL -c`, and a shell
  such as dash stays between the two, so a watcher thread covers that case. A stage started by
  hand outlives its shell as any command does (nohup keeps working).
- Each run holds an exclusive lock named after the stage and its output set (`train birnn
  --seed 42`); a second run of the same stage in the same folder is refused with one line.
  The kernel releases the lock however the holder ends, so a killed run never blocks the next.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.core.errors import UserError

LOCKS = Path(".pipeline-locks")
# Set by `pipeline train` for the torchrun workers it launches: "<pid>:<start time>" of itself.
GUARDIAN = "PIPELINE_GUARDIAN"
_PR_SET_PDEATHSIG = 1
_POLL_SECONDS = 0.5


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process from /proc, or None if it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # the name in (...) may hold spaces
    return fields[0].decode(), int(fields[1]), int(fields[19])


def identity(pid: int) -> str | None:
    """ "<pid>:<start time>": names one process, never a later one that reuses its pid."""
    stat = _stat(pid)
    return None if stat is None else f"{pid}:{stat[2]}"


def _alive(ident: str) -> bool:
    pid, start = (int(part) for part in ident.split(":"))
    stat = _stat(pid)
    return stat is not None and stat[2] == start and stat[0] not in ("Z", "X")  # a zombie is dead


def _dvc_process() -> int | None:
    """The nearest ancestor outside this stage's command (a shell, a wrapper): the DVC process."""
    stage = os.environ.get("DVC_STAGE", "").encode()
    pid = os.getppid()
    while pid > 1:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # not ours to read: not part of the stage's command either
            return pid
        if b"DVC_STAGE=" + stage not in environ:
            return pid
        stat = _stat(pid)
        if stat is None:
            return None
        pid = stat[1]
    return None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _watch(guardian: str) -> None:
    while _alive(guardian):
        time.sleep(_POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)


def stop_with_parent() -> None:
    """Under DVC or a `pipeline train` launcher, turn that command's death into an interrupt."""
    # A stop request unwinds like Ctrl-C: `finally` blocks remove temp files and scratch folders.
    signal.signal(signal.SIGTERM, _interrupt)
    if not sys.platform.startswith("linux"):
        return
    guardian = os.environ.get(GUARDIAN)
    if guardian is None and "DVC_STAGE" in os.environ:
        pid = _dvc_process()
        guardian = identity(pid) if pid is not None else None
    if guardian is None:
        return
    if int(guardian.split(":")[0]) == os.getppid():
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if not _alive(guardian):  # it died before the line above took effect
        raise KeyboardInterrupt
    threading.Thread(target=_watch, args=(guardian,), name="stop-with-parent", daemon=True).start()


def die_with_parent() -> None:
    """In a worker forked by a stage (train's runs side by side): end when the stage ends.

    The worker writes nothing itself; killed with its stage, by a signal or kill -9, it must
    not train on, holding the stage's lock, with nobody left to take its result.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the pool stops its workers with SIGTERM
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the stage, which stops them
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent or parent == 1:  # the stage died before the line above took effect
        os._exit(1)


def launched_worker() -> bool:
    """A torchrun worker started by `pipeline train`, which holds the run's lock itself."""
    return GUARDIAN in os.environ and "LOCAL_RANK" in os.environ


@contextmanager
def exclusive(run: str) -> Iterator[None]:
    """Hold the lock of one stage run, e.g. "train birnn --seed 42", or refuse with a UserError."""
    if launched_worker() or int(os.environ.get("RANK", "0")) != 0:
        yield  # only rank 0 of a torchrun group writes outputs
        return
    path = LOCKS / (re.sub(r"[^\w.]+", "-", run) + ".lock")
    while True:
        try:
            LOCKS.mkdir(exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:  # a finishing run removed the folder just now
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise UserError(
                f"`pipeline {run}` is already running in this folder (pid {holder}); "
                "wait for it to end or stop it, then rerun"
            ) from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # locked a file its holder had just removed: take the current one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        # Removed while still held, so that no one can lock the old file after this; a run
        # killed before this point leaves the file, which the next run simply locks again.
        path.unlink(missing_ok=True)
        os.close(fd)
        with contextlib.suppress(OSError):
            LOCKS.rmdir()  # only if no other run holds a lock in it
