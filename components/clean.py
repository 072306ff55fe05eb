"""Clean: pair, validate, de-duplicate, normalise and resize; every input kept or rejected with a reason."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components import base_image


@dsl.component(base_image=base_image(), install_kfp_package=False)
def clean(data: Input[Dataset], size: int, cleaned: Output[Dataset]):
    """Clean the merged dataset into `<run>/clean` (`cutout data clean`).

    Args:
        data: The merged dataset (its metadata `uri` says where it is).
        size: Square size photos and masks are resized to.
        cleaned: The cleaned dataset (metadata: `uri`, `kept`, `rejected`, `per_reason`).
    """
    from cutout.pipeline import steps

    src = data.metadata["uri"]
    summary = steps.clean(src, steps.sibling(src, "clean"), size)
    cleaned.metadata.update(steps.pointer(cleaned.path, summary))
    print(f"kept {summary['kept']}, rejected {summary['rejected']} ({summary['per_reason']})")
