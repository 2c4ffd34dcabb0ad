"""Tests for vlserve.chat.images: untrusted upload -> bounded RGB bitmap. Fast, no model."""

from __future__ import annotations

import base64
import io
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from vlserve.errors import ImageError, InvalidRequestError, PayloadTooLargeError
from vlserve.chat.images import (ImageCache, ImageLimits, PreparedImage, decode_data_url,
                            prepare_image)

LIMITS = ImageLimits()
RED, BLUE, WHITE, BLACK = (255, 0, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def pixel(img: PreparedImage, x: int, y: int) -> tuple[int, int, int]:
    i = (y * img.width + x) * 3
    return tuple(img.rgb[i:i + 3])


def close(a, b, tol=40) -> bool:
    return all(abs(p - q) <= tol for p, q in zip(a, b))


def noise(size=(128, 96)) -> Image.Image:
    return Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares any size but carries almost no data: costs nothing to build."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def two_tone(size=(40, 20)) -> Image.Image:
    """Left half red, right half blue, so orientation and frame checks can look at pixels."""
    im = Image.new("RGB", size, RED)
    im.paste(BLUE, (size[0] // 2, 0, size[0], size[1]))
    return im


# --- accepted formats -------------------------------------------------------------------

@pytest.mark.parametrize("fmt, mode, expected_format", [
    ("PNG", "RGB", "PNG"),
    ("JPEG", "RGB", "JPEG"),
    ("WEBP", "RGB", "WEBP"),
    ("GIF", "P", "GIF"),
    ("BMP", "RGB", "BMP"),
    ("BMP", "1", "BMP"),
    ("PNG", "L", "PNG"),
    ("JPEG", "L", "JPEG"),
    ("JPEG", "CMYK", "JPEG"),
])
def test_supported_formats_become_rgb(fmt, mode, expected_format):
    data = encode(Image.new("RGB", (40, 30), RED).convert(mode), fmt)
    img = prepare_image(data, LIMITS)
    assert (img.width, img.height, img.format) == (40, 30, expected_format)
    assert len(img.rgb) == 40 * 30 * 3
    assert img.source_bytes == len(data)


@pytest.mark.parametrize("mode, fill, expected", [
    ("RGB", RED, RED),
    ("CMYK", (0, 255, 255, 0), RED),
    ("L", 128, (128, 128, 128)),
])
def test_colours_survive_conversion(mode, fill, expected):
    img = prepare_image(encode(Image.new(mode, (8, 8), fill), "JPEG", quality=95), LIMITS)
    assert close(pixel(img, 4, 4), expected)


def test_mpo_from_phones_counts_as_jpeg():
    data = encode(Image.new("RGB", (16, 8), RED), "MPO", save_all=True,
                  append_images=[Image.new("RGB", (16, 8), BLUE)])
    img = prepare_image(data, LIMITS)
    assert img.format == "JPEG"
    assert close(pixel(img, 8, 4), RED)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animated_images_use_first_frame(fmt):
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, BLUE, BLUE)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    img = prepare_image(data, LIMITS)
    assert (img.width, img.height) == (16, 16)
    assert close(pixel(img, 8, 8), RED)


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (1, 7)])
def test_tiny_images_are_allowed(size):
    img = prepare_image(encode(Image.new("RGB", size, RED), "PNG"), LIMITS)
    assert (img.width, img.height) == size
    assert len(img.rgb) == size[0] * size[1] * 3


# --- transparency, palettes, 16-bit -----------------------------------------------------

def _palette_image(transparent: bool) -> Image.Image:
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    if transparent:
        im.info["transparency"] = 1
    return im


@pytest.mark.parametrize("image, expected", [
    (Image.new("RGBA", (4, 4), (0, 0, 0, 0)), WHITE),             # fully transparent -> white
    (Image.new("RGBA", (4, 4), (255, 0, 0, 255)), RED),           # opaque stays as is
    (Image.new("RGBA", (4, 4), (0, 0, 0, 128)), (127, 127, 127)),  # half black over white
    (Image.new("LA", (4, 4), (0, 0)), WHITE),
    (Image.new("LA", (4, 4), (0, 255)), BLACK),
    (_palette_image(transparent=False), (10, 200, 30)),
    (_palette_image(transparent=True), WHITE),
])
def test_alpha_is_composited_on_white_and_palettes_expand(image, expected):
    data = encode(image, "PNG", **({"transparency": 1} if "transparency" in image.info else {}))
    img = prepare_image(data, LIMITS)
    assert len(img.rgb) == 4 * 4 * 3
    assert close(pixel(img, 1, 1), expected, tol=2)


