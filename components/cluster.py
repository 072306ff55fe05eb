"""Cluster: the six product types (k-means, then overrides), a train/val split, a contact sheet."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Output

from components import base_image


@dsl.component(base_image=base_image(), install_kfp_package=False)
def cluster(
    data: Input[Dataset],
    k: int,
    val_fraction: float,
    overrides: str,
    clustered: Output[Dataset],
    contact_sheet: Output[HTML],
):
    """Group the cleaned pairs into product types and split them (`cutout data cluster`).

    Args:
        data: The cleaned dataset.
        k: Number of clusters, the light-coloured one included.
        val_fraction: Share of each cluster held out for validation (the evaluation's holdout).
        overrides: JSON or CSV of id → product type that wins over k-means; empty for none.
        clustered: The clustered dataset (metadata: `uri`, sizes per type and split).
        contact_sheet: Each cluster's most and least typical photos.
    """
    from cutout.pipeline import steps

    src = data.metadata["uri"]
    summary = steps.cluster(src, steps.sibling(src, "clustered"), k, val_fraction, overrides)
    with open(contact_sheet.path, "w", encoding="utf-8") as page:
        page.write(steps.self_contained_html(summary["contact_sheet"]))
    clustered.metadata.update(steps.pointer(clustered.path, summary))
    print(f"{summary['kept']} pairs clustered: {summary['sizes']}; splits {summary['splits']}")
