"""Report figures: valid PNGs of sensible size, same data -> same bytes, any number of models and
seeds, and what a reader sees in them (legends and axis titles in words, counts in the matrices)."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import pytest
from conftest import pipeline_steps

from pipeline.core import files
from pipeline.core.errors import UserError
from pipeline.report import figures

MODELS = ("baseline", "birnn", "stacked")
LABELS = ("money", "sport", "tech")


def _run(epochs: int, train_end: float, val_end: float) -> dict:
    """Synthetic DVCLive-like curves that rise (accuracy) and fall (loss) towards the given ends."""

    def rise(end):
        return [(e, round(0.3 + (end - 0.3) * e / epochs, 6)) for e in range(1, epochs + 1)]

    def fall(end):
        return [(e, round(1.6 - (1.6 - end) * e / epochs, 6)) for e in range(1, epochs + 1)]

    return {
        "accuracy": {"train": rise(train_end), "val": rise(val_end)},
        "loss": {"train": fall(1 - train_end), "val": fall(1.5 - val_end)},
    }


CURVES = {
    "baseline": [_run(12, 0.99, 0.55)],
    "birnn": [_run(10, 0.95, 0.90), _run(9, 0.96, 0.91)],
    "stacked": [_run(12, 0.90, 0.86), _run(12, 0.91, 0.84), _run(11, 0.89, 0.85)],
}
PREDICTIONS = {
    "baseline": [("money", "money"), ("money", "tech"), ("sport", "sport"), ("tech", "money")],
    "birnn": [("money", "money"), ("money", "money"), ("sport", "sport"), ("tech", "tech")],
    "reference": [("money", "money"), ("money", "money"), ("sport", "tech"), ("tech", "tech")],
}
SEEDS = {
    "baseline": [{"train": 0.99, "val": 0.55, "test": 0.54}],
    "birnn": [{"train": 0.97, "val": 0.92, "test": 0.93}, {"train": 0.96, "val": 0.90, "test": 0.91}],
    "stacked": [{"train": 0.9 + i / 100, "val": 0.84 + i / 100, "test": 0.85 + i / 200} for i in range(5)],
}


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a well-formed PNG: signature, CRC-checked chunks, complete pixel data."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, chunks, idat = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        chunks.append(kind)
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    ihdr = data[16:29]
    width, height, depth, colour = struct.unpack(">IIBB", ihdr[:10])
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    row = (width * channels * depth + 7) // 8
    assert len(zlib.decompress(idat)) == height * (row + 1), "pixel data does not fill the image"
    return width, height


def svg_texts(spec: dict, css_class: str) -> list[str]:
    """The text a reader sees in one role of the rendered figure (legend labels, axis titles...)."""
    import vl_convert

    svg = vl_convert.vegalite_to_svg(spec, vl_version=figures.VEGA_LITE, config={"font": figures.FONT})
    groups = re.findall(rf'class="mark-text {css_class}"[^>]*>(.*?)</g>', svg, flags=re.S)
    return [t for g in groups for t in re.findall(r"<text[^>]*>([^<]*)</text>", g)]


def test_write_renders_each_figure_as_a_valid_png_of_sensible_size(tmp_path):
    drawn = figures.write(tmp_path / "figures", CURVES, PREDICTIONS, SEEDS)
    assert [p.name for p in drawn.values()] == [figures.LEARNING_CURVES, figures.CONFUSION, figures.SEED_SPREAD]
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(p.name for p in drawn.values())
    for path in drawn.values():
        data = path.read_bytes()
        width, height = png_size(data)
        assert 600 <= width <= 3000 and 200 <= height <= 2000, (path.name, width, height)
        assert 10_000 < len(data) < 1_000_000, (path.name, len(data))
    # Drawn at 1.5 px per unit: wider than tall for side-by-side panels, readable on any screen.
    width, height = png_size(drawn["Train vs. validation accuracy and loss per epoch"].read_bytes())
    assert width > 1.5 * height


def test_same_data_gives_the_same_bytes_and_other_data_other_bytes(tmp_path):
    first = figures.write(tmp_path / "a", CURVES, PREDICTIONS, SEEDS)
    second = figures.write(tmp_path / "b", CURVES, PREDICTIONS, SEEDS)
    for one, two in zip(first.values(), second.values(), strict=True):
        assert one.read_bytes() == two.read_bytes(), one.name
    changed = {**SEEDS, "baseline": [{"train": 0.99, "val": 0.65, "test": 0.54}]}
    spec_a, spec_b = figures.seed_spread_spec(SEEDS), figures.seed_spread_spec(changed)
    assert figures.render_png(spec_a) != figures.render_png(spec_b)


def test_learning_curves_colour_per_model_dash_per_split_and_words_on_the_axes():
    spec = figures.learning_curves_spec(CURVES)
    assert [p["encoding"]["y"]["title"] for p in spec["hconcat"]] == ["Accuracy", "Loss (cross-entropy)"]
    panel = spec["hconcat"][0]["encoding"]
    assert panel["color"]["field"] == "model" and panel["color"]["scale"]["domain"] == list(MODELS)
    assert panel["strokeDash"]["field"] == "split"
    assert panel["detail"]["field"] == "seed"  # every seed its own line, never joined to another
    rows = spec["data"]["values"]
    assert len(rows) == sum(
        len(pts) for runs in CURVES.values() for run in runs for by_split in run.values() for pts in by_split.values()
    )
    assert {(r["model"], r["seed"]) for r in rows} >= {("stacked", 2), ("birnn", 1), ("baseline", 0)}

    legend = svg_texts(spec, "role-legend-label")
    assert set(legend) == {*MODELS, "train", "validation"}
    assert not any("/" in t or ".tsv" in t for t in legend)  # no file paths
    assert set(svg_texts(spec, "role-axis-title")) == {"Epoch", "Accuracy", "Loss (cross-entropy)"}
    assert set(svg_texts(spec, "role-legend-title")) == {"Model", "Split"}


def test_confusion_matrices_count_each_cell_and_name_the_axes():
    spec = figures.confusion_spec(PREDICTIONS)
    cells = {(r["model"], r["actual"], r["predicted"]): r for r in spec["data"]["values"]}
    assert len(cells) == len(PREDICTIONS) * len(LABELS) ** 2  # every cell, zeros included
    assert cells[("baseline", "money", "tech")]["count"] == 1
    assert cells[("baseline", "money", "money")]["share"] == 0.5  # share of the actual class
    assert cells[("birnn", "money", "money")] == {
        "model": "birnn",
        "actual": "money",
        "predicted": "money",
        "count": 2,
        "share": 1.0,
    }
    assert cells[("reference", "sport", "sport")]["count"] == 0
    assert set(svg_texts(spec, "role-axis-title")) == {"Actual class", "Predicted class"}
    # One header per model, named like the model, not like its predictions file.
    assert set(svg_texts(spec, "role-title-text")) == {"Test confusion matrices", *PREDICTIONS}


def _svg(spec: dict) -> str:
    import vl_convert

    return vl_convert.vegalite_to_svg(spec, vl_version=figures.VEGA_LITE, config={"font": figures.FONT})


def test_seed_spread_draws_every_seed_and_says_how_many():
    spec = figures.seed_spread_spec(SEEDS)
    rows = spec["data"]["values"]
    assert len(rows) == 3 * (1 + 2 + 5)
    assert spec["title"]["text"] == "Accuracy across seeds (1–5 seeds per model)"
    stacked_val = sorted(r["accuracy"] for r in rows if r["model"] == "stacked" and r["split"] == "validation")
    assert stacked_val == pytest.approx([0.84, 0.85, 0.86, 0.87, 0.88])
    assert set(svg_texts(spec, "role-legend-label")) == set(MODELS)
    # What five seeds draw: 15 dots, and a range bar and a mean tick per model and split.
    svg = _svg(spec)
    assert len(re.findall(r'aria-roledescription="circle"', svg)) == 3 * 8


RELIABILITY = {
    "baseline": [
        {"scaling": "before", "confidence": 0.95, "accuracy": 0.7, "count": 20},
        {"scaling": "before", "confidence": 0.55, "accuracy": 0.5, "count": 4},
        {"scaling": "after", "confidence": 0.75, "accuracy": 0.7, "count": 20},
        {"scaling": "after", "confidence": 0.45, "accuracy": 0.5, "count": 4},
    ],
    "birnn": [{"scaling": "before", "confidence": 0.9, "accuracy": 0.9, "count": 24}],
}


def test_reliability_diagrams_one_panel_per_model_before_and_after_scaling(tmp_path):
    spec = figures.reliability_spec(RELIABILITY)
    assert len(spec["data"]["values"]) == 5
    assert set(svg_texts(spec, "role-title-text")) >= set(RELIABILITY)  # one panel per model, by name
    assert set(svg_texts(spec, "role-legend-label")) >= {"before", "after temperature scaling"}
    assert set(svg_texts(spec, "role-axis-title")) == {"Mean confidence", "Accuracy"}
    svg = _svg(spec)
    assert len(re.findall(r'aria-roledescription="circle"', svg)) == 5  # a dot per bin
    drawn = figures.write(tmp_path / "figures", CURVES, PREDICTIONS, SEEDS, reliability=RELIABILITY)
    path = drawn["Reliability diagrams, test split, before and after temperature scaling"]
    assert path.name == figures.RELIABILITY
    width, height = png_size(path.read_bytes())
    assert width >= 600 and height >= 200
    assert figures.render_png(spec) == figures.render_png(figures.reliability_spec(RELIABILITY))


def test_seed_spread_with_one_seed_per_model_still_draws():
    one = {"baseline": SEEDS["baseline"], "birnn": SEEDS["birnn"][:1]}
    spec = figures.seed_spread_spec(one)
    assert spec["title"]["text"] == "Accuracy across seeds (1 seed per model)"
    assert len(re.findall(r'aria-roledescription="circle"', _svg(spec))) == 2 * 3
    width, height = png_size(figures.render_png(spec))
    assert width > 600 and height > 150


@pytest.mark.parametrize(
    "call",
    [
        lambda: figures.learning_curves_spec({"baseline": []}),
        lambda: figures.confusion_spec({"baseline": []}),
        lambda: figures.seed_spread_spec({}),
        lambda: figures.reliability_spec({"birnn": []}),
    ],
)
def test_nothing_to_draw_is_a_clear_error(call):
    with pytest.raises(ValueError, match="no .* to draw"):
        call()


def _tsv(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_read_learning_curves_reads_dvclive_tsvs(tmp_path):
    for split in ("train", "val"):
        _tsv(tmp_path / f"plots/metrics/{split}/accuracy.tsv", "step\taccuracy\n1\t0.5\n2\t0.75\n")
    curves = files.read_learning_curves(tmp_path, ("accuracy",), ("train", "val"))
    assert curves == {"accuracy": {"train": [(1, 0.5), (2, 0.75)], "val": [(1, 0.5), (2, 0.75)]}}


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "learning curve not found"),
        ("step\tloss\n1\t0.5\n", "not a DVCLive learning curve of accuracy"),
        ("step\taccuracy\n", "not a DVCLive learning curve of accuracy"),
        ("step\taccuracy\n1\t0.5\ntwo\t0.6\n", "line 3: expected <step><TAB><accuracy>"),
    ],
)
def test_read_learning_curves_refuses_what_it_cannot_read(tmp_path, content, message):
    if content is not None:
        _tsv(tmp_path / "plots/metrics/train/accuracy.tsv", content)
    with pytest.raises(UserError, match=re.escape(message)) as info:
        files.read_learning_curves(tmp_path, ("accuracy",), ("train",))
    assert "\n" not in str(info.value)


def test_compare_draws_and_embeds_the_figures_from_the_real_stages(tiny_project):
    import json

    import yaml
    from typer.testing import CliRunner

    from pipeline.cli import app

    runner = CliRunner()
    seeds = yaml.safe_load(Path("params.yaml").read_text())["train"]["seeds"]
    steps = pipeline_steps()
    for args in steps:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)

    report = Path("metrics/report.md").read_text(encoding="utf-8")
    embedded = re.findall(r"!\[([^\]]+)\]\(([^)]+)\)", report)
    assert [path for _, path in embedded] == [
        "figures/learning_curves.png",
        "figures/confusion_matrices.png",
        "figures/seed_spread.png",
        "figures/reliability.png",
        "figures/ladder.png",  # every rung of the ablation ladder was trained
    ]
    for _, path in embedded:  # relative to the report, as a Markdown viewer resolves it
        width, height = png_size((Path("metrics") / path).read_bytes())
        assert width >= 600 and height >= 200
    first = {p: (Path("metrics") / p).read_bytes() for _, p in embedded}
    Path("metrics/figures/no_longer_drawn.png").write_bytes(first["figures/ladder.png"])
    assert runner.invoke(app, ["compare"]).exit_code == 0
    assert {p: (Path("metrics") / p).read_bytes() for p in first} == first  # same inputs, same bytes
    # The folder is replaced whole, with the report that embeds it: no figure of an older run stays.
    assert sorted(p.name for p in Path("metrics/figures").iterdir()) == sorted(Path(p).name for p in first)

    # A run's missing learning curve stops compare with one line, before anything is written.
    for _, path in embedded:
        (Path("metrics") / path).unlink()
    Path(f"dvclive/stacked/seed{seeds[-1]}/plots/metrics/val/loss.tsv").unlink()
    result = runner.invoke(app, ["compare"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: dvclive/stacked/seed{seeds[-1]}/plots/metrics/val/loss.tsv: learning curve not found; "
        "run `dvc repro` first"
    )
    assert not any((Path("metrics") / p).exists() for _, p in embedded)
    assert json.loads(Path("metrics/compare.json").read_text())  # the earlier, complete generation
