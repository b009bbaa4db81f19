"""pipeline.core.files: generations published whole, stale temp files removed, the one JSONL format."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.core import files
from pipeline.core.errors import UserError
from pipeline.data import arrays as arrays_format


def _tree(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_publish_dir_replaces_the_whole_generation(tmp_path):
    out = tmp_path / "data" / "prepared"
    with files.publish_dir(out) as stage:
        (stage / "a.txt").write_text("old a")
        (stage / "b.txt").write_text("old b")
    with files.publish_dir(out) as stage:
        (stage / "a.txt").write_text("new a")
    # b.txt belonged to the old generation only: it goes with it.
    assert _tree(out) == {"a.txt": b"new a"}
    assert sorted(p.name for p in out.parent.iterdir()) == ["prepared"]
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~files._UMASK)


def test_a_failed_generation_leaves_the_old_one_and_no_temp_folder(tmp_path):
    out = tmp_path / "prepared"
    with files.publish_dir(out) as stage:
        (stage / "vocab.json").write_text("old vocab")
        (stage / "train.npz").write_text("old train")
    with pytest.raises(RuntimeError), files.publish_dir(out) as stage:
        (stage / "train.npz").write_text("new train")
        raise RuntimeError("killed between two files")
    assert _tree(out) == {"train.npz": b"old train", "vocab.json": b"old vocab"}
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]


def test_a_failed_first_generation_removes_the_folders_it_made(tmp_path):
    with pytest.raises(RuntimeError), files.publish_dir(tmp_path / "data" / "raw"):
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_publish_dir_without_an_atomic_exchange_still_swaps(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    out = tmp_path / "prepared"
    for text in ("one", "two"):
        with files.publish_dir(out) as stage:
            (stage / "f").write_text(text)
    assert _tree(out) == {"f": b"two"}
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]


def _dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return int(proc.stdout)


def test_temp_files_of_a_killed_writer_are_removed_and_a_live_writers_kept(tmp_path):
    out = tmp_path / "prepared"
    dead, live = _dead_pid(), os.getppid()
    stale = [tmp_path / f".prepared.{dead}.abc123.tmp", tmp_path / f".prepared.{dead}.x_9.old"]
    for folder in stale:
        folder.mkdir()
        (folder / "train.npz").write_bytes(b"partial")
    stale_file = tmp_path / f".stats.json.{dead}.q1w2.tmp"
    stale_file.write_text("partial")
    running = tmp_path / f".prepared.{live}.zzz.tmp"
    running.mkdir()
    unrelated = tmp_path / ".prepared.notapid.tmp"
    unrelated.mkdir()
    with files.publish_dir(out) as stage:
        (stage / "f").write_text("new")
    files.write_text(tmp_path / "stats.json", "{}")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["prepared", running.name, unrelated.name, "stats.json"])


@pytest.mark.parametrize("text", ["line\u2028sep", "para\u2029sep", "next\x85line", "tab\tcr\r\nlf"])
def test_jsonl_lines_survive_splitlines_and_read_back(tmp_path, text):
    line = files.jsonl_line({"text": text, "label": "x"})
    assert line.endswith(b"\n") and len(line.decode().splitlines()) == 1
    path = tmp_path / "t.jsonl"
    path.write_bytes(line * 2)
    rows = [row for _, row in files.read_jsonl(path, "texts", "make")]
    assert rows == [{"text": text, "label": "x"}] * 2


def test_jsonl_refuses_unpaired_surrogates_in_one_line():
    with pytest.raises(UserError, match="unpaired surrogate"):
        files.jsonl_line({"text": json.loads('"\\ud800"')})


def test_deeply_nested_json_is_one_user_error(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"text": "ok"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(UserError, match=r"line 2: JSON nested too deeply"):
        list(files.read_jsonl(path, "corpus", "pipeline download"))


def test_a_line_past_the_limit_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MAX_LINE_CHARS", 100)
    path = tmp_path / "long.jsonl"
    path.write_text('{"text": "short"}\n' + '{"text": "' + "a" * 200 + '"}\n')
    with pytest.raises(UserError, match="line 2: longer than 100 characters; refused"):
        list(files.read_jsonl(path, "corpus", "pipeline download"))
    path.write_text('{"text": "' + "a" * 86 + '"}\n')  # 99 characters and the newline: fits
    assert len(list(files.read_jsonl(path, "corpus", "pipeline download"))) == 1


def test_npz_written_in_blocks_has_the_bytes_of_np_savez(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "ids": rng.integers(0, 1000, (1003, 7)),
        "lengths": rng.integers(1, 7, 1003),
        "labels": rng.integers(0, 5, 1003),
    }
    np.savez(tmp_path / "whole.npz", **arrays)
    with arrays_format.NpzWriter(tmp_path / "blocks.npz") as npz:
        with npz.blocks("ids", np.int64, arrays["ids"].shape) as write:
            for start in range(0, 1003, 100):
                write(arrays["ids"][start : start + 100])
        npz.add("lengths", arrays["lengths"])
        npz.add("labels", arrays["labels"])
    assert (tmp_path / "blocks.npz").read_bytes() == (tmp_path / "whole.npz").read_bytes()
    with pytest.raises(ValueError, match="2 rows written, 3 announced"):
        with arrays_format.NpzWriter(tmp_path / "short.npz") as npz:
            with npz.blocks("ids", np.int64, (3, 7)) as write:
                write(arrays["ids"][:2])


def test_npz_blocks_take_a_shape_of_numpy_integers(tmp_path):
    ids = np.arange(12, dtype=np.int64).reshape(4, 3)
    np.savez(tmp_path / "whole.npz", ids=ids)
    with arrays_format.NpzWriter(tmp_path / "blocks.npz") as npz:
        with npz.blocks("ids", np.int64, (np.int64(4), np.int32(3))) as write:
            write(ids)
    with np.load(tmp_path / "blocks.npz") as data:
        assert np.array_equal(data["ids"], ids)
    assert (tmp_path / "blocks.npz").read_bytes() == (tmp_path / "whole.npz").read_bytes()


def _prepared(tmp_path, **overrides):
    arrays = {
        "ids": np.array([[2, 5, 0], [7, 0, 0]], dtype=np.int64),
        "lengths": np.array([2, 1], dtype=np.int64),
        "labels": np.array([0, 3], dtype=np.int64),
    }
    arrays.update(overrides)
    path = tmp_path / "train.npz"
    np.savez(path, **arrays)
    return path


NAMES = ("ids", "lengths", "labels")
BOUNDS = {"vocab_size": 8, "num_classes": 4, "max_len": 3}


def test_prepared_arrays_within_their_bounds_load(tmp_path):
    loaded = arrays_format.load(_prepared(tmp_path), NAMES, **BOUNDS)
    assert loaded["ids"].tolist() == [[2, 5, 0], [7, 0, 0]] and loaded["labels"].tolist() == [0, 3]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"ids": np.array([[2.0, 5, 0], [7, 0, 0]])}, "ids: float64 values, integers expected"),
        ({"lengths": np.array([2.0, 1.0])}, "lengths: float64 values, integers expected"),
        ({"labels": np.array([0.5, 3.0])}, "labels: float64 values, integers expected"),
        ({"ids": np.array([2, 5, 0], dtype=np.int64)}, "ids: shape (3,), 2 dimensions (texts, positions) expected"),
        ({"lengths": np.array([[2], [1]], dtype=np.int64)}, "lengths: shape (2, 1), 1 dimension expected"),
        ({"labels": np.array([0, 3, 1], dtype=np.int64)}, "labels: 3 rows, ids has 2"),
        ({"ids": np.array([[2, 5], [7, 0]], dtype=np.int64)}, "ids: 2 positions a row, prepare.max_len is 3"),
        ({"ids": np.array([[2, 9, 0], [12, 8, 0]], dtype=np.int64)}, "ids: 3 values outside [0, 8) (max 12)"),
        ({"ids": np.array([[2, -1, 0], [7, 0, 0]], dtype=np.int64)}, "ids: 1 values outside [0, 8) (min -1)"),
        ({"lengths": np.array([0, 1], dtype=np.int64)}, "lengths: 1 values outside [1, 4) (min 0)"),
        ({"lengths": np.array([4, 1], dtype=np.int64)}, "lengths: 1 values outside [1, 4) (max 4)"),
        ({"labels": np.array([0, 4], dtype=np.int64)}, "labels: 1 values outside [0, 4) (max 4)"),
    ],
)
def test_prepared_arrays_out_of_shape_or_range_are_one_line(tmp_path, overrides, expected):
    path = _prepared(tmp_path, **overrides)
    with pytest.raises(UserError) as err:
        arrays_format.load(path, NAMES, **BOUNDS)
    assert str(err.value) == f"{path}: {expected}; rerun `pipeline prepare`"


def test_prepared_bounds_not_given_are_not_checked(tmp_path):
    # Without a vocabulary size or class count, ids and labels are only checked for dtype and shape;
    # lengths are always checked against the width of ids.
    path = _prepared(tmp_path, ids=np.array([[2, 900, 0], [7, 0, 0]]), labels=np.array([0, 40]))
    assert arrays_format.load(path, NAMES)["ids"].max() == 900
    path = _prepared(tmp_path, lengths=np.array([4, 1]))
    with pytest.raises(UserError, match=r"lengths: 1 values outside \[1, 4\) \(max 4\)"):
        arrays_format.load(path, NAMES)
