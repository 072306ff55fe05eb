"""The synthetic dataset: deterministic pairs, exact masks, a full manifest, photos that match masks."""

from __future__ import annotations

import hashlib
import json
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from cutout.data.io import encode_image, read_image, read_mask
from cutout.data.synth import JPEG_QUALITY, PRODUCT_TYPES, generate_pair, synthesize_dataset
from cutout.platform import storage

MANIFEST_FIELDS = {
    "id",
    "image",
    "mask",
    "width",
    "height",
    "product_type",
    "source",
    "domain",
    "backdrop",
    "seed",
    "checksum",
}


def _luma(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Dilate a boolean mask by ``pixels`` (a square structuring element)."""
    return np.asarray(Image.fromarray(mask).filter(ImageFilter.MaxFilter(2 * pixels + 1))) > 0


def _regions(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The boundary band of a mask, its interior and its exterior, 3 pixels clear of the boundary."""
    boundary = _grow(mask, 1) & _grow(~mask, 1)
    return boundary, ~_grow(~mask, 3), ~_grow(mask, 3)


def test_pair_depends_only_on_seed_and_index() -> None:
    image, mask, product_type = generate_pair(7, (96, 80), seed=3)
    generate_pair(8, (96, 80), seed=3)  # other pairs in between change nothing
    again, mask_again, type_again = generate_pair(7, (96, 80), seed=3)
    assert encode_image(image, "JPEG", JPEG_QUALITY) == encode_image(again, "JPEG", JPEG_QUALITY)
    assert np.array_equal(mask, mask_again) and product_type == type_again
    other, other_mask, _ = generate_pair(7, (96, 80), seed=4)
    assert not np.array_equal(np.asarray(image), np.asarray(other))
    assert not np.array_equal(mask, other_mask)


@pytest.mark.parametrize("size", [(160, 160), (120, 200)])
def test_every_type_comes_with_an_exact_binary_mask(size: tuple[int, int]) -> None:
    seen = set()
    for index in range(12):
        image, mask, product_type = generate_pair(index, size, seed=1)
        seen.add(product_type)
        assert image.mode == "RGB" and image.size == size
        assert mask.dtype == np.bool_ and mask.shape == (size[1], size[0])
        assert 0.02 < mask.mean() < 0.9, f"pair {index}: mask covers {mask.mean():.2f} of the frame"
    assert seen == set(PRODUCT_TYPES)


def test_some_products_cross_the_frame_edge() -> None:
    masks = [generate_pair(index, (64, 64), seed=2)[1] for index in range(90)]
    crossing = sum(bool(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()) for m in masks)
    assert 3 <= crossing <= 20


def test_photo_edges_follow_the_mask() -> None:
    # What a later content-mismatch check relies on: the photo changes most where the mask does.
    edge, inside, outside = [], [], []
    for index in range(18):
        image, mask, _ = generate_pair(index, (192, 192), seed=5)
        gy, gx = np.gradient(_luma(image))
        gradient = np.hypot(gx, gy)
        boundary, interior, exterior = _regions(mask)
        edge.append(gradient[boundary].mean())
        inside.append(gradient[interior].mean())
        outside.append(gradient[exterior].mean())
    assert np.mean(edge) > 3 * max(np.mean(inside), np.mean(outside))
    assert min(e / max(i, o) for e, i, o in zip(edge, inside, outside, strict=True)) > 1.1


def test_light_coloured_products_have_low_contrast() -> None:
    contrast: dict[str, list[float]] = {product_type: [] for product_type in PRODUCT_TYPES}
    for index in range(36):
        image, mask, product_type = generate_pair(index, (128, 128), seed=6)
        luma = _luma(image)
        _, interior, exterior = _regions(mask)
        near = exterior & _grow(mask, 10)  # the backdrop around the product
        contrast[product_type].append(abs(np.median(luma[interior]) - np.median(luma[near])))
    light = np.mean(contrast.pop("light_coloured"))
    others = np.mean([value for values in contrast.values() for value in values])
    assert light < 0.5 * others


def _check_dataset(out: str, count: int, size: tuple[int, int], seed: int) -> list[dict]:
    """Check every pair and manifest record of a written dataset; return the records."""
    records = [
        json.loads(line) for line in storage.read_text(storage.join(out, "manifest.jsonl")).splitlines()
    ]
    assert [r["id"] for r in records] == [f"synth-{i:06d}" for i in range(count)]
    for record in records:
        assert set(record) == MANIFEST_FIELDS
        assert (record["width"], record["height"], record["source"], record["seed"]) == (*size, "synth", seed)
        assert (record["domain"], record["backdrop"]) == ("synthetic", "studio")
        assert record["product_type"] in PRODUCT_TYPES
        data = storage.read_bytes(storage.join(out, record["image"]))
        assert hashlib.sha256(data).hexdigest() == record["checksum"]
        mask_path = storage.join(out, record["mask"])
        assert read_image(data).size == size and read_mask(mask_path).shape == (size[1], size[0])
        mask_png = Image.open(BytesIO(storage.read_bytes(mask_path)))
        assert mask_png.mode == "L" and set(np.unique(np.asarray(mask_png))) <= {0, 255}
    return records


def test_dataset_on_disk(tmp_path: Path) -> None:
    calls = []
    summary = synthesize_dataset(
        str(tmp_path), 14, size=(96, 64), seed=9, on_progress=lambda: calls.append(1)
    )
    records = _check_dataset(str(tmp_path), 14, (96, 64), 9)
    assert len(calls) == 14 and summary.count == 14
    assert summary.per_type == {t: sum(r["product_type"] == t for r in records) for t in PRODUCT_TYPES}
    assert min(summary.per_type.values()) >= 2
    # Pairs made on worker processes equal pairs made here, alone.
    image, _, _ = generate_pair(11, (96, 64), seed=9)
    assert (tmp_path / "images" / "synth-000011.jpg").read_bytes() == encode_image(
        image, "JPEG", JPEG_QUALITY
    )


def test_dataset_on_s3(s3_bucket: str) -> None:
    out = f"{s3_bucket}/synth/v1"
    summary = synthesize_dataset(out, 4, size=(64, 48), seed=2)
    assert summary.count == 4
    _check_dataset(out, 4, (64, 48), 2)
    assert len(list(storage.list_files(out))) == 2 * 4 + 2  # images, masks, manifest, (empty) rejects


def test_empty_and_invalid_requests(tmp_path: Path) -> None:
    assert synthesize_dataset(str(tmp_path), 0).per_type == dict.fromkeys(PRODUCT_TYPES, 0)
    assert (tmp_path / "manifest.jsonl").read_text() == ""
    with pytest.raises(ValueError):
        synthesize_dataset(str(tmp_path), -1)
    with pytest.raises(ValueError):
        synthesize_dataset(str(tmp_path), 2, size=(16, 16))


def test_cli_synth_writes_the_dataset(tmp_path):
    from typer.testing import CliRunner

    from cutout.cli import app

    result = CliRunner().invoke(
        app, ["data", "synth", str(tmp_path / "d"), "--count", "6", "--size", "64", "96"]
    )
    assert result.exit_code == 0, result.output
    assert "wrote 6 pairs" in result.output
    with Image.open(tmp_path / "d" / "images" / "synth-000005.jpg") as photo:
        assert photo.size == (64, 96)


def _off_median_share(photo: Image.Image, where: np.ndarray) -> float:
    """The share of the pixels `where` whose colour is far (> 60 of 255 in some channel) from their median."""
    pixels = np.asarray(photo, dtype=np.float32)[where]
    return float(np.mean(np.abs(pixels - np.median(pixels, axis=0)).max(axis=1) > 60))


def test_the_same_product_on_the_new_checked_backdrop(tmp_path) -> None:
    """Same mask as on the studio sweep; behind it, bold checks in two colours instead of a plain tone."""
    for index in range(6):
        studio, mask, kind = generate_pair(index, (200, 300), seed=4)
        checks, same_mask, same_kind = generate_pair(index, (200, 300), seed=4, backdrop="checks")
        assert np.array_equal(mask, same_mask) and kind == same_kind
        assert _off_median_share(checks, ~mask) > 0.25 > _off_median_share(studio, ~mask)

    summary = synthesize_dataset(str(tmp_path), 3, (64, 96), backdrop="checks", domain="new-backdrop")
    records = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert summary.count == 3
    assert {(r["backdrop"], r["domain"]) for r in records} == {("checks", "new-backdrop")}
    with pytest.raises(ValueError, match="unknown backdrop 'dots': choose one of studio, checks"):
        generate_pair(0, (64, 64), backdrop="dots")