def test_16bit_grayscale_is_scaled_not_clipped():
    samples = np.array([[0, 32768, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(samples), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really a 16-bit file
    img = prepare_image(data, LIMITS)
    assert [pixel(img, x, 0) for x in range(3)] == [BLACK, (128, 128, 128), WHITE]


# --- orientation and resizing -----------------------------------------------------------

def test_exif_orientation_6_rotates():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be turned 90 degrees clockwise for display
    data = encode(two_tone((40, 20)), "JPEG", exif=exif, quality=95)
    img = prepare_image(data, LIMITS)
    assert (img.width, img.height) == (20, 40)
    assert close(pixel(img, 10, 2), RED)     # stored left half is now on top
    assert close(pixel(img, 10, 37), BLUE)


def test_exif_orientation_applies_before_the_fit():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.new("RGB", (4000, 3000), RED), "JPEG", exif=exif)
    img = prepare_image(data, LIMITS)
    assert (img.width, img.height) == (768, 1024)


@pytest.mark.parametrize("size, expected", [
    ((4000, 3000), (1024, 768)),
    ((3000, 4000), (768, 1024)),
    ((2000, 500), (1024, 256)),
    ((500, 2000), (256, 1024)),
    ((1000, 1000), (768, 768)),
    ((100, 80), (100, 80)),       # never upscale
    ((1024, 768), (1024, 768)),
    ((5000, 10), (1024, 2)),
    ((10, 5000), (2, 1024)),
    ((20000, 1), (1024, 1)),      # every side stays >= 1 px
])
def test_resize_fits_both_side_limits(size, expected):
    img = prepare_image(encode(Image.new("L", size, 200), "PNG"), LIMITS)
    assert (img.width, img.height) == expected
    assert len(img.rgb) == expected[0] * expected[1] * 3


@pytest.mark.parametrize("size, expected", [((4000, 3000), (1024, 768)), ((4001, 2999), (1024, 768))])
def test_large_jpeg_resizes_exactly(size, expected):
    # Large JPEGs are decoded at reduced scale first; the result must match the plain fit.
    img = prepare_image(encode(Image.new("RGB", size, RED), "JPEG"), LIMITS)
    assert (img.width, img.height) == expected
    assert close(pixel(img, 500, 300), RED)


def test_custom_side_limits():
    limits = ImageLimits(max_long_side=200, max_short_side=50)
    img = prepare_image(encode(Image.new("RGB", (400, 300), RED), "PNG"), limits)
    assert (img.width, img.height) == (67, 50)


# --- refused content --------------------------------------------------------------------

def test_not_an_image():
    with pytest.raises(ImageError) as exc:
        prepare_image(b"hello", LIMITS, param="messages[0].content[1]")
    assert "not a recognised image" in exc.value.message
    assert "hello" not in exc.value.message
    assert (exc.value.status, exc.value.code, exc.value.param) == (400, "invalid_image", "messages[0].content[1]")
    assert isinstance(exc.value, InvalidRequestError)


def test_empty_image():
    with pytest.raises(ImageError, match="empty"):
        prepare_image(b"", LIMITS)


@pytest.mark.parametrize("fmt, name", [("TIFF", "TIFF"), ("ICO", "ICO"), ("PDF", "PDF")])
def test_unsupported_format_is_named(fmt, name):
    with pytest.raises(ImageError) as exc:
        prepare_image(encode(Image.new("RGB", (16, 16), RED), fmt), LIMITS)
    assert f"unsupported image format {name}" in exc.value.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_files_are_refused(fmt, keep):
    data = encode(noise(), fmt)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        prepare_image(data[:int(len(data) * keep)], LIMITS)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupt_png_crc_is_refused():
    data = bytearray(encode(noise(), "PNG"))
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(ImageError, match="corrupt or truncated"):
        prepare_image(bytes(data), LIMITS)


@pytest.mark.parametrize("size, message", [
    ((100_000, 100_000), "image too large"),                          # Pillow's own guard fires first
    ((10_000, 6_000), "image too large: 10000x6000 pixels exceeds 50000000"),  # our header check
])
def test_decompression_bomb_is_refused_from_the_header(size, message):
    with pytest.raises(ImageError, match=message):
        prepare_image(png_header_only(*size), LIMITS)


def test_bomb_warning_raised_as_error_is_still_an_image_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match="image too large"):
            prepare_image(png_header_only(10_000, 10_000), LIMITS)


def test_pixel_limit_is_configurable():
    with pytest.raises(ImageError, match="20x20 pixels exceeds 399"):
        prepare_image(encode(Image.new("RGB", (20, 20)), "PNG"), ImageLimits(max_pixels=399))
    assert prepare_image(encode(Image.new("RGB", (20, 20)), "PNG"), ImageLimits(max_pixels=400))


# --- size limits ------------------------------------------------------------------------

def test_payload_too_large_is_413_before_decoding():
    limits = ImageLimits(max_bytes=1000)
    # Not even valid base64: the size check must come first.
    url = "data:image/png;base64," + "!" * 4000
    with pytest.raises(PayloadTooLargeError) as exc:
        decode_data_url(url, limits, param="p")
    assert exc.value.status == 413
    assert "3000 bytes" in exc.value.message and "1000 bytes" in exc.value.message
    assert exc.value.param == "p"


def test_size_limit_is_exact():
    data = encode(noise((20, 20)), "PNG")
    for padding in range(3):  # lengths that need 0, 1 and 2 '=' characters
        blob = data + b"\x00" * padding  # trailing bytes after IEND are ignored by Pillow
        assert decode_data_url(data_url(blob), ImageLimits(max_bytes=len(blob))).source_bytes == len(blob)
        with pytest.raises(PayloadTooLargeError, match=f"{len(blob)} bytes"):
            decode_data_url(data_url(blob), ImageLimits(max_bytes=len(blob) - 1))


def test_prepare_image_checks_size_too():
    with pytest.raises(PayloadTooLargeError):
        prepare_image(b"\x00" * 11, ImageLimits(max_bytes=10))


# --- data URLs --------------------------------------------------------------------------

PNG_BYTES = encode(two_tone(), "PNG")
PNG_B64 = base64.b64encode(PNG_BYTES).decode()


@pytest.mark.parametrize("url", [
    f"data:image/png;base64,{PNG_B64}",
    f"data:image/PNG;base64,{PNG_B64}",
    f"data:image/jpeg;base64,{PNG_B64}",                 # wrong mime: the bytes decide
    f"data:image/x-whatever;base64,{PNG_B64}",
    f"data:application/octet-stream;base64,{PNG_B64}",
    f"data:;base64,{PNG_B64}",
    f"DATA:image/png;BASE64,{PNG_B64}",
    f"data:image/png;charset=utf-8;base64,{PNG_B64}",
    "data:image/png;base64," + "\n".join(PNG_B64[i:i + 76] for i in range(0, len(PNG_B64), 76)),
    "data:image/png;base64, " + " \r\n\t".join(PNG_B64[i:i + 10] for i in range(0, len(PNG_B64), 10)),
    f"  data:image/png;base64,{PNG_B64}\n",
])
def test_data_url_is_lenient(url):
    img = decode_data_url(url, LIMITS)
    assert (img.width, img.height, img.format) == (40, 20, "PNG")
    assert img.source_bytes == len(PNG_BYTES)


@pytest.mark.parametrize("url, message", [
    ("http://example.com/cat.png", "remote image URLs are not fetched: this server is offline"),
    ("https://example.com/cat.png", "remote image URLs are not fetched: this server is offline"),
    ("HTTPS://example.com/cat.png", "remote image URLs are not fetched"),
    ("file:///etc/passwd", "file: URLs are refused"),
    ("FILE:/tmp/x.png", "file: URLs are refused"),
    ("ftp://example.com/cat.png", "image URL scheme 'ftp:' is not supported"),
    ("s3://bucket/cat.png", "image URL scheme 's3:' is not supported"),
    (PNG_B64, "image URL is not a data: URL"),             # bare base64, no data: prefix
    ("", "image URL is not a data: URL"),
    ("data:image/png," + PNG_B64, "not base64-encoded"),
    ("data:image/png;base64", "no ','"),
    ("data:image/png;base64,!!!!", "not valid base64"),
    ("data:image/png;base64,a", "not valid base64"),
    ("data:image/png;base64,aGVsbG8", "not valid base64"),  # missing padding
    ("data:image/png;base64,aGVs\u00e9bG8=", "not valid base64"),  # non-ASCII
    ("data:image/png;base64,", "empty"),
    ("data:image/png;base64,aGVsbG8=", "not a recognised image"),  # valid base64 of "hello"
])
def test_data_url_refusals_say_why(url, message):
    with pytest.raises(ImageError) as exc:
        decode_data_url(url, LIMITS, param="messages[0].content[0].image_url.url")
    assert message in exc.value.message
    assert exc.value.param == "messages[0].content[0].image_url.url"
    assert exc.value.code == "invalid_image"
    assert "aGVsbG8" not in exc.value.message and PNG_B64[:40] not in exc.value.message


def test_remote_url_message_points_to_data_urls():
    with pytest.raises(ImageError, match="base64 data: URL"):
        decode_data_url("https://example.com/a.png", LIMITS)


def test_non_string_url_is_refused():
    with pytest.raises(ImageError, match="must be a string"):
        decode_data_url({"url": "x"}, LIMITS)  # type: ignore[arg-type]


# --- hashing and output shape -----------------------------------------------------------

def test_sha256_is_deterministic_and_distinguishes_images():
    a1 = decode_data_url(data_url(PNG_BYTES), LIMITS)
    a2 = prepare_image(PNG_BYTES, LIMITS)
    b = prepare_image(encode(Image.new("RGB", (40, 20), RED), "PNG"), LIMITS)
    assert a1.sha256 == a2.sha256 and len(a1.sha256) == 64
    assert a1.sha256 != b.sha256


def test_sha256_covers_dimensions():
    # Same pixel bytes, different shape: must not share a cache entry.
    tall = prepare_image(encode(Image.new("RGB", (2, 3), RED), "PNG"), LIMITS)
    wide = prepare_image(encode(Image.new("RGB", (3, 2), RED), "PNG"), LIMITS)
    assert tall.rgb == wide.rgb
    assert tall.sha256 != wide.sha256


def test_sha256_is_of_prepared_pixels_not_file_bytes():
    # The same picture in two lossless containers prepares to the same key.
    im = two_tone()
    assert prepare_image(encode(im, "PNG"), LIMITS).sha256 == prepare_image(encode(im, "BMP"), LIMITS).sha256


def test_repr_never_contains_pixels():
    img = prepare_image(PNG_BYTES, LIMITS)
    assert "rgb" not in repr(img) and len(repr(img)) < 300


# ---- ImageCache ---------------------------------------------------------------------------------

def test_image_cache_decodes_a_resent_image_once(monkeypatch):
    from vlserve.chat import images
    calls = []
    real = images.decode_data_url
    monkeypatch.setattr(images, "decode_data_url", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = images.ImageCache(10 * 1024 * 1024)
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (9, 8, 7)).save(buf, "PNG")
    url = data_url(buf.getvalue())
    first = cache.decode(url, ImageLimits())
    assert cache.decode(url, ImageLimits()) is first and len(calls) == 1
    small = ImageLimits(max_long_side=20, max_short_side=20)
    assert cache.decode(url, small).width == 20 and len(calls) == 2   # other limits: a miss
    assert len(cache) == 2


def test_image_cache_of_zero_bytes_keeps_nothing_and_errors_are_not_kept():
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    off = ImageCache(0)
    off.decode(data_url(buf.getvalue()), ImageLimits())
    assert len(off) == 0
    cache = ImageCache(1024 * 1024)
    for _ in range(2):
        with pytest.raises(ImageError):
            cache.decode(data_url(b"not an image"), ImageLimits())
    assert len(cache) == 0
