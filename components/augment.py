"""Augment: crops, new backgrounds, composites and flips of the training pairs; balanced clusters."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components import base_image


@dsl.component(base_image=base_image(), install_kfp_package=False)
def augment(data: Input[Dataset], copies: int, augmented: Output[Dataset]):
    """Write the augmented training set (`cutout data augment`); validation pairs pass through unchanged.

    Args:
        data: The clustered dataset.
        copies: Variants per training pair of the largest cluster (smaller clusters get more).
        augmented: The augmented dataset (metadata: `uri`, training pairs per cluster before and after).
    """
    from cutout.pipeline import steps

    src = data.metadata["uri"]
    summary = steps.augment(src, steps.sibling(src, "augmented"), copies)
    augmented.metadata.update(steps.pointer(augmented.path, summary))
    print(f"wrote {summary['written']} pairs; training pairs per cluster: {summary['train_after']}")
