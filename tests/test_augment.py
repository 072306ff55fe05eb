"""Augmentation: masks stay binary and aligned, crops keep the product, clusters come out balanced,
validation passes through, the output depends only on the seed, and the input is never touched."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from cutout.data.augment import VARIANTS_PER_TASK, augment_dataset
from cutout.data.io import encode_image, mask_to_image, read_image
from cutout.data.manifest import DatasetWriter, read_jsonl, read_manifest
from cutout.data.synth import PRODUCT_TYPES, synthesize_dataset
from cutout.platform import storage
from helpers import tree_digest

PRODUCT = np.array([30, 160, 60])  # a flat green product on a flat off-white backdrop
BACKDROP = np.array([235, 235, 228])
PHOTO_RED = (250, 10, 10)


def _label(folder: Path, keep: Callable[[dict], bool]) -> Path:
    """Keep some pairs and add the cluster step's fields: cluster = true product type, every fifth in val."""
    records = [r for r in read_manifest(str(folder)) if keep(r)]
    split = lambda i: "val" if i % 5 == 0 else "train"  # noqa: E731
    lines = [
        json.dumps({**r, "cluster": r["product_type"], "split": split(i)}) for i, r in enumerate(records)
    ]
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _flat_pair(rng: np.random.Generator, size: int) -> tuple[Image.Image, np.ndarray]:
    """An ellipse with a rectangular 'sleeve', well inside the frame: photo classes equal the mask exactly."""
    canvas = Image.new("L", (size, size))
    draw = ImageDraw.Draw(canvas)
    x, y = rng.integers(size // 4, size // 2, 2)
    w, h = rng.integers(size // 6, size // 4, 2)
    draw.ellipse((x, y, x + w, y + h), fill=255)
    draw.rectangle((x + w // 2, y + h // 3, x + w + size // 10, y + h // 3 + 8), fill=255)
    mask = np.asarray(canvas) > 0
    photo = np.where(mask[..., None], PRODUCT, BACKDROP).astype(np.uint8)
    return Image.fromarray(photo), mask


def _flat_dataset(folder: Path, count: int, size: int = 160) -> Path:
    rng = np.random.default_rng(5)
    with DatasetWriter(str(folder)) as writer:
        for index in range(count):
            photo, mask = _flat_pair(rng, size)
            record = {"id": f"flat-{index:03d}", "cluster": PRODUCT_TYPES[index % 3], "split": "train"}
            writer.add_pair(record, encode_image(photo, "JPEG", 95), "jpg", encode_image(mask_to_image(mask)))
    return folder


def _outputs(dataset: Path) -> list[tuple[dict, np.ndarray, np.ndarray]]:
    """(record, photo RGB array, raw mask array) for every pair of a dataset."""
    pairs = []
    for record in read_manifest(str(dataset)):
        photo = np.asarray(read_image(str(dataset / record["image"])), dtype=np.int16)
        pairs.append((record, photo, np.asarray(Image.open(dataset / record["mask"]))))
    return pairs


def _grow(mask: np.ndarray, pixels: int = 1) -> np.ndarray:
    return np.asarray(Image.fromarray(mask).filter(ImageFilter.MaxFilter(2 * pixels + 1))) > 0


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic pairs, every fifth in val, unbalanced: 4 long pants to train on, 1 swimwear item."""
    folder = tmp_path_factory.mktemp("synthetic")
    synthesize_dataset(str(folder), 30, size=(128, 128), seed=0)
    return _label(
        folder, lambda r: r["product_type"] == "long_pants" or int(r["id"][-2:]) in set(range(18)) - {10}
    )


@pytest.fixture(scope="module")
def red_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("backgrounds")
    for index in range(2):
        Image.new("RGB", (200 + 40 * index, 150), PHOTO_RED).save(folder / f"studio-{index}.jpg", quality=95)
    return folder


@pytest.fixture(scope="module")
def flat_augmented(tmp_path_factory: pytest.TempPathFactory, red_photos: Path) -> tuple[Path, Path]:
    source = _flat_dataset(tmp_path_factory.mktemp("flat") / "src", 12)
    out = tmp_path_factory.mktemp("flat") / "out"
    augment_dataset(str(source), str(out), copies=4, backgrounds=str(red_photos), balance=False, seed=3)
    return source, out


@pytest.fixture(scope="module")
def input_hashes(synthetic: Path) -> dict[str, str]:
    return tree_digest(synthetic)


@pytest.fixture(scope="module")
def augmented(tmp_path_factory: pytest.TempPathFactory, synthetic: Path, input_hashes: dict) -> Path:
    """The synthetic dataset augmented with the defaults (2 copies, balanced); hashed before."""
    out = tmp_path_factory.mktemp("augmented") / "out"
    augment_dataset(str(synthetic), str(out), copies=2, seed=0)
    return out


def test_the_input_is_never_modified(synthetic: Path, input_hashes: dict, augmented: Path) -> None:
    assert tree_digest(synthetic) == input_hashes


def test_masks_stay_binary_and_follow_the_photo(flat_augmented: tuple[Path, Path]) -> None:
    _, out = flat_augmented
    variants = [(r, photo, mask) for r, photo, mask in _outputs(out) if "augmented_from" in r]
    assert len(variants) == 12 * 4
    for record, photo, mask in variants:
        assert set(np.unique(mask)) <= {0, 255}, f"{record['id']}: mask is not binary"
        product = mask > 0
        product_colour = np.median(photo[product], axis=0)  # jitter moves every colour alike
        looks_like_product = np.abs(photo - product_colour).max(axis=2) < 25
        # Edge pixels mix colours as in real photos: over two pixels where a crop zoomed in, or by JPEG.
        clear_of_edge = ~(_grow(product, 2) & _grow(~product, 2))
        agreement = (looks_like_product == product)[clear_of_edge].mean()
        assert agreement >= 0.99, (
            f"{record['id']} {record['augmentations']}: photo and mask agree on {agreement:.3f}"
        )


def test_every_augmentation_is_used_and_recorded(flat_augmented: tuple[Path, Path]) -> None:
    _, out = flat_augmented
    used = Counter(a.split(":")[0] for r in read_manifest(str(out)) for a in r.get("augmentations", []))
    assert set(used) == {"crop", "flip", "composite", "background", "jitter"}
    kinds = {a for r in read_manifest(str(out)) for a in r.get("augmentations", []) if ":" in a}
    assert kinds == {"background:solid", "background:gradient", "background:texture", "background:photo"}


def _box_size(mask: np.ndarray) -> np.ndarray:
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return np.array([rows[-1] - rows[0] + 1, columns[-1] - columns[0] + 1])


def _cropped_alone(augmentations: list[str]) -> bool:
    """Cropped, and no other product pasted in: the mask is the original product, rescaled."""
    return "crop" in augmentations and "composite" not in augmentations


def test_crops_keep_the_whole_product(flat_augmented: tuple[Path, Path]) -> None:
    source, out = flat_augmented
    originals = {r["id"]: mask > 0 for r, _, mask in _outputs(source)}
    crops = [(r, m > 0) for r, _, m in _outputs(out) if _cropped_alone(r.get("augmentations", []))]
    assert len(crops) >= 5
    zooms = []
    for record, mask in crops:
        original = originals[record["augmented_from"]]
        # A same-shape crop scales height and width alike; a product cut at the frame shrinks in one.
        zoom_h, zoom_w = _box_size(mask) / _box_size(original)
        assert abs(zoom_h / zoom_w - 1) < 0.05, f"{record['id']}: the crop cut the product"
        kept = mask.sum() / (original.sum() * zoom_h * zoom_w)
        assert kept >= 0.95, f"{record['id']}: the crop kept {kept:.0%} of the product"
        zooms.append(zoom_h)
    assert max(zooms) > 1.2  # crops do zoom in


def test_background_photos_from_the_folder_are_used(flat_augmented: tuple[Path, Path]) -> None:
    _, out = flat_augmented
    backed = [(r, p, m > 0) for r, p, m in _outputs(out) if "background:photo" in r.get("augmentations", [])]
    assert backed
    for record, photo, mask in backed:
        outside = photo[~_grow(mask, 2)]
        red = (outside[:, 0] - outside[:, 1:].max(axis=1)) > 80
        assert red.mean() > 0.95, f"{record['id']}: the backdrop is not the red photo"


def test_masks_follow_the_edges_of_realistic_photos(augmented: Path) -> None:
    on_edges = []
    for record, photo, mask in _outputs(augmented):
        assert set(np.unique(mask)) <= {0, 255}
        if "augmented_from" in record:
            gradient = sum(np.hypot(*np.gradient(photo[..., channel])) for channel in range(3))
            boundary = _grow(mask > 0) & _grow(mask == 0)
            strong = np.percentile(gradient[~_grow(boundary, 2)], 90)
            on_edges.append((gradient[boundary] > strong).mean())
    # The mask's boundary runs along the photo's strongest edges (stronger than 90% of the rest) in
    # every variant, busy backdrops included; a mask that missed a flip scores 0.03 here.
    assert min(on_edges) > 0.4 and np.median(on_edges) > 0.95, sorted(np.round(on_edges, 2))


def test_balancing_evens_out_the_clusters(synthetic: Path, augmented: Path) -> None:
    before = Counter(r["cluster"] for r in read_manifest(str(synthetic)) if r["split"] == "train")
    assert len(set(before.values())) > 1, "the fixture should be unbalanced"
    records = list(read_manifest(str(augmented)))
    after = Counter(r["cluster"] for r in records if r["split"] == "train")
    target = max(before.values()) * (1 + 2)
    assert after == dict.fromkeys(PRODUCT_TYPES, target)
    # The lone swimwear item gets all 11 of its cluster's variants, from more than one worker task.
    assert (
        max(Counter(r.get("augmented_from") for r in records if "-aug" in r["id"]).values())
        > VARIANTS_PER_TASK
    )
    summary = json.loads((augmented / "summary.json").read_text())
    assert (
        summary["target"] == target and summary["train_before"] == before and summary["train_after"] == after
    )


def test_without_balance_every_pair_gets_its_copies(synthetic: Path, tmp_path: Path) -> None:
    augment_dataset(str(synthetic), str(tmp_path / "out"), copies=2, balance=False, seed=0)
    records = list(read_manifest(str(tmp_path / "out")))
    variants = Counter(r["augmented_from"] for r in records if "augmented_from" in r)
    train = [r["id"] for r in read_manifest(str(synthetic)) if r["split"] == "train"]
    assert variants == dict.fromkeys(train, 2)
    assert all(r["id"] == f"{r['augmented_from']}-aug{r['id'][-1]}" for r in records if "augmented_from" in r)


def test_real_photos_are_never_composited(synthetic: Path, tmp_path: Path) -> None:
    """A real photo's mask marks its subject only: no product is pasted into it, nor it into another."""
    real = tmp_path / "mixed"
    shutil.copytree(synthetic, real)
    records = [json.loads(line) for line in (real / "manifest.jsonl").read_text().splitlines()]
    real_ids = {r["id"] for r in records[::2]}
    for record in records:
        record["domain"] = "real" if record["id"] in real_ids else "synthetic"
    (real / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    augment_dataset(str(real), str(tmp_path / "out"), copies=4, balance=False, seed=0)
    variants = [r for r in read_manifest(str(tmp_path / "out")) if "augmented_from" in r]
    composites = [r for r in variants if "composite" in r["augmentations"]]
    assert composites, "some synthetic variants still composite"
    assert not [r for r in composites if r["augmented_from"] in real_ids]
    assert not [r for r in composites if r.get("partner") in real_ids]
    assert [r for r in variants if r["augmented_from"] in real_ids]  # real photos still get variants


def test_validation_pairs_pass_through_unchanged(synthetic: Path, augmented: Path) -> None:
    val = [r for r in read_manifest(str(synthetic)) if r["split"] == "val"]
    out = {r["id"]: r for r in read_manifest(str(augmented))}
    assert val and not any(r.get("augmented_from") in {v["id"] for v in val} for r in out.values())
    for record in val:
        assert out[record["id"]] == record
        for key in ("image", "mask"):
            assert (augmented / record[key]).read_bytes() == (synthetic / record[key]).read_bytes()


def test_same_seed_same_bytes_on_any_worker_count(synthetic: Path, tmp_path: Path) -> None:
    out, other = tmp_path / "out", tmp_path / "other"
    augment_dataset(str(synthetic), str(out), copies=1, seed=7, workers=2)
    first = tree_digest(out)
    shutil.rmtree(out)
    augment_dataset(str(synthetic), str(out), copies=1, seed=7, workers=1)
    assert tree_digest(out) == first
    augment_dataset(str(synthetic), str(other), copies=1, seed=8, workers=2)
    changed = [
        name for name, digest in tree_digest(other).items() if "-aug" in name and first[name] != digest
    ]
    assert len(changed) > 10, "another seed should give other variants"


def test_an_unreadable_pair_is_rejected_with_its_reason(synthetic: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    for name in tree_digest(synthetic):
        storage.copy(str(synthetic / name), str(broken / name))
    victim = next(r for r in read_manifest(str(broken)) if r["split"] == "train")
    (broken / victim["image"]).write_bytes(b"not a jpeg")
    summary = augment_dataset(str(broken), str(tmp_path / "out"), copies=1, seed=0)
    rejects = list(read_jsonl(str(tmp_path / "out" / "rejects.jsonl")))
    assert summary.rejected == 1 and [(r["id"], r["reason"]) for r in rejects] == [
        (victim["id"], "not_an_image")
    ]
    assert victim["id"] not in {
        r.get("augmented_from", r["id"]) for r in read_manifest(str(tmp_path / "out"))
    }


def test_s3_round_trip(synthetic: Path, red_photos: Path, s3_bucket: str) -> None:
    for name in tree_digest(synthetic):
        storage.copy(str(synthetic / name), f"{s3_bucket}/in/{name}")
    storage.copy(str(red_photos / "studio-0.jpg"), f"{s3_bucket}/backgrounds/studio-0.jpg")
    summary = augment_dataset(
        f"{s3_bucket}/in", f"{s3_bucket}/out", copies=1, backgrounds=f"{s3_bucket}/backgrounds"
    )
    records = list(read_manifest(f"{s3_bucket}/out"))
    assert len(records) == summary.written == sum(summary.train_after.values()) + sum(summary.val.values())
    mask = np.asarray(Image.open(BytesIO(storage.read_bytes(f"{s3_bucket}/out/{records[-1]['mask']}"))))
    assert set(np.unique(mask)) <= {0, 255}
    assert json.loads(storage.read_text(f"{s3_bucket}/out/summary.json"))["written"] == summary.written
