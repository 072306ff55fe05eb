"""The cleansing step: a corrupted corpus where every input id is kept or rejected with the right reason."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from cutout.data.clean import REJECT_REASONS, CleanSummary, clean_dataset
from cutout.data.io import encode_image, mask_to_image
from cutout.data.manifest import SOURCE_ACCEPTED, SOURCE_CORRECTED, read_jsonl, read_manifest
from cutout.data.quality import CONTENT_MISMATCH_BELOW, NEAR_DUPLICATE_BITS, edge_contrast, perceptual_hash
from cutout.data.synth import generate_pair
from cutout.platform import storage
from helpers import tree_digest

SIZE = (160, 200)
SEED = 21
# Every id of the corpus that must be rejected: (reason, which file the reason is about).
REJECTED = {
    "missing-mask": ("missing_mask", "mask"),
    "missing-image": ("missing_image", "image"),
    "truncated": ("truncated", "image"),
    "not-an-image": ("not_an_image", "image"),
    "zero-bytes": ("empty", "image"),
    "bomb": ("too_many_pixels", "image"),
    "truncated-mask": ("truncated", "mask"),
    "size-mismatch": ("size_mismatch", "pair"),
    "swapped-a": ("content_mismatch", "pair"),
    "swapped-b": ("content_mismatch", "pair"),
    "empty-mask": ("empty_mask", "mask"),
    "full-mask": ("full_mask", "mask"),
    "ambiguous": ("ambiguous_id", "pair"),
    "twin-exact": ("duplicate", "image"),
    "twin-near": ("near_duplicate", "image"),
}
DUPLICATE_OF = {"twin-exact": "good-1", "twin-near": "good-2"}
# Every id that must be kept, with what normalising it must record.
KEPT_NOTES = {
    **{f"good-{index}": [] for index in range(6)},
    "good-0.k": [],  # an id with a dot: its files list in a different order among images and masks
    "cmyk": ["cmyk_to_rgb"],
    "deep": ["16bit_to_8bit"],
    "grey": ["grey_to_rgb"],
    "rotated": ["exif_rotated"],
    "palette-mask": ["mask_from_palette"],
    "alpha-mask": ["mask_from_alpha"],
    "soft-mask": ["mask_binarised"],
}


# --- building the corpus -------------------------------------------------------------------------


def _jpeg(image: Image.Image, quality: int = 92, **options: object) -> bytes:
    buffer = BytesIO()
    image.save(buffer, "JPEG", quality=quality, **options)
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    buffer = BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_16bit_rgb(image: Image.Image) -> bytes:
    """A 48-bit RGB PNG, written by hand: Pillow can read these but not write them."""
    wide = np.asarray(image, dtype=">u2") * 257  # 0..255 spread over 0..65535
    rows = b"".join(b"\x00" + row.tobytes() for row in wide)
    header = struct.pack(">IIBBBBB", image.width, image.height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        _png_chunk(kind, data)
        for kind, data in ((b"IHDR", header), (b"IDAT", zlib.compress(rows)), (b"IEND", b""))
    )


def _png_header_only(width: int, height: int) -> bytes:
    """A decompression bomb's calling card: a valid PNG header announcing a huge image."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    )


def _mask_png(mask: np.ndarray) -> bytes:
    return encode_image(mask_to_image(mask), "PNG")


def _unusual_files(pair: int) -> dict[str, tuple[bytes, str, bytes]]:
    """Valid but unusual pairs: id -> (photo bytes, photo extension, mask bytes)."""
    photo, mask, _ = generate_pair(pair, SIZE, SEED)
    files = {}
    files["cmyk"] = (_jpeg(photo.convert("CMYK")), "jpg", _mask_png(mask))
    photo, mask, _ = generate_pair(pair + 1, SIZE, SEED)
    files["deep"] = (_png_16bit_rgb(photo), "png", _mask_png(mask))
    photo, mask, _ = generate_pair(pair + 2, SIZE, SEED)
    files["grey"] = (_jpeg(photo.convert("L")), "jpg", _mask_png(mask))
    photo, mask, _ = generate_pair(pair + 3, SIZE, SEED)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter left; viewers turn it back, so its mask is upright
    files["rotated"] = (_jpeg(photo.rotate(90, expand=True), exif=exif), "jpg", _mask_png(mask))
    photo, mask, _ = generate_pair(pair + 4, SIZE, SEED)
    palette = Image.fromarray(mask.astype(np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 255, 255])
    files["palette-mask"] = (_jpeg(photo), "jpg", _png(palette))
    photo, mask, _ = generate_pair(pair + 5, SIZE, SEED)
    alpha = Image.new("RGBA", SIZE, (255, 255, 255, 0))
    alpha.putalpha(mask_to_image(mask))
    files["alpha-mask"] = (_jpeg(photo), "jpg", _png(alpha))
    photo, mask, _ = generate_pair(pair + 6, SIZE, SEED)
    soft = mask_to_image(mask).filter(ImageFilter.GaussianBlur(1.5))
    files["soft-mask"] = (_jpeg(photo), "jpg", _png(soft))
    return files


