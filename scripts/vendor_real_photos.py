"""Copy a downscaled subset of real photos with person masks into the package, as the embedded real set.

Used once to make `src/cutout/data/ccp/` from the Clothing Co-Parsing photos (Apache-2.0); rerun it
to make the same subset again or one of another size:

    python scripts/vendor_real_photos.py SOURCE src/cutout/data/ccp --count 200 --height 400 [--rest DIR]

SOURCE holds `images/<id>.jpg`, `masks/<id>.png` (0/255), `README.md` and `LICENSE`. The subset is the
`count` photos whose ids come first in SHA-1 order (a fixed, content-independent draw), downscaled to
`height` pixels (Lanczos, JPEG quality 90; masks area-averaged, then thresholded at half). 400 px keeps
the official U²-NetP's IoU (measured on 100 of these photos: 0.9503 at full size, 0.9496 at 400 px,
0.9453 at 320 px). The manifest records each pair's original file hashes, so a model card can say which
photos a model never saw.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
from pathlib import Path

from PIL import Image


def pick_ids(source: Path, count: int) -> list[str]:
    """The `count` ids first in SHA-1 order of their names."""
    ids = sorted((path.stem for path in (source / "images").glob("*.jpg")), key=_sha1)
    return sorted(ids[:count])


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def downscale_pair(image_path: Path, mask_path: Path, height: int) -> tuple[bytes, bytes]:
    """The photo as JPEG and the mask as a 0/255 PNG, both `height` pixels tall."""
    image, mask = Image.open(image_path).convert("RGB"), Image.open(mask_path).convert("L")
    size = (round(image.width * height / image.height), height)
    photo, binary = io.BytesIO(), io.BytesIO()
    image.resize(size, Image.Resampling.LANCZOS).save(photo, "JPEG", quality=90)
    binarised = mask.resize(size, Image.Resampling.BOX).point(lambda value: 255 if value >= 128 else 0)
    binarised.save(binary, "PNG")
    return photo.getvalue(), binary.getvalue()


def vendor(source: Path, out: Path, count: int, height: int) -> int:
    """Write the subset to `out`: images/, masks/, manifest.jsonl, README.md and LICENSE."""
    for folder in ("images", "masks"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    records = []
    for pair_id in pick_ids(source, count):
        image_path, mask_path = source / "images" / f"{pair_id}.jpg", source / "masks" / f"{pair_id}.png"
        photo, mask = downscale_pair(image_path, mask_path, height)
        (out / "images" / f"{pair_id}.jpg").write_bytes(photo)
        (out / "masks" / f"{pair_id}.png").write_bytes(mask)
        width, height_px = Image.open(io.BytesIO(photo)).size
        records.append({"id": pair_id, "image": f"images/{pair_id}.jpg", "mask": f"masks/{pair_id}.png",
                        "width": width, "height": height_px, "domain": "real", "source": "ccp",
                        "original_image_sha256": _file_sha256(image_path),
                        "original_mask_sha256": _file_sha256(mask_path)})  # fmt: skip
    (out / "manifest.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    shutil.copyfile(source / "LICENSE", out / "LICENSE")
    return len(records)


def write_rest(source: Path, out: Path, shipped: list[str]) -> int:
    """Copy the pairs that are not in the shipped subset, unchanged, as a raw dataset marked `real`.

    They are what `u2netp-fashion` trains on (its model card); the shipped subset stays unseen.
    """
    for folder in ("images", "masks"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    records = []
    for image_path in sorted((source / "images").glob("*.jpg")):
        if image_path.stem in shipped:
            continue
        shutil.copyfile(image_path, out / "images" / image_path.name)
        shutil.copyfile(source / "masks" / f"{image_path.stem}.png", out / "masks" / f"{image_path.stem}.png")
        records.append({"id": image_path.stem, "domain": "real", "source": "ccp"})
    (out / "manifest.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return len(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--height", type=int, default=400)
    parser.add_argument("--rest", type=Path, help="also copy every other pair here (a training set)")
    args = parser.parse_args()
    written = vendor(args.source, args.out, args.count, args.height)
    print(f"{written} pairs written to {args.out}")
    if args.rest:
        rest = write_rest(args.source, args.rest, pick_ids(args.source, args.count))
        print(f"{rest} other pairs written to {args.rest}")


if __name__ == "__main__":
    main()
