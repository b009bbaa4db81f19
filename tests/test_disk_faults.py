"""Every stage that writes, on a full and on a read-only filesystem: one line, exit code 2, old outputs kept.

A project is built once on the tiny corpus (every stage run through the real CLI). Each case
copies it, then runs one stage in a mount namespace of its own (`unshare --mount`), where the
folder holding that stage's outputs is either a tmpfs holding a copy of the old outputs and
filled to the last byte, or a read-only bind mount of itself. The stage must end with exit code
2 and one `error:` line naming the problem, and, on the full tmpfs, leave the old outputs byte for
byte; what is on the tmpfs is copied out before the namespace ends, so it is what is compared.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import make_corpus, pipeline_steps, tiny_params_dict

ROOT = Path(__file__).parents[1]
# Each stage that writes, the folder its outputs live in, and what the command line adds.
STAGES = {
    "download": ("data", ["download"]),
    "prepare": ("data", ["prepare"]),
    "train": ("metrics", ["train", "birnn"]),
    "evaluate": ("metrics", ["evaluate"]),
    "publish": ("models", ["publish", "birnn"]),
    "suspects": ("metrics", ["suspects"]),
    "compare": ("metrics", ["compare"]),
    "export": ("exported", ["export", "--model", "birnn"]),
}
PROBLEM = {"full": "No space left on device", "read-only": "Read-only file system"}

# Inside the namespace: $1 the folder, $2 the case, $3 where to copy the folder's contents after.
# A full tmpfs holds the old contents and a filler that takes every byte left.
SHELL = r"""
set -e
folder=$1 case=$2 after=$3; shift 3
if [ "$case" = full ]; then
    mkdir -p "$folder" "$after.old" && cp -a "$folder/." "$after.old/"
    mount -t tmpfs -o size=4m tmpfs "$folder"
    cp -a "$after.old/." "$folder/"
    dd if=/dev/zero of="$folder/.filler" bs=4096 2>/dev/null || true
    dd if=/dev/zero of="$folder/.filler2" bs=1 2>/dev/null || true
else
    mkdir -p "$folder" && mount --bind "$folder" "$folder" && mount -o remount,bind,ro "$folder"
fi
set +e
"$@"
code=$?
mkdir -p "$after" && cp -a "$folder/." "$after/"
rm -f "$after/.filler" "$after/.filler2"
exit $code
"""


def _unshare_works() -> bool:
    done = subprocess.run(["unshare", "--mount", "--map-root-user", "true"], capture_output=True)
    return done.returncode == 0


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The tiny project with every stage's outputs, through the CLI, as dvc.yaml orders them."""
    assert _unshare_works(), "unshare --mount --map-root-user fails here: no mount namespace for the test"
    root = tmp_path_factory.mktemp("disk") / "project"
    root.mkdir()
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in make_corpus()))
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(), sort_keys=False))
    steps = [*pipeline_steps(), ["export", "--model", "birnn"]]
    for args in steps:
        done = _cli(root, *args)
        assert done.returncode == 0, f"{args}: {done.stderr[-2000:]}"
    return root


def _contents(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<folder>"
        for p in sorted(folder.rglob("*"))
        if not p.is_symlink()
    }


@pytest.mark.parametrize("case", ["full", "read-only"])
@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_on_a_full_or_read_only_disk_says_so_in_one_line_and_keeps_the_old_outputs(
    built, tmp_path, stage, case
):
    root = tmp_path / "project"
    shutil.copytree(built, root, symlinks=True)
    folder, args = STAGES[stage]
    if stage == "train":  # a changed setting, so that it has something new to write
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["train"]["max_epochs"] = 2
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = _contents(root / folder)
    after = tmp_path / "after"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "sh", "-c", SHELL, "sh", folder, case, str(after),
         sys.executable, "-m", "pipeline", *args],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    assert PROBLEM[case] in lines[0] and "Traceback" not in done.stderr
    assert _contents(after) == before, f"{stage} on a {case} disk changed its outputs"
