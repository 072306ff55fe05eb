"""The `cutout` command: parses arguments, calls one library function, prints the outcome.

Each group lives in its own module; importing them registers their commands on the root `app`.
"""

from cutout.cli import data, images, model, pipeline, platform, review, serve  # noqa: F401  (registers the commands)
from cutout.cli.common import app

__all__ = ["app"]
