"""What every `cutout` subcommand shares: the root command, the console, progress bars, clear failures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cutout import __version__
from cutout.model.builtin import BUILTIN_MODELS

app = typer.Typer(help="Background removal for e-commerce fashion photos.", no_args_is_help=True)

console = Console(stderr=True, soft_wrap=True)  # whole lines at any width: paths stay greppable
# What every command that takes a model accepts (`cutout.model.loader.load_predictor`).
MODEL_HELP = (f"A built-in model ({', '.join(BUILTIN_MODELS)}), models:/NAME@ALIAS or models:/NAME/VERSION, "
              "a checkpoint or official .pth, or an .onnx file.")  # fmt: skip
T = TypeVar("T")


def with_progress(label: str, step: Callable[..., T], total: int | None = None) -> T:
    """Run `step(on_progress=...)` under a progress bar; a bad input is a clear error and exit status 2."""
    try:
        with progress(label, total) as advance:
            return step(on_progress=advance)
    except (ValueError, FileNotFoundError) as error:
        raise fail(str(error)) from None


@contextmanager
def progress(label: str, total: int | None) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr; yields the function that advances it by one."""
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(label, total=total)
        yield lambda: progress.advance(task)


def _version(value: bool) -> None:
    if value:
        print(f"cutout {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """cutout: prepare data, train U²-Net, evaluate, serve and review cutouts."""


def fail(message: str) -> typer.Exit:
    # One whole line whatever the terminal's width: paths in it must stay readable and greppable.
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)
    return typer.Exit(code=2)


def print_failures(failures: list) -> None:
    # One line per input, whole paths kept (a table would cut them to the terminal's width).
    for failure in failures:
        console.print(f"[red]not processed[/red] {failure.source}: {failure.message} ({failure.reason})",
                      soft_wrap=True, highlight=False)  # fmt: skip
