"""`dvc plots show` and `dvc plots diff` pages, opened offline in headless Chromium as a reader would.

The project's dvc.yaml, params.yaml and plot templates are copied into a temporary git repo, with
made-up data in every file the plots read (so the test does not wait for a pipeline run); the page
template comes from the real `pipeline plots-template`. Chromium runs with every network feature
off and reads the page from disk; the test reads the DOM it drew and checks each chart holds a
line per file or a matrix per model, with legends naming models and splits, never files.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

BIN = Path(sys.executable).parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
LEAF_MARKS = ("line", "rect", "text", "rule", "symbol", "area")


def _browser() -> str:
    found = os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    if found:
        return found
    reason = "no Chromium on this machine (Debian: apt-get install chromium); the offline plots page was not opened"
    if os.environ.get("PIPELINE_REQUIRE_BROWSER"):
        pytest.fail(reason)
    pytest.skip(reason)


def _plots() -> list[tuple[str, dict]]:
    """dvc.yaml's top-level plots as (title, definition), with ${...} resolved from params.yaml."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))

    def resolve(text: str) -> str:
        def value(match: re.Match) -> str:
            node = params
            for key in match.group(1).split("."):
                node = node[int(key)] if isinstance(node, list) else node[key]
            return str(node)

        return re.sub(r"\$\{([^}]+)\}", value, text)

    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["plots"]
    return [
        (title, {**spec, "y": {resolve(f): field for f, field in spec["y"].items()}})
        for plot in plots
        for title, spec in plot.items()
    ]


def _write_data(repo: Path, rng: random.Random) -> None:
    """Made-up data in the format of each file: a DVCLive TSV, evaluate's predictions JSON, or its
    calibration JSON (reliability bins before and after temperature scaling)."""
    labels = ["business", "politics", "sport", "tech"]
    for _, spec in _plots():
        for name, field in spec["y"].items():
            path = repo / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if spec["template"] == "reliability":
                bins = [
                    {"scaling": scaling, spec["x"]: (k + rng.random()) / 15, field: rng.random(), "count": k + 1}
                    for scaling in ("before", "after")
                    for k in range(8, 15)
                ]
                path.write_text(json.dumps({"served_seed": 7, "temperature": 1.3, "bins": bins}), encoding="utf-8")
            elif name.endswith(".tsv"):
                rows = "".join(f"{step}\t{rng.random():.4f}\n" for step in range(1, 13))
                path.write_text(f"{spec['x']}\t{field}\n{rows}", encoding="utf-8")
            else:
                pairs = [(rng.choice(labels), rng.choice(labels)) for _ in range(60)]
                path.write_text(json.dumps([{spec["x"]: p, field: a} for a, p in pairs]), encoding="utf-8")


def _repo(tmp_path: Path) -> tuple[Path, callable]:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site-cache"),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }

    def sh(*args: str) -> str:
        done = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        return done.stdout

    sh("git", "init", "-q")
    sh(str(BIN / "dvc"), "init", "-q")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(ROOT / name, repo / name)
    shutil.copy2(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")
    _write_data(repo, random.Random(0))
    sh(str(BIN / "pipeline"), "plots-template")
    return repo, sh


def _open(browser: str, page: Path, profile: Path) -> str:
    """The DOM after the page's scripts ran, from headless Chromium with the network features off."""
    args = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=30000",
        "--dump-dom",
        page.as_uri(),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _charts(html: str, dom: str) -> dict[str, str]:
    """{chart div id: its part of the DOM}, for every plot DVC put on the page."""
    ids = re.findall(r"vegaEmbed\('#([^']+)'", html)
    assert ids, "no plot on the page"
    starts = []
    for chart in ids:
        match = re.search(rf'<div id="{re.escape(chart)}"', dom)
        assert match, f"chart {chart} missing from the drawn page"
        starts.append(match.start())
    ends = starts[1:] + [len(dom)]
    return {chart: dom[start:end] for chart, start, end in zip(ids, starts, ends, strict=True)}


def _drawn_marks(part: str) -> dict[str, int]:
    """Mark groups that hold something drawn: a path with geometry, or a non-empty text."""
    counts: dict[str, int] = {}
    for kind, body in re.findall(r'<g class="mark-(\w+) role-mark[^"]*"[^>]*>(.*?)</g>', part, flags=re.S):
        if kind in LEAF_MARKS and (re.search(r'<path[^>]* d="M', body) or re.search(r"<text[^>]*>[^<]+<", body)):
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def _texts(part: str, role: str) -> set[str]:
    groups = re.findall(rf'<g class="mark-text {role}"[^>]*>(.*?)</g>', part, flags=re.S)
    return {t for g in groups for t in re.findall(r"<text[^>]*>([^<]*)</text>", g)}


def _model(path: str) -> str:
    """The name a reader should see: the folder above plots/ or seed<S>/, or the file's stem."""
    parts = path.split("/")
    if "plots" in parts:
        above = parts[: parts.index("plots")]
        return above[-2] if re.fullmatch(r"seed\d+", above[-1]) else above[-1]
    return Path(path).stem


def _check_page(browser: str, page: Path, profile: Path, revisions: int) -> None:
    html = page.read_text(encoding="utf-8")
    assert "<script src=" not in html  # nothing to fetch: the scripts are in the page
    charts = _charts(html, _open(browser, page, profile))
    plots = _plots()
    titles = re.findall(r'"title": \{"text": "([^"]+)"', html)
    assert titles == [title for title, _ in plots]
    assert len(charts) == len(plots)
    for (title, spec), part in zip(plots, charts.values(), strict=True):
        assert "<svg" in part, f"{title}: nothing drawn"
        marks = _drawn_marks(part)
        legend = _texts(part, "role-legend-label")
        assert not any("/" in label or "." in label for label in legend), (title, legend)
        models = {_model(f) for f in spec["y"]}
        axes = _texts(part, "role-axis-title")
        assert {spec["x_label"], spec["y_label"]} <= axes, (title, axes)
        if spec["template"] == "reliability":
            # One diagram per model and revision: a line per scaling (before, after), coloured, with its dots.
            assert marks.get("line", 0) == 2 * len(models) * revisions, (title, marks)
            assert marks.get("symbol", 0) == len(models) * revisions, (title, marks)
            assert models <= _texts(part, "role-title-text"), title
            assert legend == {"before", "after temperature scaling"}, (title, legend)
            continue
        if spec["template"] == "confusion_matrices":
            # One matrix per model and revision, every cell with its count.
            assert marks.get("rect", 0) == marks.get("text", 0) == len(models) * revisions, (title, marks)
            assert models <= _texts(part, "role-title-text"), title
            continue
        # One line per file and revision; one colour per model, one dash pattern per split.
        assert marks.get("line", 0) == len(spec["y"]) * revisions, (title, marks)
        splits = {f.split("/")[-2] for f in spec["y"]} & {"train", "val"}
        assert legend == models | splits, (title, legend)


def test_plots_show_and_diff_render_offline_in_chromium(tmp_path):
    browser = _browser()
    repo, sh = _repo(tmp_path)
    dvc = str(BIN / "dvc")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "plots")

    sh(dvc, "plots", "show", "-o", "show")
    _check_page(browser, repo / "show" / "index.html", tmp_path / "profile-show", revisions=1)

    # A second revision: the workspace with other numbers in every file.
    _write_data(repo, random.Random(1))
    sh(dvc, "plots", "diff", "HEAD", "-o", "diff")
    _check_page(browser, repo / "diff" / "index.html", tmp_path / "profile-diff", revisions=2)
