"""The prepared splits' on-disk format: uncompressed .npz, the one writer and the one reader.

The writer streams (prepare never holds a whole split's ids in memory) and its bytes are
those of np.savez for the same arrays, so the same data gives the same file.
"""

from __future__ import annotations

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
        rows = 0
        with self._zip.open(f"{name}.npy", "w", force_zip64=True) as fh:
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


def load(path: str | Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [n for n in names if n not in data.files]
            if missing:
                raise UserError(f"{path}: array {missing[0]!r} missing; rerun `pipeline prepare`")
            return {n: data[n] for n in names}
    except FileNotFoundError:
        raise UserError(f"{path}: prepared data not found; run `dvc repro prepare` first") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: not a readable .npz file ({exc})") from None
