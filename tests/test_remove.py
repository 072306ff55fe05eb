"""`cutout remove` protects what a studio person relies on: every photo out or reported, sizes kept."""

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cutout.cli import app
from cutout.compose import compose_cutout, parse_color, product_box
from cutout.remove import collect_inputs
from helpers import product_photo


@pytest.fixture
def photo_folder(tmp_path):
    folder = tmp_path / "shoot"
    (folder / "tops").mkdir(parents=True)
    product_photo(200, 300, seed=1).save(folder / "dress.jpg")
    product_photo(321, 241, seed=2).save(folder / "tops" / "shirt.png")
    product_photo(250, 250, seed=3).convert("CMYK").save(folder / "tops" / "cmyk.jpg")
    whole = (folder / "dress.jpg").read_bytes()
    (folder / "broken.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.txt").write_text("not a photo, and not picked up from a folder")
    return folder


def run(*args):
    return CliRunner().invoke(app, ["remove", *map(str, args)])


def test_folder_with_one_broken_file(photo_folder, tmp_path, u2netp_weights):
    # A long output path on an 80-column, non-TTY console (CI, ssh): the summary must stay one line.
    out = tmp_path / ("a-long-folder-name-" * 4) / "out"
    result = run(photo_folder, "-o", out, "--model", u2netp_weights, "--batch-size", "2")

    assert result.exit_code == 1
    assert f"3 written to {out}, 1 failed" in result.output
    assert f"not processed {photo_folder / 'broken.jpg'}: " in result.output and "truncated" in result.output
    expected_sizes = {"dress.png": (200, 300), "tops/shirt.png": (321, 241), "tops/cmyk.png": (250, 250)}
    for name, size in expected_sizes.items():
        with Image.open(out / name) as cutout:
            assert cutout.mode == "RGBA"
            assert cutout.size == size
    assert not (out / "broken.png").exists()


def test_all_good_exits_zero_and_mask_only_writes_gray_masks(photo_folder, tmp_path, u2netp_weights):
    (photo_folder / "broken.jpg").unlink()
    out = tmp_path / "masks"
    result = run(
        photo_folder / "dress.jpg", photo_folder / "tops", "-o", out, "--model", u2netp_weights, "--mask-only"
    )
    assert result.exit_code == 0, result.output
    with Image.open(out / "dress.png") as mask:
        assert (mask.mode, mask.size) == ("L", (200, 300))
    assert {p.name for p in out.iterdir()} == {"dress.png", "shirt.png", "cmyk.png"}


def test_flattened_jpeg_on_a_colour_and_glob_inputs(photo_folder, tmp_path, u2netp_weights):
    out = tmp_path / "flat"
    result = run(f"{photo_folder}/**/*.png", "-o", out, "--model", u2netp_weights, "--bg-color", "#00ff00",
                 "--format", "jpg")  # fmt: skip
    assert result.exit_code == 0, result.output
    with Image.open(out / "shirt.jpg") as flat:
        assert (flat.format, flat.mode, flat.size) == ("JPEG", "RGB", (321, 241))


def test_missing_input_and_bad_options_are_reported(photo_folder, tmp_path, u2netp_weights):
    result = run(
        photo_folder / "nope.jpg", photo_folder / "dress.jpg", "-o", tmp_path / "o", "--model", u2netp_weights
    )
    assert result.exit_code == 1
    assert "not_found" in result.output and "1 written" in result.output

    jpeg_with_alpha = run(photo_folder, "-o", tmp_path / "o", "--model", u2netp_weights, "--format", "jpg")
    assert jpeg_with_alpha.exit_code == 2 and "transparency" in jpeg_with_alpha.output
    bad_colour = run(photo_folder, "-o", tmp_path / "o", "--model", u2netp_weights, "--bg-color", "nocolour")
    assert bad_colour.exit_code == 2 and "not a colour" in bad_colour.output
    bad_model = run(photo_folder, "-o", tmp_path / "o", "--model", tmp_path / "model.bin")
    assert bad_model.exit_code == 2 and "cannot load a model" in bad_model.output


def test_same_names_from_different_places_do_not_overwrite(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        product_photo().save(tmp_path / folder / "x.jpg")
    photos, failures = collect_inputs([str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b" / "x.jpg")])
    assert not failures
    assert [photo.name for photo in photos] == ["x", "x-2"]


def test_s3_in_and_out(s3_bucket, u2netp_weights, tmp_path):
    from cutout.platform import storage

    for seed in range(2):
        photo = tmp_path / f"p{seed}.jpg"
        product_photo(seed=seed).save(photo)
        storage.copy(photo, f"{s3_bucket}/shoot/p{seed}.jpg")
    result = run(f"{s3_bucket}/shoot", "-o", f"{s3_bucket}/cutouts", "--model", u2netp_weights)
    assert result.exit_code == 0, result.output
    assert sorted(storage.list_files(f"{s3_bucket}/cutouts")) == [
        f"{s3_bucket}/cutouts/p0.png",
        f"{s3_bucket}/cutouts/p1.png",
    ]


def test_compose_keeps_alpha_flattens_and_crops():
    image = Image.new("RGB", (100, 80), (10, 20, 30))
    alpha = np.zeros((80, 100), dtype=np.uint8)
    alpha[20:40, 30:70] = 255
    alpha_image = Image.fromarray(alpha, mode="L")

    rgba = compose_cutout(image, alpha_image)
    # fully transparent pixels carry no colour (smaller, faster PNGs); visible ones keep theirs
    assert rgba.getpixel((0, 0)) == (0, 0, 0, 0) and rgba.getpixel((50, 30)) == (10, 20, 30, 255)
    flat = compose_cutout(image, alpha_image, bg_color=parse_color("white"))
    assert (
        flat.mode == "RGB"
        and flat.getpixel((0, 0)) == (255, 255, 255)
        and flat.getpixel((50, 30)) == (10, 20, 30)
    )
    assert product_box(alpha_image, margin=0.05) == (28, 18, 72, 42)
    assert compose_cutout(image, alpha_image, crop=True).size == (44, 24)
    assert product_box(Image.new("L", (10, 10))) == (0, 0, 10, 10)


def test_png_compression_level_reaches_the_encoder(photo_folder, tmp_path, u2netp_weights):
    sizes = {}
    for level in ("0", "9"):
        out = tmp_path / f"level{level}"
        result = run(
            photo_folder / "dress.jpg", "-o", out, "--model", u2netp_weights, "--png-compression", level
        )
        assert result.exit_code == 0, result.output
        sizes[level] = (out / "dress.png").stat().st_size
    assert sizes["9"] < sizes["0"] / 2  # level 0 stores the pixels uncompressed
    refused = run(photo_folder, "-o", tmp_path / "x", "--model", u2netp_weights, "--png-compression", "10")
    assert refused.exit_code == 2


def test_a_whole_bucket_is_a_folder_of_photos(s3_bucket, u2netp_weights, tmp_path):
    from cutout.platform import storage

    product_photo().save(tmp_path / "p.jpg")
    storage.copy(tmp_path / "p.jpg", f"{s3_bucket}/p.jpg")
    result = run(s3_bucket, f"{s3_bucket}/", "-o", tmp_path / "out", "--model", u2netp_weights)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p-2.png", "p.png"]
