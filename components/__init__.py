"""KFP v2 components of the training pipeline: each a typed wrapper over one `cutout.pipeline` function.

Every component runs on the pipeline image: `base_image` is `$CUTOUT_PIPELINE_IMAGE` when the pipeline is
compiled (imported), else `cutout-pipeline:<version>`. The image has cutout installed, so components import
it inside their bodies (only the body travels) and KFP is not installed again (`install_kfp_package=False`).
Datasets are `Dataset` artifacts that point at the data in our store (metadata `uri` and the step's counts).
"""

import os

from cutout import __version__

IMAGE_ENV = "CUTOUT_PIPELINE_IMAGE"
DEFAULT_IMAGE = f"cutout-pipeline:{__version__}"


def base_image() -> str:
    """The pipeline image the components run on, as the environment says at compile time."""
    return os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE
