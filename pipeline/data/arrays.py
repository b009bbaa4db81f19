"""The prepared splits' on-disk format: uncompressed .npz, the one writer and the one reader.

The writer streams (prepare never holds a whole split's ids in memory) and its bytes are
those of np.savez for the same arrays, so the same data gives the same file.
"""

from __future__ import annotations

import operator
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pipeline.core.errors import UserError


class NpzWriter:
    """An uncompressed .npz written array by array, an array possibly block by block.

    The bytes are those np.savez writes for the same arrays in the same order (the same zip
    calls and .npy header), so an array never has to be whole in memory to be saved.
    """

    def __init__(self, path: str | Path) -> None:
        self._zip = zipfile.ZipFile(path, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True)

    def add(self, name: str, array: np.ndarray) -> None:
        with self._zip.open(f"{name}.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array(fh, np.asanyarray(array))

    @contextmanager
    def blocks(
        self, name: str, dtype: np.dtype | type, shape: tuple[int, ...]
    ) -> Iterator[Callable[[np.ndarray], None]]:
        """Yield `write(block)`: blocks of rows, in order, that together make the (shape) array."""
        dtype = np.dtype(dtype)
        if dtype.hasobject:
            raise ValueError(f"{name}: {dtype} holds Python objects; .npy stores them only by pickle")
        # Python ints in the header: a numpy integer would be written as np.int64(5), unreadable.
        shape = tuple(operator.index(n) for n in shape)
        rows = 0
        with self._zip.open(f"{name}.npy", "w", force_zip64=True) as fh:
            # The header np.save writes for a C-ordered array of this dtype and shape.
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(fh, header)

            def write(block: np.ndarray) -> None:
                nonlocal rows
                if block.dtype != dtype or block.shape[1:] != shape[1:]:
                    raise ValueError(f"{name}: a {block.dtype} {block.shape} block; {shape} expected")
                rows += len(block)
                fh.write(np.ascontiguousarray(block).tobytes())

            yield write
        if rows != shape[0]:
            raise ValueError(f"{name}: {rows} rows written, {shape[0]} announced")

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> NpzWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check(
    path: Path, arrays: dict[str, np.ndarray], vocab_size: int | None, num_classes: int | None, max_len: int | None
) -> None:
    """Refuse prepared arrays that prepare could not have written, with one line naming the array."""

    def refuse(name: str, problem: str) -> UserError:
        return UserError(f"{path}: {name}: {problem}; rerun `pipeline prepare`")

    def outside(name: str, low: int, high: int) -> None:
        values = arrays[name]
        count = int(np.count_nonzero((values < low) | (values >= high)))
        if count:
            extreme = f"max {values.max()}" if values.max() >= high else f"min {values.min()}"
            raise refuse(name, f"{count} values outside [{low}, {high}) ({extreme})")

    for name, values in arrays.items():
        if name in ("ids", "lengths", "labels") and values.dtype.kind not in "iu":
            raise refuse(name, f"{values.dtype} values, integers expected")
    ids, lengths, labels = (arrays.get(n) for n in ("ids", "lengths", "labels"))
    if ids is not None and ids.ndim != 2:
        raise refuse("ids", f"shape {ids.shape}, 2 dimensions (texts, positions) expected")
    for name, column in (("lengths", lengths), ("labels", labels)):
        if column is None:
            continue
        if column.ndim != 1:
            raise refuse(name, f"shape {column.shape}, 1 dimension expected")
        if ids is not None and len(column) != len(ids):
            raise refuse(name, f"{len(column)} rows, ids has {len(ids)}")
    if ids is not None and max_len is not None and ids.shape[1] != max_len:
        raise refuse("ids", f"{ids.shape[1]} positions a row, prepare.max_len is {max_len}")
    if ids is not None and vocab_size is not None:
        outside("ids", 0, vocab_size)
    if lengths is not None:
        width = ids.shape[1] if ids is not None else max_len
        if width is not None:
            outside("lengths", 1, width + 1)
    if labels is not None and num_classes is not None:
        outside("labels", 0, num_classes)


def load(
    path: str | Path,
    names: tuple[str, ...],
    *,
    vocab_size: int | None = None,
    num_classes: int | None = None,
    max_len: int | None = None,
) -> dict[str, np.ndarray]:
    """The arrays `names` of a prepared split, checked: integer dtypes, consistent shapes, values in range.

    ids must lie in [0, vocab_size), lengths in [1, width of ids] and labels in [0, num_classes);
    a bound not given is not checked. Any problem is one UserError line naming file and array.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [n for n in names if n not in data.files]
            if missing:
                raise UserError(f"{path}: array {missing[0]!r} missing; rerun `pipeline prepare`")
            loaded = {n: data[n] for n in names}
    except FileNotFoundError:
        raise UserError(f"{path}: prepared data not found; run `dvc repro prepare` first") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: not a readable .npz file ({exc})") from None
    _check(path, loaded, vocab_size, num_classes, max_len)
    return loaded
