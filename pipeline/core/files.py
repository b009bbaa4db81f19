"""Atomic writes, generations of outputs, the one JSONL format, JSON and hashes.

Every output goes through a temp file or folder beside it and a rename, so a stage that is
interrupted never leaves a half-written file for DVC to cache. A stage with several outputs
publishes them as one generation (`publish_dir`, or `generation` for several folders and files):
readers see the whole old set or the whole new one, never a new train.npz next to an old
vocabulary, and a write that fails (a full disk) leaves the old set as it was. Temp names carry
the writer's process id, so leftovers of a killed run are recognised and removed by the next one.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pipeline.core.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)

# Longest line any JSONL or CSV reader accepts: far above a real document (the whole BBC corpus
# is 5 MB), far below what would let one crafted line exhaust memory while it is parsed.
MAX_LINE_CHARS = 1 << 24


# ---- atomic files and generations ------------------------------------------------------------

# Run before anything this process writes replaces its path: a check that raises keeps the
# previous outputs (pipeline.cli registers one: the params a stage read are still the file's).
_PUBLISH_CHECKS: list[Callable[[], None]] = []


@contextmanager
def checked_before_publishing(check: Callable[[], None]) -> Iterator[None]:
    """Inside, `check` runs before every output is published; what it raises keeps the old one."""
    _PUBLISH_CHECKS.append(check)
    try:
        yield
    finally:
        _PUBLISH_CHECKS.remove(check)


def _publishable() -> None:
    for check in _PUBLISH_CHECKS:
        check()


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale(path: str | Path) -> None:
    """Remove temp files and folders that a killed writer of `path` left beside it.

    A leftover is recognised by its name (`.<name>.<pid>.<random>.tmp` or `.old`) and removed
    only when that process is gone, so a writer that is still running keeps its own.
    """
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[^./]+\.(?:tmp|old)")
    try:
        entries = list(path.parent.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


class StorageError(UserError):
    """A write the filesystem refused (a full disk, a read-only folder): one line naming the path."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: cannot be written ({reason}); the previous outputs are kept")