def _defective_files() -> dict[str, tuple[bytes | None, str, bytes | None]]:
    """Broken pairs: id -> (photo bytes or None, photo extension, mask bytes or None)."""
    pairs = {name: generate_pair(index, SIZE, SEED) for index, name in enumerate(REJECTED, start=10)}
    photo = {name: _jpeg(pair[0]) for name, pair in pairs.items()}
    mask = {name: _mask_png(pair[1]) for name, pair in pairs.items()}
    good_1, good_2 = generate_pair(1, SIZE, SEED), generate_pair(2, SIZE, SEED)
    brighter = ImageEnhance.Brightness(good_2[0]).enhance(1.04)
    return {
        "missing-mask": (photo["missing-mask"], "jpg", None),
        "missing-image": (None, "jpg", mask["missing-image"]),
        "truncated": (photo["truncated"][: len(photo["truncated"]) * 3 // 5], "jpg", mask["truncated"]),
        "not-an-image": (b"id,colour\n17,navy\n", "jpg", mask["not-an-image"]),
        "zero-bytes": (b"", "jpg", mask["zero-bytes"]),
        "bomb": (_png_header_only(10_000, 10_000), "png", mask["bomb"]),
        "truncated-mask": (photo["truncated-mask"], "jpg", mask["truncated-mask"][:300]),
        "size-mismatch": (photo["size-mismatch"], "jpg", _mask_png(pairs["size-mismatch"][1][:190])),
        "swapped-a": (photo["swapped-a"], "jpg", mask["swapped-b"]),
        "swapped-b": (photo["swapped-b"], "jpg", mask["swapped-a"]),
        "empty-mask": (photo["empty-mask"], "jpg", _mask_png(np.zeros(SIZE[::-1], bool))),
        "full-mask": (photo["full-mask"], "jpg", _mask_png(np.ones(SIZE[::-1], bool))),
        "twin-exact": (_jpeg(good_1[0]), "jpg", _mask_png(good_1[1])),
        "twin-near": (_jpeg(brighter, quality=70), "jpg", _mask_png(good_2[1])),
    }


def write_corpus(root: Path) -> None:
    """A raw dataset with every defect and every unusual-but-valid file, and a manifest of types."""
    files: dict[str, tuple[bytes | None, str, bytes | None]] = {}
    records = []
    for index, name in enumerate([f"good-{i}" for i in range(6)] + ["good-0.k"]):
        photo, mask, product_type = generate_pair(index, SIZE, SEED)
        files[name] = (_jpeg(photo), "jpg", _mask_png(mask))
        records.append({"id": name, "product_type": product_type, "source": "studio-a", "shoot": index})
    files |= _unusual_files(pair=40) | _defective_files()
    for name, (photo, ext, mask) in files.items():
        if photo is not None:
            (root / "images").mkdir(parents=True, exist_ok=True)
            (root / "images" / f"{name}.{ext}").write_bytes(photo)
        if mask is not None:
            (root / "masks").mkdir(parents=True, exist_ok=True)
            (root / "masks" / f"{name}.png").write_bytes(mask)
    photo, mask, _ = generate_pair(60, SIZE, SEED)  # two photos share one id
    (root / "images" / "ambiguous.jpg").write_bytes(_jpeg(photo))
    (root / "images" / "ambiguous.png").write_bytes(_png(photo))
    (root / "masks" / "ambiguous.png").write_bytes(_mask_png(mask))
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    write_corpus(root)
    return root


@pytest.fixture(scope="module")
def cleaned(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Clean the corpus once; what the tests inspect."""
    before = tree_digest(corpus)
    out = tmp_path_factory.mktemp("clean")
    calls: list[None] = []
    summary = clean_dataset(str(corpus), str(out), on_progress=lambda: calls.append(None))
    return {"out": out, "summary": summary, "progress": len(calls), "before": before}


def _input_ids(root: Path) -> set[str]:
    """The ids of all input files: file names without their extension, photos and masks alike."""
    return {path.stem for path in root.glob("*/*")}


# --- the tests -----------------------------------------------------------------------------------


def test_every_input_is_kept_or_rejected_with_the_right_reason(corpus: Path, cleaned: dict) -> None:
    out, summary = cleaned["out"], cleaned["summary"]
    kept = {record["id"] for record in read_manifest(str(out))}
    rejects = {record["id"]: record for record in read_jsonl(str(out / "rejects.jsonl"))}
    assert kept == set(KEPT_NOTES)
    assert {name: (r["reason"], r["file"]) for name, r in rejects.items()} == REJECTED
    assert {name: r["duplicate_of"] for name, r in rejects.items() if "duplicate_of" in r} == DUPLICATE_OF
    assert all(r["reason"] in REJECT_REASONS and r["message"] for r in rejects.values())
    # The invariant: kept + rejected = every input id, none twice, none lost.
    assert kept | set(rejects) == _input_ids(corpus) and not kept & set(rejects)
    assert summary == CleanSummary(kept=len(kept), rejected=len(rejects), per_reason=summary.per_reason)
    assert sum(summary.per_reason.values()) == len(rejects) == cleaned["progress"] - len(kept)
    assert json.loads((out / "summary.json").read_text())["per_reason"] == summary.per_reason


def test_unusual_inputs_are_normalised_and_recorded(cleaned: dict) -> None:
    notes = {record["id"]: record["normalised"] for record in read_manifest(str(cleaned["out"]))}
    assert notes == KEPT_NOTES


def test_outputs_are_square_binary_and_carry_the_input_fields(cleaned: dict) -> None:
    out = cleaned["out"]
    for record in read_manifest(str(out)):
        photo_bytes = (out / record["image"]).read_bytes()
        photo, mask = Image.open(BytesIO(photo_bytes)), Image.open(out / record["mask"])
        assert (photo.format, photo.mode, photo.size) == ("JPEG", "RGB", (320, 320))
        assert (mask.format, mask.mode, mask.size) == ("PNG", "L", (320, 320))
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
        assert (record["width"], record["height"]) == (320, 320)
        assert (record["original_width"], record["original_height"]) == SIZE
        assert record["checksum"] == hashlib.sha256(photo_bytes).hexdigest()
        if record["id"].startswith("good"):
            assert record["source"] == "studio-a" and record["product_type"] and "shoot" in record
        else:
            assert record["source"].endswith(f"{record['id']}.{'png' if record['id'] == 'deep' else 'jpg'}")


def test_the_rotated_photo_is_turned_upright(cleaned: dict) -> None:
    out = cleaned["out"]
    photo, _, _ = generate_pair(43, SIZE, SEED)  # the "rotated" pair of `_unusual_files`
    expected = np.asarray(photo.resize((320, 320), Image.Resampling.BILINEAR), np.float32)
    written = np.asarray(Image.open(out / "images" / "rotated.jpg"), np.float32)
    assert np.abs(written - expected).mean() < 6  # turned the wrong way, it differs by about 40


def test_the_input_is_unchanged_and_a_rerun_writes_the_same_bytes(
    corpus: Path, cleaned: dict, tmp_path: Path
) -> None:
    assert tree_digest(corpus) == cleaned["before"]
    clean_dataset(str(corpus), str(tmp_path / "again"))
    assert tree_digest(tmp_path / "again") == tree_digest(cleaned["out"])


def test_swapped_masks_are_told_from_true_ones() -> None:
    pairs = [generate_pair(index, SIZE, seed=5) for index in range(12)]  # two of each product type
    true = [edge_contrast(photo, mask) for photo, mask, _ in pairs]
    swapped = [edge_contrast(photo, pairs[(i + 1) % 12][1]) for i, (photo, _, _) in enumerate(pairs)]
    assert min(true) >= CONTENT_MISMATCH_BELOW
    assert sum(score < CONTENT_MISMATCH_BELOW for score in swapped) >= 11


def test_a_true_mask_on_a_busy_backdrop_is_kept_when_a_person_checked_it(tmp_path: Path) -> None:
    # A product on bold checks: the backdrop's edges drown the outline's, so the content check takes
    # the true mask for another photo's. Drawn or approved by a reviewer, the pair is kept.
    for index in range(40):
        busy, mask, _ = generate_pair(index, (400, 600), seed=21, backdrop="checks")
        if edge_contrast(busy, mask) < CONTENT_MISMATCH_BELOW:
            break
    else:
        pytest.fail("no product on a busy backdrop fooled the content check")
    src = tmp_path / "raw"
    mirrored = busy.transpose(Image.Transpose.FLIP_LEFT_RIGHT), mask[:, ::-1]  # not a duplicate of it
    pairs = {"studio": ("raw", busy, mask), "corrected": (SOURCE_CORRECTED, busy, mask),
             "approved": (SOURCE_ACCEPTED, *mirrored)}  # fmt: skip
    for name, (source, picture, truth) in pairs.items():
        storage.write_bytes(str(src / "images" / f"{name}.jpg"), encode_image(picture, "JPEG"))
        storage.write_bytes(str(src / "masks" / f"{name}.png"), encode_image(mask_to_image(truth), "PNG"))
        with open(src / "manifest.jsonl", "a") as manifest:
            manifest.write(json.dumps({"id": name, "source": source}) + "\n")

    summary = clean_dataset(str(src), str(tmp_path / "clean"), size=160)

    kept = {record["id"]: record["source"] for record in read_manifest(str(tmp_path / "clean"))}
    assert kept == {"corrected": SOURCE_CORRECTED, "approved": SOURCE_ACCEPTED}
    assert summary.per_reason == {"content_mismatch": 1}


def test_real_photos_keep_true_masks_on_street_backdrops_and_still_refuse_another_photos_mask(
    tmp_path: Path,
) -> None:
    """Street backdrops drown a true outline's edges (ccp_0010: edge contrast 1.65, under the studio
    threshold of 2.0): marked `domain: real`, its true mask is kept, and another photo's mask is not."""
    from cutout.data.real import REAL_PHOTOS

    src = tmp_path / "raw"
    pairs = {"true": ("ccp_0010", "ccp_0010"), "swapped": ("ccp_0010", "ccp_0194")}
    for name, (photo, mask) in pairs.items():
        storage.write_bytes(
            str(src / "images" / f"{name}.jpg"), (REAL_PHOTOS / "images" / f"{photo}.jpg").read_bytes()
        )
        storage.write_bytes(
            str(src / "masks" / f"{name}.png"), (REAL_PHOTOS / "masks" / f"{mask}.png").read_bytes()
        )
    for domain, kept in (("real", {"true"}), (None, set())):
        manifest = "".join(json.dumps({"id": name, "domain": domain}) + "\n" for name in pairs)
        (src / "manifest.jsonl").write_text(manifest)
        summary = clean_dataset(str(src), str(tmp_path / f"clean-{domain}"))
        assert {record["id"] for record in read_manifest(str(tmp_path / f"clean-{domain}"))} == kept
        assert summary.per_reason == {"content_mismatch": 2 - len(kept)}


def test_perceptual_hash_matches_copies_not_other_photos() -> None:
    photos = [generate_pair(index, (320, 480), seed=8)[0] for index in range(6)]
    hashes = [perceptual_hash(photo) for photo in photos]
    for photo, original in zip(photos, hashes, strict=True):
        copy = Image.open(BytesIO(_jpeg(ImageEnhance.Brightness(photo).enhance(0.95), quality=60)))
        assert (perceptual_hash(copy) ^ original).bit_count() <= NEAR_DUPLICATE_BITS
    distances = [(a ^ b).bit_count() for i, a in enumerate(hashes) for b in hashes[i + 1 :]]
    assert min(distances) > NEAR_DUPLICATE_BITS


def test_a_size_under_32_pixels_or_an_output_inside_the_input_is_refused(
    corpus: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="at least 32"):
        clean_dataset(str(corpus), str(tmp_path / "out"), size=16)
    for inside in (corpus, corpus / "images" / "clean"):
        with pytest.raises(ValueError, match="never modified"):
            clean_dataset(str(corpus), str(inside))


def test_s3_round_trip(corpus: Path, cleaned: dict, s3_bucket: str, tmp_path: Path) -> None:
    for path in sorted(corpus.rglob("*")):
        if path.is_file():
            storage.write_bytes(
                storage.join(s3_bucket, "raw", str(path.relative_to(corpus))), path.read_bytes()
            )
    summary = clean_dataset(f"{s3_bucket}/raw", f"{s3_bucket}/clean")
    assert summary == cleaned["summary"]
    local = cleaned["out"]
    for name in ("manifest.jsonl", "rejects.jsonl"):
        from_s3 = [record for record in read_jsonl(f"{s3_bucket}/clean/{name}")]
        from_disk = [record for record in read_jsonl(str(local / name))]
        # Only the default `source` (the input's location) differs between the two runs.
        for record in from_s3 + from_disk:
            record["source"] = record.get("source", "").rsplit("/", 1)[-1]
        assert from_s3 == from_disk
    for record in read_manifest(str(local)):
        for key in ("image", "mask"):
            assert (
                storage.read_bytes(f"{s3_bucket}/clean/{record[key]}") == (local / record[key]).read_bytes()
            )
    assert (
        storage.read_bytes(f"{s3_bucket}/raw/images/good-1.jpg")
        == (corpus / "images/good-1.jpg").read_bytes()
    )
