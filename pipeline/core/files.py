"""Atomic writes, generations of outputs, the one JSONL format, JSON and hashes.

Every output goes through a temp file or folder beside it and a rename, so a stage that is
interrupted never leaves a half-written file for DVC to cache. A stage with several outputs
publishes them as one generation (`publish_dir`): readers see the whole old set or the whole
new one, never a new train.npz next to an old vocabulary. Temp names carry the writer's process
id, so leftovers of a killed run are recognised and removed by the next one.
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
from collections.abc import Iterable, Iterator
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


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600; published files get the usual mode the umask allows.
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def publish_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty folder beside `path`; on success it becomes `path` in one step.

    Whatever the caller writes there appears together, replacing the previous contents of
    `path` as a whole; on error or interrupt the folder is removed and `path` is untouched.
    """
    path = Path(path)
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    stage = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(stage, 0o777 & ~_UMASK)  # mkdtemp creates 0700
    try:
        yield stage
        _swap_in(stage, path)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for folder in created:  # deepest first: a failed stage leaves no folder it made
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    shutil.rmtree(stage, ignore_errors=True)  # after a swap it holds the old generation


def _swap_in(stage: Path, path: Path) -> None:
    """Move `stage` to `path`, leaving the previous `path` (if any) at `stage`."""
    if not path.exists() and not path.is_symlink():
        os.rename(stage, path)
    elif not _exchange(stage, path):
        # Without an atomic exchange, `path` is briefly missing: a reader then finds nothing,
        # which it reports, rather than a mix of two generations.
        old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".old", dir=path.parent))
        os.rmdir(old)
        os.rename(path, old)
        os.rename(stage, path)
        os.rename(old, stage)


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
    with atomic_path(path) as tmp:
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
