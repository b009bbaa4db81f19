"""The `pipeline` command line: one subcommand per DVC stage, configured by params.yaml.

Options here are paths and verbosity only; hyperparameters live in params.yaml. Errors a
user can cause print one line and exit with code 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from pipeline.errors import UserError

app = typer.Typer(
    help="Reproducible RNN vs. bidirectional-RNN text classification, one command per DVC stage.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsPath = Annotated[
    Path, typer.Option("--params", help="The params file to read.", dir_okay=False)
]

T = TypeVar("T")


class ModelName(str, Enum):
    baseline = "baseline"
    birnn = "birnn"


def _guard(work: Callable[[], T]) -> T:
    """Run a stage; a UserError becomes one line on stderr and exit code 2."""
    try:
        return work()
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted; no output was published", err=True)
        raise typer.Exit(130) from None


def _load(params: Path, *sections: str):
    from pipeline import params as params_module

    return params_module.load(params, sections)


@app.command()
def download(params: ParamsPath = Path("params.yaml")) -> None:
    """Fetch the corpus into data/raw/ (corpus.jsonl + manifest.json)."""
    from pipeline import download as stage

    _guard(lambda: stage.run(_load(params, "download")))


@app.command()
def prepare(params: ParamsPath = Path("params.yaml")) -> None:
    """Tokenise, de-duplicate, split, build the vocabulary and pad into data/prepared/."""
    from pipeline import prepare as stage

    _guard(lambda: stage.run(_load(params, "prepare")))


@app.command()
def train(
    model: Annotated[ModelName, typer.Argument(help="Which model section of params.yaml to train.")],
    params: ParamsPath = Path("params.yaml"),
) -> None:
    """Train the baseline RNN or the BiRNN into models/<model>.pt with learning curves."""
    from pipeline import train as stage

    _guard(lambda: stage.run(_load(params, "train", model.value), model.value))


@app.command()
def evaluate(params: ParamsPath = Path("params.yaml")) -> None:
    """Score every model and the TF-IDF reference on train/val/test into metrics/."""
    from pipeline import evaluate as stage

    _guard(lambda: stage.run(_load(params, "evaluate")))


@app.command()
def compare(params: ParamsPath = Path("params.yaml")) -> None:
    """Check the seed's targets, test BiRNN vs. baseline, write metrics/compare.json and report.md."""
    from pipeline import compare as stage

    _guard(lambda: stage.run(_load(params, "compare")))


def main() -> None:
    app(prog_name="pipeline")


if __name__ == "__main__":
    sys.exit(main())
