"""Safe image I/O: every malformed file gets its reason, every mode its right conversion."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from cutout.data.io import (
    REASONS,
    ImageError,
    encode_image,
    image_info,
    mask_to_image,
    read_image,
    read_mask,
    read_soft_mask,
)


def _save(tmp_path: Path, name: str, image: Image.Image, **options) -> Path:
    path = tmp_path / name
    image.save(path, **options)
    return path


def _photo(width: int = 64, height: int = 48) -> Image.Image:
    """A noisy RGB photo: noise keeps the compressed file large enough to cut meaningfully."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _reason(source, **kwargs) -> str:
    with pytest.raises(ImageError) as info:
        read_image(source, **kwargs)
    return info.value.reason


# --- the error type ---------------------------------------------------------------------------


def test_image_error_reads_like_a_sentence_and_pickles():
    err = ImageError("truncated", "the file ends before the image data does", "shirt.jpg")
    assert str(err) == "shirt.jpg: the file ends before the image data does (truncated)"
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert (again.reason, again.message, again.source) == ("truncated", err.message, "shirt.jpg")
    assert set(REASONS) >= {
        "empty",
        "not_found",
        "not_an_image",
        "truncated",
        "too_many_pixels",
        "unsupported",
    }
    with pytest.raises(ValueError, match="unknown image error reason"):
        ImageError("bad", "nope")


# --- malformed files --------------------------------------------------------------------------


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert _reason(path) == "empty"
    assert _reason(b"") == "empty"


