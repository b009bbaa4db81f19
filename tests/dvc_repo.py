"""A temporary git + DVC repo holding this project's pipeline on the tiny corpus, for e2e tests.

Everything a stage needs (the code, dvc.yaml, params.yaml, the corpus) is committed, so a fresh
`git clone` or a queue worker's temporary copy of the commit can run the pipeline too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml
from conftest import ROOT, make_corpus, tiny_params_dict

BIN = Path(sys.executable).parent  # the venv's bin: dvc, and the `pipeline` console script
DVC = str(BIN / "dvc")


def repo_env(repo: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        # The repo's own copy of the code, not the editable install's, is what the stages import.
        "PYTHONPATH": str(repo),
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(repo.parent / "dvc-site-cache"),
        "GIT_AUTHOR_NAME": "e2e",
        "GIT_AUTHOR_EMAIL": "e2e@example.com",
        "GIT_COMMITTER_NAME": "e2e",
        "GIT_COMMITTER_EMAIL": "e2e@example.com",
        **extra,
    }


def runner(repo: Path, env: dict[str, str]) -> Callable[..., str]:
    """sh(*args): run a command in the repo, fail the test with its output unless it exits 0."""

    def sh(*args: str, timeout: float = 600) -> str:
        done = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{output[-3000:]}"
        return output

    return sh


def ran(output: str) -> set[str]:
    """The stages whose command `dvc repro` / `dvc exp run` ran."""
    return set(re.findall(r"Running stage '([^']+)'", output))


def write_project(repo: Path, params: dict | None = None) -> None:
    """The pipeline's code and dvc.yaml, the tiny corpus and `params` (tiny by default) in `repo`."""
    repo.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "pipeline", repo / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", "pyproject.toml", ".gitignore"):
        shutil.copy2(ROOT / name, repo / name)
    (repo / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in make_corpus()), encoding="utf-8")
    params = tiny_params_dict() if params is None else params
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def make_repo(repo: Path, params: dict | None = None) -> dict[str, str]:
    """A committed git + DVC repo at `repo` with the pipeline, the tiny corpus and `params`
    (tiny by default); returns the environment to run dvc and pipeline in it."""
    write_project(repo, params)
    env = repo_env(repo)
    sh = runner(repo, env)
    sh("git", "init", "-q")
    sh("git", "config", "user.name", "e2e")  # dvc exp commits through its own git client
    sh("git", "config", "user.email", "e2e@example.com")
    sh(DVC, "init", "-q")
    shutil.copy2(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "tiny project")
    return env


def exp_show_rows(node, name: str | None = None) -> list[dict]:
    """Every {"rev", "params", "metrics", ...} record anywhere in `dvc exp show --json`'s
    nested output, with its experiment's (or branch's) "name" added."""
    rows = []
    if isinstance(node, dict):
        if "params" in node and "metrics" in node:
            rows.append({**node, "name": name})
        for value in node.values():
            rows += exp_show_rows(value, node.get("name", name))
    elif isinstance(node, list):
        for value in node:
            rows += exp_show_rows(value, name)
    return rows
