"""The real photographs the package ships: the embedded default's real part.

200 street-fashion photos with person masks from the Clothing Co-Parsing dataset (Apache-2.0; attribution
and licence in `ccp/README.md` and `ccp/LICENSE`), downscaled to 400 pixels tall, in the dataset layout
(`images/`, `masks/`, `manifest.jsonl`, every record with `domain: real`). The demo trains and evaluates
on them, and CI checks the official model's masks on them. `u2netp-fashion` never saw them.
"""

from __future__ import annotations

from pathlib import Path

REAL_PHOTOS = Path(__file__).parent / "ccp"
