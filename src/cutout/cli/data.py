"""`cutout data …`: synthesise, clean, cluster, augment."""

from __future__ import annotations

from functools import partial
from typing import Annotated

import typer

from cutout.cli.common import app, console, with_progress

data_app = typer.Typer(help="Data steps: synthesise, clean, cluster, augment. Local paths or s3:// URIs.",
                       no_args_is_help=True)  # fmt: skip
app.add_typer(data_app, name="data")


@data_app.command("synth")
def data_synth(
    out: Annotated[str, typer.Argument(help="Dataset folder or s3:// prefix to write.")],
    count: Annotated[int, typer.Option(min=0, help="Number of photo/mask pairs.")] = 600,
    size: Annotated[tuple[int, int], typer.Option(help="Width and height in pixels.")] = (320, 320),
    seed: Annotated[int, typer.Option(help="Same seed, same dataset.")] = 0,
    backdrop: Annotated[
        str, typer.Option(help="studio (the catalogue's plain sweep) or checks (a new, busy backdrop).")
    ] = "studio",
    domain: Annotated[
        str, typer.Option(help="The records' domain: evaluation and the promotion gate score each apart.")
    ] = "synthetic",
) -> None:
    """Synthesise studio product photos with exact masks, six product types (the embedded default)."""
    from cutout.data.synth import synthesize_dataset

    make = partial(synthesize_dataset, out, count, size, seed, backdrop=backdrop, domain=domain)
    summary = with_progress("synthesising", make, count)
    per_type = ", ".join(f"{name} {n}" for name, n in summary.per_type.items())
    console.print(f"wrote {summary.count} pairs to {out}: {per_type}", soft_wrap=True, highlight=False)


@data_app.command("clean")
def data_clean(
    src: Annotated[
        str, typer.Argument(help="Raw pairs: images/<id>.<ext> and masks/<id>.<ext> (folder or s3://).")
    ],
    dst: Annotated[str, typer.Argument(help="Where to write the cleaned dataset.")],
    size: Annotated[int, typer.Option(min=32, help="Square size photos and masks are resized to.")] = 320,
) -> None:
    """Pair, validate, de-duplicate, normalise and resize; every input kept or rejected with a reason."""
    from cutout.data.clean import clean_dataset

    summary = with_progress("cleaning", partial(clean_dataset, src, dst, size))
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(summary.per_reason.items())) or "none"
    console.print(f"kept {summary.kept}, rejected {summary.rejected} ({reasons}); see {dst}/rejects.jsonl")


@data_app.command("cluster")
def data_cluster(
    src: Annotated[str, typer.Argument(help="Cleaned dataset (folder or s3://).")],
    dst: Annotated[str, typer.Argument(help="Where to write the clustered dataset.")],
    k: Annotated[int, typer.Option(min=2, help="Number of clusters (the light-coloured one included).")] = 6,
    overrides: Annotated[
        str | None, typer.Option(help="JSON or CSV of id → product type, applied last.")
    ] = None,
    val_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.5, help="Share of each cluster for validation.")
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Same seed, same clusters.")] = 0,
) -> None:
    """Group pairs into the six product types (k-means, then overrides), split train/val, contact sheet."""
    from cutout.data.cluster import cluster_dataset

    summary = with_progress(
        "clustering", partial(cluster_dataset, src, dst, k, overrides, val_fraction, seed)
    )
    sizes = ", ".join(f"{name} {n}" for name, n in summary.sizes.items())
    console.print(f"{summary.kept} pairs clustered ({summary.rejected} rejected): {sizes}")
    if summary.purity is not None:
        console.print(f"against the true types: purity {summary.purity:.3f}, "
                      f"adjusted Rand index {summary.adjusted_rand_index:.3f}")  # fmt: skip
    console.print(f"contact sheet: {dst}/report/index.html")


@data_app.command("augment")
def data_augment(
    src: Annotated[str, typer.Argument(help="Clustered dataset (folder or s3://).")],
    dst: Annotated[str, typer.Argument(help="Where to write the augmented dataset.")],
    copies: Annotated[int, typer.Option(min=0, help="Variants per training pair (before balancing).")] = 2,
    backgrounds: Annotated[
        str | None, typer.Option(help="Folder of background photos to composite onto.")
    ] = None,
    balance: Annotated[
        bool, typer.Option(help="Oversample small clusters to the largest one's size.")
    ] = True,
    seed: Annotated[int, typer.Option(help="Same seed, same output.")] = 0,
) -> None:
    """Crops that keep the product, new backgrounds, several products in a frame, flips; balanced clusters."""
    from cutout.data.augment import augment_dataset

    summary = with_progress(
        "augmenting", partial(augment_dataset, src, dst, copies, backgrounds, balance, seed)
    )
    per_cluster = ", ".join(f"{name} {n}" for name, n in summary.train_after.items())
    console.print(f"wrote {summary.written} pairs to {dst} ({summary.rejected} rejected); training pairs per "
                  f"cluster: {per_cluster}")  # fmt: skip