@contextmanager
def storing(path: str | Path) -> Iterator[None]:
    """Turn an OSError of the writes inside into a StorageError naming `path`."""
    try:
        yield
    except OSError as exc:
        raise StorageError(path, exc.strerror or str(exc)) from None


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path`, on error it is removed.

    The temp file is on disk (fsync) before it replaces `path`, so a crash never leaves an
    empty or partial file under the real name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600; published files get the usual mode the umask allows.
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield Path(tmp)
        _sync(Path(tmp))
        _publishable()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Generation:
    """The temp files and folders of one generation, each beside the path it will replace."""

    def __init__(self) -> None:
        self.entries: list[tuple[Path, Path]] = []  # (temp, path)
        self.created: list[Path] = []  # parent folders made for it, removed again if it fails

    def folder(self, path: str | Path) -> Path:
        """An empty folder that becomes `path` (the folder a symlink at `path` points to)."""
        with storing(path):  # a folder that takes no temp is named as the output, not the temp
            target = self._beside(Path(path))
            temp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent))
            os.chmod(temp, 0o777 & ~_UMASK)  # mkdtemp creates 0700
        self.entries.append((temp, target))
        return temp

    def file(self, path: str | Path) -> Path:
        """An empty temp file that becomes `path`; the caller writes it (write_bytes replaces it)."""
        with storing(path):
            target = self._beside(Path(path))
            fd, temp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent)
            os.close(fd)
            os.chmod(temp, 0o666 & ~_UMASK)  # mkstemp creates 0600
        self.entries.append((Path(temp), target))
        return Path(temp)

    def _beside(self, path: Path) -> Path:
        # Through a symlink, the generation replaces what the link points to and the link stays.
        target = path.resolve() if path.is_symlink() else path
        self.created += [p for p in (target.parent, *target.parent.parents) if not p.exists()]
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(target)
        return target

    def where(self, name: str | Path) -> Path:
        """The path a file inside one of the temps will have once published."""
        name = Path(name)
        for temp, target in self.entries:
            if name == temp or temp in name.parents:
                return target / name.relative_to(temp)
        return name

    def sync(self) -> None:
        for temp, _ in self.entries:
            paths = sorted(temp.rglob("*")) + [temp] if temp.is_dir() else [temp]
            for path in paths:
                if not path.is_symlink():
                    with storing(self.where(path)):
                        _sync(path)

    def swap_in(self) -> None:
        """Every temp to its path; if one cannot move, the ones before it move back."""
        done: list[tuple[Path, Path, bool]] = []
        try:
            for temp, target in self.entries:
                with storing(target):
                    done.append((temp, target, _swap_in(temp, target)))
        except BaseException:
            for temp, target, replaced in reversed(done):
                if replaced:
                    _swap_in(temp, target)  # the old generation, held at temp, back in place
                else:
                    os.rename(target, temp)
            raise

    def discard(self) -> None:
        for temp, _ in self.entries:
            _remove(temp)
        for folder in sorted(set(self.created), key=lambda p: len(p.parts), reverse=True):
            try:
                folder.rmdir()  # a failed generation leaves no folder it made
            except OSError:
                pass


@contextmanager
def generation() -> Iterator[Generation]:
    """Publish several files and folders as one generation.

    The caller asks for a temp for each output (`.folder(path)`, `.file(path)`) and writes
    them all; only then, each byte on disk (fsync), do they replace their paths, one rename
    after another. A failure while writing any of them (a full disk) leaves every old output
    untouched and becomes a StorageError naming the output, not its temp.
    """
    gen = Generation()
    try:
        yield gen
        gen.sync()
        _publishable()
        gen.swap_in()
    except StorageError as exc:
        gen.discard()
        raise StorageError(gen.where(exc.path), exc.reason) from None
    except OSError as exc:
        gen.discard()
        if exc.filename is None:
            raise
        raise StorageError(gen.where(exc.filename), exc.strerror or str(exc)) from None
    except BaseException:
        gen.discard()
        raise
    for temp, _ in gen.entries:
        _remove(temp)  # after the swaps each holds the old generation, if there was one


@contextmanager
def publish_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty folder beside `path`; on success it becomes `path` in one step.

    Whatever the caller writes there appears together, replacing the previous contents of
    `path` as a whole; on error or interrupt the folder is removed and `path` is untouched.
    A symlink at `path` stays, and the folder it points to is replaced.
    """
    with generation() as gen:
        yield gen.folder(path)


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _swap_in(stage: Path, path: Path) -> bool:
    """Move `stage` to `path`, leaving the previous `path` (if any) at `stage`; whether there was one."""
    if not path.exists() and not path.is_symlink():
        os.rename(stage, path)
        return False
    if not _exchange(stage, path):
        # Without an atomic exchange, `path` is briefly missing: a reader then finds nothing,
        # which it reports, rather than a mix of two generations.
        old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".old", dir=path.parent))
        os.rmdir(old)
        os.rename(path, old)
        os.rename(stage, path)
        os.rename(old, stage)
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's renameat2(RENAME_EXCHANGE); False if unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(b))


def write_bytes(path: str | Path, data: bytes) -> None:
    with storing(path), atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def read_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found; run `dvc repro` first") from None
    except RecursionError:
        raise UserError(f"{path}: {what} is nested too deeply to be read") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: {what} is not readable JSON ({exc})") from None


# ---- JSON lines: the one writer and the one reader ------------------------------------------

# json.dumps leaves these unescaped with ensure_ascii=False, yet str.splitlines() breaks lines at
# them; escaping keeps one object per line for any reader and decodes to the same text.
_LINE_BREAKS = (("\x85", "\\u0085"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def jsonl_line(obj: Any) -> bytes:
    """One JSONL line, newline included, as UTF-8: readable text, one object per line."""
    line = json.dumps(obj, ensure_ascii=False)
    for char, escape in _LINE_BREAKS:  # str.replace scans at C speed; translate would not
        line = line.replace(char, escape)
    line += "\n"
    try:
        return line.encode("utf-8")
    except UnicodeEncodeError:  # only a JSON escape such as "\\ud800" can smuggle one in
        raise UserError("a text holds an unpaired surrogate, which UTF-8 cannot store") from None


def bounded_lines(fh: IO[str], where: str) -> Iterator[str]:
    """The lines of a text file, each at most MAX_LINE_CHARS long, without reading more."""
    limit, number = MAX_LINE_CHARS, 0
    for line in iter(lambda: fh.readline(limit + 1), ""):
        number += 1
        if len(line) > limit and line[-1] not in "\r\n":
            raise UserError(f"{where}: line {number}: longer than {limit} characters; refused")
        yield line


def jsonl_objects(lines: Iterable[str], where: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; bad JSON or a non-object is a UserError."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: line {number}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise UserError(f"{where}: line {number}: JSON nested too deeply; refused") from None
        except ValueError as exc:  # Python's limit on an integer's digits (parsing one is quadratic)
            if "digits" not in str(exc):
                raise
            most = sys.get_int_max_str_digits()
            raise UserError(f"{where}: line {number}: a number with more than {most} digits; refused") from None
        if not isinstance(row, dict):
            raise UserError(f"{where}: line {number}: expected a JSON object")
        yield number, row


def read_jsonl(path: str | Path, what: str, producer: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) from a JSONL file that `producer` wrote with `jsonl_line`, lazily.

    Lines end at "\\n" only: a reader that splits at U+2028 or U+0085 (str.splitlines) would
    break a text in two, and `jsonl_line` never writes those characters raw anyway.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8", newline="\n") as fh:
            yield from jsonl_objects(bounded_lines(fh, str(path)), str(path))
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found; run `{producer}` first") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: {what} is not UTF-8; rerun `{producer}`") from None
    except OSError as exc:
        raise UserError(f"{path}: {what} cannot be read ({exc.strerror or exc})") from None


def read_learning_curves(
    folder: str | Path, metrics: tuple[str, ...], splits: tuple[str, ...]
) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{metric: {split: [(epoch, value), ...]}} from the TSVs that DVCLive writes under `folder`.

    DVCLive logs `<folder>/plots/metrics/<split>/<metric>.tsv` with a header `step<TAB><metric>`.
    """
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for metric in metrics:
        for split in splits:
            path = Path(folder) / "plots" / "metrics" / split / f"{metric}.tsv"
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                raise UserError(f"{path}: learning curve not found; run `dvc repro` first") from None
            if lines[:1] != [f"step\t{metric}"] or len(lines) < 2:
                raise UserError(f"{path}: not a DVCLive learning curve of {metric}; rerun `dvc repro`")
            points = []
            for number, line in enumerate(lines[1:], start=2):
                step, _, value = line.partition("\t")
                try:
                    points.append((int(step), float(value)))
                except ValueError:
                    raise UserError(f"{path}: line {number}: expected <step><TAB><{metric}>") from None
            curves.setdefault(metric, {})[split] = points
    return curves


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
