"""What every `cutout` subcommand shares: the root command, the console, progress bars, clear failures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, TypeVar

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cutout import __version__
from cutout.model.builtin import BUILTIN_MODELS


class _OneLineErrors(typer.core.TyperGroup):
    """Turns an error the user can fix into one line that names it; `cutout --debug` shows the traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except user_errors() as error:
            if ctx.params.get("debug"):
                raise
            raise fail(explain(error)) from None


app = typer.Typer(help="Background removal for e-commerce fashion photos.", no_args_is_help=True,
                  cls=_OneLineErrors, pretty_exceptions_show_locals=False)  # fmt: skip

console = Console(stderr=True, soft_wrap=True)  # whole lines at any width: paths stay greppable
# What every command that takes a model accepts (`cutout.model.loader.load_predictor`).
MODEL_HELP = (f"A built-in model ({', '.join(BUILTIN_MODELS)}), models:/NAME@ALIAS or models:/NAME/VERSION, "
              "a checkpoint or official .pth, or an .onnx file.")  # fmt: skip
T = TypeVar("T")


def with_progress(label: str, step: Callable[..., T], total: int | None = None) -> T:
    """Run `step(on_progress=...)` under a progress bar."""
    with progress(label, total) as advance:
        return step(on_progress=advance)


@contextmanager
def progress(label: str, total: int | None) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr; yields the function that advances it by one."""
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    # Only on a terminal: elsewhere (CI, a pipe, a log file) a bar is noise between the result lines.
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
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
    debug: Annotated[bool, typer.Option("--debug", help="Show the whole traceback of an error.")] = False,
) -> None:
    """cutout: prepare data, train U²-Net, evaluate, serve and review cutouts."""


def user_errors() -> tuple[type[BaseException], ...]:
    """What bad input, a missing model or an unreachable service raise: reported in one line."""
    from botocore.exceptions import BotoCoreError, ClientError
    from mlflow.exceptions import MlflowException

    return ValueError, OSError, MlflowException, BotoCoreError, ClientError


def explain(error: BaseException) -> str:
    """The error in one line, with what to do about it where that is not obvious from the message."""
    from botocore.exceptions import BotoCoreError, ClientError
    from mlflow.exceptions import MlflowException

    message = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, MlflowException):
        from cutout.platform.tracking import current_tracking_uri

        return (f"{message} (registry: {current_tracking_uri()}; `cutout register` adds a model, "
                "MLFLOW_TRACKING_URI points at another registry)")  # fmt: skip
    if isinstance(error, BotoCoreError | ClientError):
        return f"S3: {message} (check AWS_ENDPOINT_URL_S3, the bucket and the credentials)"
    if isinstance(error, OSError) and error.filename and error.strerror:  # not "[Errno 2] ...: 'x'"
        return f"{error.strerror}: {error.filename}"
    return message


def fail(message: str) -> typer.Exit:
    # One whole line whatever the terminal's width: paths in it must stay readable and greppable.
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)
    return typer.Exit(code=2)


def print_failures(failures: list) -> None:
    # One line per input, whole paths kept (a table would cut them to the terminal's width).
    for failure in failures:
        console.print(f"[red]not processed[/red] {failure.source}: {failure.message} ({failure.reason})",
                      soft_wrap=True, highlight=False)  # fmt: skip
