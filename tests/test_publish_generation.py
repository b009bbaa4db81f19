"""pipeline.core.files.generation: several outputs replaced together, or none of them."""

from __future__ import annotations

import errno

import pytest

from pipeline.core import files
from pipeline.core.errors import UserError


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _publish(root, text: str) -> None:
    with files.generation() as gen:
        (gen.folder(root / "models") / "seed7.pt").write_text(text)
        files.write_text(gen.file(root / "summary.json"), text)


def test_a_rename_that_fails_half_way_moves_the_first_outputs_back(tmp_path, monkeypatch):
    _publish(tmp_path, "old")
    before = _tree(tmp_path)
    real, calls = files._exchange, []

    def second_fails(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error", str(b))
        return real(a, b)

    monkeypatch.setattr(files, "_exchange", second_fails)
    with pytest.raises(UserError, match=r"summary.json: cannot be written \(Input/output error\)"):
        _publish(tmp_path, "new")
    assert _tree(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "summary.json"]


def test_a_refused_write_names_the_output_not_its_temp(tmp_path, monkeypatch):
    _publish(tmp_path, "old")
    before = _tree(tmp_path)

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(tmp_path), "write_bytes", full)
    with pytest.raises(UserError) as refused:
        with files.generation() as gen:
            gen.folder(tmp_path / "models")
            files.write_text(gen.file(tmp_path / "summary.json"), "new")
    assert str(refused.value) == (
        f"{tmp_path / 'summary.json'}: cannot be written (No space left on device); the previous outputs are kept"
    )
    assert _tree(tmp_path) == before
