"""`cutout serve predictor|transformer|local`: the KServe servers."""

from __future__ import annotations

from typing import Annotated

import typer

from cutout.cli.common import app, fail
from cutout.platform.names import CHAMPION_URI, UNCALIBRATED_THRESHOLD

serve_app = typer.Typer(help="Serve models with KServe (on 127.0.0.1 unless --host says otherwise).",
                        no_args_is_help=True)  # fmt: skip
app.add_typer(serve_app, name="serve")


# KServe's argument parser takes the options (--model_name, --http_port, ...), so typer passes them through.
_KSERVE_OPTIONS = {"allow_extra_args": True, "ignore_unknown_options": True}


@serve_app.command("predictor", context_settings=_KSERVE_OPTIONS, add_help_option=False)
def serve_predictor(context: typer.Context) -> None:
    """The KServe predictor: --model-uri, --runtime torch|onnx, --http_port, ... (see --help)."""
    from cutout.serve.predictor import main as predictor_main

    predictor_main(context.args)


@serve_app.command("transformer", context_settings=_KSERVE_OPTIONS, add_help_option=False)
def serve_transformer(context: typer.Context) -> None:
    """The feedback transformer: --predictor_host, --feedback-uri, --threshold, ... (see --help)."""
    from cutout.serve.transformer import main as transformer_main

    transformer_main(context.args)


@serve_app.command("local")
def serve_local(
    model_uri: Annotated[
        str, typer.Option(help="models:/NAME@ALIAS, a checkpoint, or an .onnx file.")
    ] = CHAMPION_URI,
    feedback_uri: Annotated[
        str, typer.Option(help="Retraining store and review queue (folder or s3://).")
    ] = ".cutout/feedback",
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="The transformer's port (clients call it).")
    ] = 8080,
    predictor_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="The predictor's port (default: --port + 1).")
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            min=0.0, max=1.0, help=f"Routing threshold (default: the model's, or {UNCALIBRATED_THRESHOLD})."
        ),
    ] = None,
    runtime: Annotated[str | None, typer.Option(help="torch or onnx (default: the model file's).")] = None,
) -> None:
    """Predictor and feedback transformer on 127.0.0.1, the local stand-in for the InferenceService."""
    from cutout.serve.local import serve_local as run_local

    try:
        status = run_local(model_uri=model_uri, feedback_uri=feedback_uri, port=port,
                           predictor_port=predictor_port, threshold=threshold, runtime=runtime)  # fmt: skip
    except (RuntimeError, ValueError) as error:
        raise fail(str(error)) from None
    raise typer.Exit(code=status)
