"""`cutout remove` and `cutout export`: cut out photos, export models."""

from __future__ import annotations

from typing import Annotated

import typer

from cutout.cli.common import MODEL_HELP, app, console, fail, print_failures, progress
from cutout.model.builtin import DEFAULT_MODEL


@app.command()
def remove(
    inputs: Annotated[
        list[str], typer.Argument(help="Photos: files, folders (recursive), globs or s3:// prefixes.")
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Output folder or s3:// prefix.")],
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = DEFAULT_MODEL,
    mask_only: Annotated[
        bool, typer.Option(help="Write the mask (8-bit PNG) instead of the cutout.")
    ] = False,
    bg_color: Annotated[
        str | None, typer.Option(help="Flatten onto this colour: white, #RRGGBB, ...")
    ] = None,
    crop: Annotated[bool, typer.Option(help="Crop to the product, with a margin.")] = False,
    output_format: Annotated[
        str, typer.Option("--format", help="png, webp, or jpg (needs --bg-color).")
    ] = "png",
    batch_size: Annotated[int, typer.Option(min=1, help="Photos per forward pass.")] = 4,
    png_compression: Annotated[int, typer.Option(min=0, max=9, help="PNG level: 1 fast, 9 smallest.")] = 1,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all cores).")] = None,
) -> None:
    """Cut the products out of photos: RGBA PNG at the original resolution by default."""
    from cutout.compose import parse_color
    from cutout.model.loader import load_predictor
    from cutout.remove import RemoveOptions, collect_inputs, remove_backgrounds

    colour = parse_color(bg_color) if bg_color else None
    options = RemoveOptions(mask_only, colour, crop, output_format, batch_size, png_compression)
    predictor = load_predictor(model, threads=threads)
    photos, missing = collect_inputs(inputs)
    with progress("cutting out", len(photos)) as advance:
        summary = remove_backgrounds(photos, out, predictor, options, on_done=lambda _: advance())
    failures = missing + summary.failures
    print_failures(failures)
    # One whole line whatever the terminal's width: scripts parse it, and the path must stay readable.
    console.print(
        f"{len(summary.written)} written to {out}, {len(failures)} failed ({predictor.description})",
        soft_wrap=True,
        highlight=False,
    )
    if failures:
        raise typer.Exit(code=1)


export_app = typer.Typer(help="Export a model for other runtimes.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("onnx")
def export_onnx(
    model: Annotated[str, typer.Option(help=MODEL_HELP)],
    out: Annotated[str, typer.Option("--out", "-o", help="The .onnx file to write.")],
    int8: Annotated[bool, typer.Option(help="Quantise to int8 (static, calibrated).")] = False,
    calibration: Annotated[str | None, typer.Option(help="Folder of photos to calibrate int8 with.")] = None,
) -> None:
    """Export to ONNX: input `input` (N×3×H×W), first output the fused probability map."""
    from cutout.data.io import read_photos
    from cutout.model.export import export_model

    if int8 and not calibration:
        raise fail("--int8 needs --calibration DIR: a folder of photos like the ones the model will see")
    photos = read_photos(calibration) if int8 else None  # read lazily: calibration takes what it needs
    export_model(model, out, calibration=photos)
    console.print(f"wrote {out}")
