"""`python -m cutout.train DATA [options]`: see `cutout.train.train`."""

import sys

from cutout.train.train import cli

sys.exit(cli())