def test_missing_file(tmp_path):
    with pytest.raises(ImageError) as info:
        read_image(tmp_path / "nope.jpg")
    assert info.value.reason == "not_found"
    assert info.value.source == str(tmp_path / "nope.jpg")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a photo\n" * 20)
    assert _reason(path) == "not_an_image"
    with pytest.raises(ImageError, match="not_an_image"):
        image_info(path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_file_cut_in_half_is_truncated(tmp_path, fmt):
    whole = _save(tmp_path, f"whole.{fmt.lower()}", _photo(), format=fmt).read_bytes()
    path = tmp_path / f"half.{fmt.lower()}"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ImageError) as info:
        read_image(path)
    assert info.value.reason == "truncated"
    assert str(info.value).startswith(f"{path}: the file ends before")
    assert _reason(whole[: len(whole) // 2]) == "truncated"


def test_truncation_detected_even_if_someone_enabled_partial_loading(tmp_path, monkeypatch):
    whole = _save(tmp_path, "whole.jpg", _photo(), format="JPEG").read_bytes()
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert _reason(whole[: len(whole) // 2]) == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_too_many_pixels_from_header_before_decoding(tmp_path, monkeypatch):
    path = _save(tmp_path, "big.png", Image.new("RGB", (3000, 3000), (10, 20, 30)))
    assert _reason(path, max_pixels=1_000_000) == "too_many_pixels"
    with pytest.raises(ImageError, match="too_many_pixels"):
        image_info(path, max_pixels=1_000_000)
    # Nothing may be decoded once the header is over the limit.
    monkeypatch.setattr(ImageFile.ImageFile, "load", _fail_if_called)
    assert _reason(path, max_pixels=1_000_000) == "too_many_pixels"


def _fail_if_called(self):
    raise AssertionError("decoded pixels of an image that is over the limit")


def test_tiny_file_with_huge_dimensions(tmp_path, monkeypatch):
    # 100 M pixels in 12 kB: over our default limit, under Pillow's hard error.
    medium = _save(tmp_path, "medium.png", Image.new("1", (10_000, 10_000)))
    # 400 M pixels: Pillow's own DecompressionBombError fires at open and is mapped.
    huge = _save(tmp_path, "huge.png", Image.new("1", (20_000, 20_000)))
    assert medium.stat().st_size < 100_000 and huge.stat().st_size < 100_000
    monkeypatch.setattr(ImageFile.ImageFile, "load", _fail_if_called)
    assert _reason(medium) == "too_many_pixels"
    assert _reason(huge) == "too_many_pixels"
    assert _reason(huge.read_bytes(), max_pixels=10**12) == "too_many_pixels"


def test_max_pixels_from_environment(tmp_path, monkeypatch):
    path = _save(tmp_path, "photo.png", _photo(100, 100))
    monkeypatch.setenv("CUTOUT_MAX_PIXELS", "5000")
    assert _reason(path) == "too_many_pixels"
    assert read_image(path, max_pixels=10_000).size == (100, 100)


def test_mode_that_cannot_become_rgb_is_unsupported(tmp_path):
    # Pillow reads CIELAB TIFFs but has no LAB -> RGB conversion without a colour profile.
    path = _save(tmp_path, "lab.tif", Image.new("LAB", (4, 4), (50, 0, 0)))
    assert Image.open(path).mode == "LAB"
    assert _reason(path) == "unsupported"


# --- sources ----------------------------------------------------------------------------------


def test_bytes_str_and_pathlib_sources(tmp_path):
    path = _save(tmp_path, "photo.png", _photo())
    from_path = read_image(path)
    assert from_path.mode == "RGB" and from_path.size == (64, 48)
    assert np.array_equal(np.asarray(read_image(path.read_bytes())), np.asarray(from_path))
    assert np.array_equal(np.asarray(read_image(str(path))), np.asarray(from_path))
    assert np.array_equal(np.asarray(read_image(bytearray(path.read_bytes()))), np.asarray(from_path))


def test_s3_uri_goes_through_storage(monkeypatch, tmp_path):
    from cutout.platform import storage

    data = _save(tmp_path, "photo.png", _photo()).read_bytes()
    seen = []
    monkeypatch.setattr(storage, "read_bytes", lambda uri: seen.append(uri) or data)
    assert read_image("s3://bucket/images/a.png").size == (64, 48)
    assert seen == ["s3://bucket/images/a.png"]


def test_missing_s3_object_is_not_found(monkeypatch):
    from cutout.platform import storage

    def missing(uri):
        raise FileNotFoundError(2, "No such S3 object", uri)

    monkeypatch.setattr(storage, "read_bytes", missing)
    with pytest.raises(ImageError) as info:
        read_image("s3://bucket/images/gone.png")
    assert (info.value.reason, info.value.source) == ("not_found", "s3://bucket/images/gone.png")


# --- colour and depth -------------------------------------------------------------------------


def test_cmyk_jpeg_reads_as_rgb(tmp_path):
    path = _save(tmp_path, "red.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0)), quality=95)
    assert Image.open(path).mode == "CMYK"
    image = read_image(path)
    assert image.mode == "RGB"
    assert np.allclose(image.getpixel((8, 8)), (255, 0, 0), atol=6)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    gradient = np.linspace(0, 65535, 256).round().astype(np.uint16)
    path = _save(tmp_path, "deep.png", Image.fromarray(np.tile(gradient, (4, 1))))
    assert Image.open(path).mode.startswith("I")
    row = np.asarray(read_image(path))[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert np.abs(row - np.arange(256)).max() <= 1
    mask = read_soft_mask(path)
    assert mask.dtype == np.float32 and mask[0, -1] == 1.0 and mask[0, 0] == 0.0
    assert read_mask(path)[0].tolist() == (gradient >= 32768).tolist()


def test_rgba_photo_is_composited_over_white(tmp_path):
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[:, :5] = (200, 0, 0, 255)  # opaque red on the left, fully transparent black on the right
    rgba[:, 5:] = (0, 0, 0, 0)
    rgba[0, 0] = (0, 0, 0, 128)  # half-transparent black blends to mid-grey
    image = read_image(_save(tmp_path, "cut.png", Image.fromarray(rgba)))
    assert image.mode == "RGB"
    assert image.getpixel((2, 5)) == (200, 0, 0)
    assert image.getpixel((8, 5)) == (255, 255, 255)
    assert all(abs(v - 127) <= 1 for v in image.getpixel((0, 0)))


def test_palette_photo_with_transparency_sits_on_white(tmp_path):
    palette_image = Image.new("P", (4, 4), 0)
    palette_image.putpalette([0, 0, 0, 0, 255, 0])
    palette_image.putpixel((0, 0), 1)
    path = _save(tmp_path, "icon.png", palette_image, transparency=0)
    image = read_image(path)
    assert image.getpixel((0, 0)) == (0, 255, 0)
    assert image.getpixel((3, 3)) == (255, 255, 255)


def test_grayscale_and_bilevel_become_rgb(tmp_path):
    for mode in ("L", "1"):
        image = read_image(_save(tmp_path, f"g{mode}.png", Image.new(mode, (3, 2), 255)))
        assert image.mode == "RGB" and image.getpixel((1, 1)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    # Stored landscape 40×20 with a red block at the stored top-left; orientation 6 means
    # "turn 90° clockwise to display", which moves that corner to the top-right.
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(tmp_path, "rotated.jpg", stored, exif=exif, quality=95)
    image = read_image(path)
    assert image.size == (20, 40)
    assert image_info(path) == (20, 40, "JPEG")
    red, _, blue = image.getpixel((16, 3))
    assert red > 200 and blue < 60
    assert image.getpixel((3, 3))[2] > 200  # the top-left is now blue background

    mask_stored = Image.new("L", (40, 20), 0)
    mask_stored.paste(255, (0, 0, 8, 8))
    mask = read_mask(_save(tmp_path, "rotated_mask.jpg", mask_stored, exif=exif, quality=95))
    assert mask.shape == (40, 20)
    assert mask[3, 16] and not mask[3, 3]


def test_multi_frame_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert read_image(path).getpixel((4, 4)) == (255, 0, 0)


# --- masks ------------------------------------------------------------------------------------


def test_palette_mask_uses_colour_not_index(tmp_path):
    mask = Image.new("P", (4, 4), 0)
    mask.putpalette([255, 255, 255, 0, 0, 0])  # index 0 is white, index 1 is black
    mask.putpixel((0, 0), 1)
    result = read_mask(_save(tmp_path, "mask.png", mask))
    assert result.dtype == np.bool_ and result.shape == (4, 4)
    assert not result[0, 0]
    assert result.sum() == 15


def test_rgba_mask_uses_varying_alpha(tmp_path):
    rgba = np.full((4, 4, 4), 255, dtype=np.uint8)  # white everywhere: luminance says nothing
    rgba[:, :2, 3] = 0
    result = read_mask(_save(tmp_path, "alpha.png", Image.fromarray(rgba)))
    assert result[:, :2].sum() == 0 and result[:, 2:].all()


def test_rgba_mask_with_constant_alpha_uses_luminance(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[:, 2:, :3] = 255
    result = read_mask(_save(tmp_path, "opaque.png", Image.fromarray(rgba)))
    assert result[:, :2].sum() == 0 and result[:, 2:].all()


def test_rgb_and_bilevel_masks(tmp_path):
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0] = 255
    assert read_mask(_save(tmp_path, "rgb.png", Image.fromarray(rgb))).tolist() == [
        [True, True],
        [False, False],
    ]
    bilevel = Image.new("1", (2, 2), 0)
    bilevel.putpixel((1, 0), 1)
    assert read_mask(_save(tmp_path, "b.png", bilevel)).tolist() == [[False, True], [False, False]]


def test_soft_mask_and_threshold(tmp_path):
    values = np.array([[0, 64, 127, 128, 200, 255]], dtype=np.uint8)
    path = _save(tmp_path, "soft.png", Image.fromarray(values))
    soft = read_soft_mask(path)
    assert soft.dtype == np.float32 and soft.shape == (1, 6)
    assert np.allclose(soft, values / 255.0)
    assert read_mask(path).tolist() == [[False, False, False, True, True, True]]
    assert read_mask(path, threshold=0.75).tolist() == [[False, False, False, False, True, True]]
    with pytest.raises(ValueError, match="threshold"):
        read_mask(path, threshold=0)


def test_mask_errors_use_the_same_reasons(tmp_path):
    with pytest.raises(ImageError, match="not_found"):
        read_mask(tmp_path / "missing.png")


# --- encoding and info ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "jpg", "WEBP"])
def test_encode_round_trip(fmt):
    photo = _photo()
    decoded = read_image(encode_image(photo, fmt))
    assert decoded.size == photo.size
    if fmt == "PNG":
        assert np.array_equal(np.asarray(decoded), np.asarray(photo))


def test_a_fast_png_of_a_real_cutout_is_lossless_and_smaller_than_zlibs_plain_fast_level():
    from cutout.compose import compose_cutout
    from cutout.data.real import REAL_PHOTOS

    name = "ccp_0003"
    photo = read_image(f"{REAL_PHOTOS}/images/{name}.jpg").resize((1000, 1500))
    alpha = mask_to_image(read_mask(f"{REAL_PHOTOS}/masks/{name}.png")).resize((1000, 1500))
    cutout = compose_cutout(photo, alpha)
    plain = io.BytesIO()
    cutout.save(plain, "PNG", compress_level=1)

    fast = encode_image(cutout, "PNG", compress_level=1)

    assert np.array_equal(np.asarray(Image.open(io.BytesIO(fast))), np.asarray(cutout))
    assert len(fast) < len(plain.getvalue())  # run-length packing of the transparent runs, same speed


def test_encode_refuses_alpha_in_jpeg_and_unknown_formats():
    with pytest.raises(ValueError, match="transparency"):
        encode_image(Image.new("RGBA", (2, 2)), "JPEG")
    with pytest.raises(ValueError, match="can't encode"):
        encode_image(Image.new("RGB", (2, 2)), "BMP")
    assert encode_image(Image.new("RGBA", (2, 2)), "PNG").startswith(b"\x89PNG")


def test_mask_to_image():
    as_bool = mask_to_image(np.array([[True, False]]))
    assert as_bool.mode == "L" and np.asarray(as_bool).tolist() == [[255, 0]]
    as_float = mask_to_image(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(as_float).tolist() == [[0, 128, 255]]
    for bad in (
        np.zeros((2, 2, 1), bool),
        np.zeros((2, 2), np.uint8),
        np.array([[2.0]]),
        np.array([[np.nan]]),
    ):
        with pytest.raises(ValueError):
            mask_to_image(bad)


def test_image_info_reads_header_only(tmp_path, monkeypatch):
    path = _save(tmp_path, "photo.jpg", _photo(), quality=90)
    monkeypatch.setattr(ImageFile.ImageFile, "load", _fail_if_called)
    assert image_info(path) == (64, 48, "JPEG")
    assert image_info(path.read_bytes()) == (64, 48, "JPEG")
    with pytest.raises(ImageError, match="empty"):
        image_info(b"")
