"""The image path under hostile bytes (Hypothesis).

The contract of `vlserve.chat.images` (decode_data_url, prepare_image, ImageCache.decode) for
any input: a PreparedImage within the limits, or an ImageError / InvalidRequestError /
PayloadTooLargeError (4xx APIErrors) — never another exception, never a hang. Through the
chat endpoint: never a 5xx, every error in the OpenAI shape.

Inputs: random bytes, random bytes behind real magic numbers, valid PNG / JPEG / WebP /
GIF / BMP files mutated (bit flips, truncation at every length class, overwritten and
spliced spans, corrupted PNG chunk lengths, width/height fields rewritten to huge, zero or
negative values, with the PNG CRC fixed so the header is believed), decompression bombs,
and random or mutated base64 and data: URL prefixes.

CI runs a fixed, derandomized sample in well under a minute; run longer (and randomized)
locally with e.g. `VLSERVE_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_images.py`.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
import struct
import threading
import time
import zlib
from dataclasses import replace

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st
from PIL import Image

from vlserve.web.app import create_app
from vlserve.errors import APIError, ImageError, InvalidRequestError, PayloadTooLargeError
from vlserve.chat.images import (ImageCache, ImageLimits, PreparedImage, decode_data_url,
                            limits_for_detail, prepare_image)

# Pillow warns about corrupt EXIF and big images on its way to the errors checked here.
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")]

FUZZ_EXAMPLES = int(os.environ.get("VLSERVE_FUZZ_EXAMPLES", "0"))
HARD_TIMEOUT_S = 20       # a single input taking this long is a hang: fail, do not stall CI
LIMITS = ImageLimits()    # the server's defaults
# For the generated examples: a header that lies within the default 50M-pixel limit costs up
# to ~2 s (Pillow allocates the whole bitmap before it finds the data truncated), too close
# to the 2 s deadline on a slow CI machine. A fifth of it keeps each example well under;
# the default limit's worst cases have their own tests (test_*_within_the_pixel_limit_*).
FUZZ_LIMITS = ImageLimits(max_pixels=10_000_000)
ALLOWED = (ImageError, InvalidRequestError, PayloadTooLargeError)
FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "BMP"}


def fuzz(default_examples: int):
    """Hypothesis settings: a fixed sample in CI, more and random with VLSERVE_FUZZ_EXAMPLES."""
    return settings(max_examples=FUZZ_EXAMPLES or default_examples, deadline=2000,
                    derandomize=not FUZZ_EXAMPLES, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much,
                                           HealthCheck.function_scoped_fixture])


@contextlib.contextmanager
def no_hang(seconds: float = HARD_TIMEOUT_S):
    """Interrupt an input that runs away (Pillow decodes in Python-driven chunks, so the
    alarm gets through) instead of letting the suite hang."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(*_):
        raise TimeoutError(f"hang: one input took over {seconds}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def note(outcome: str) -> None:
    """Tally outcomes for `pytest --hypothesis-show-statistics`."""
    if currently_in_test_context():
        event(outcome)


def check_contract(call, limits: ImageLimits = LIMITS, source: bytes | None = None):
    """Run `call()` under the contract; returns the image or the (allowed) error."""
    try:
        with no_hang():
            image = call()
    except APIError as exc:
        note(f"{type(exc).__name__}: {exc.message[:40]}")
        assert isinstance(exc, ALLOWED), f"{type(exc).__name__}: {exc.message}"
        assert 400 <= exc.status < 500, (exc.status, exc.message)
        assert isinstance(exc.message, str) and exc.message
        assert exc.to_dict()["error"]["message"] == exc.message
        return exc
    assert isinstance(image, PreparedImage)
    note(f"prepared {image.format}")
    assert image.format in FORMATS
    assert image.width >= 1 and image.height >= 1
    assert max(image.width, image.height) <= limits.max_long_side
    assert min(image.width, image.height) <= limits.max_short_side
    assert len(image.rgb) == image.width * image.height * 3
    assert len(image.sha256) == 64
    if source is not None:
        assert image.source_bytes == len(source)
    return image


# ---- the seed corpus: small valid files of every accepted format and common variants --------

def _picture(size=(24, 16), mode="RGB") -> Image.Image:
    im = Image.new("RGB", size)
    im.putdata([((x * 37) % 256, (y * 59) % 256, ((x + y) * 13) % 256)
                for y in range(size[1]) for x in range(size[0])])
    return im if mode == "RGB" else im.convert(mode)


def _save(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _exif(orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _seeds() -> dict[str, bytes]:
    pic = _picture()
    frames = [_picture(), _picture().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    palette = pic.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return {
        "png-rgb": _save(pic, "PNG"),
        "png-rgba": _save(_picture(mode="RGBA"), "PNG"),
        "png-palette-transparent": _save(palette, "PNG", transparency=0),
        "png-gray16": _save(Image.new("I;16", (20, 12), 40000), "PNG"),
        "png-exif": _save(pic, "PNG", exif=_exif()),
        "jpeg": _save(pic, "JPEG", quality=80),
        "jpeg-progressive-exif": _save(pic, "JPEG", progressive=True, exif=_exif(8)),
        "jpeg-cmyk": _save(pic.convert("CMYK"), "JPEG"),
        "jpeg-gray": _save(pic.convert("L"), "JPEG"),
        "webp-lossy": _save(pic, "WEBP", quality=60),
        "webp-lossless-alpha": _save(_picture(mode="RGBA"), "WEBP", lossless=True),
        "webp-exif": _save(pic, "WEBP", exif=_exif(3)),
        "webp-animated": _save(frames[0], "WEBP", save_all=True, append_images=frames[1:],
                               duration=50),
        "gif": _save(palette, "GIF"),
        "gif-animated-transparent": _save(frames[0].convert("P"), "GIF", save_all=True,
                                          append_images=[f.convert("P") for f in frames[1:]],
                                          transparency=0, duration=50, loop=0),
        "bmp-24": _save(pic, "BMP"),
        "bmp-8": _save(palette, "BMP"),
        "bmp-1": _save(pic.convert("1"), "BMP"),
    }


SEEDS = _seeds()
MAGICS = [b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"\xff\xd8\xff",
          b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", b"GIF87a", b"GIF89a", b"BM",
          b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"RIFF\xff\xff\xff\x7fWEBPVP8L",
          b"RIFF\x10\x00\x00\x00WEBPVP8X", b"II*\x00", b"%PDF-1.7", b"8BPS"]
INTERESTING = [0, 1, 2, 7, 8, 255, 256, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 100_000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]


def test_every_seed_is_accepted():
    """The corpus is valid to begin with, so its mutations start from real files."""
    for name, data in SEEDS.items():
        image = check_contract(lambda data=data: prepare_image(data, LIMITS), source=data)
        assert isinstance(image, PreparedImage), (name, image)


# ---- mutations --------------------------------------------------------------------------------

def _png_chunks(data: bytes) -> list[int]:
    """Offsets of each chunk's length field."""
    offsets, pos = [], 8
    while pos + 8 <= len(data):
        offsets.append(pos)
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        pos += 12 + length
    return offsets


def _fix_png_crc(data: bytearray, chunk: int) -> None:
    (length,) = struct.unpack(">I", data[chunk:chunk + 4])
    end = chunk + 8 + length
    if end + 4 <= len(data):
        data[end:end + 4] = struct.pack(">I", zlib.crc32(data[chunk + 4:end]))


def _riff_chunk(data: bytes, fourcc: bytes) -> int | None:
    pos = data.find(fourcc, 12)
    return None if pos < 0 else pos


def dimension_fields(data: bytes) -> list[tuple[int, str]]:
    """(offset, struct format) of the width/height fields a decoder believes first."""
    if data.startswith(b"\x89PNG"):
        return [(16, ">I"), (20, ">I")]
    if data.startswith(b"GIF"):
        fields = [(6, "<H"), (8, "<H")]
        flags = data[10] if len(data) > 10 else 0
        descriptor = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
        descriptor = data.find(b",", descriptor)
        if descriptor > 0:
            fields += [(descriptor + 1, "<H"), (descriptor + 3, "<H"),
                       (descriptor + 5, "<H"), (descriptor + 7, "<H")]
        return fields
    if data.startswith(b"BM"):
        return [(18, "<i"), (22, "<i"), (28, "<H"), (30, "<I"), (10, "<I")]
    if data.startswith(b"\xff\xd8"):
        for marker in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
            sof = data.find(marker)
            if sof > 0:
                return [(sof + 5, ">H"), (sof + 7, ">H"), (sof + 9, ">B")]
        return []
    if data.startswith(b"RIFF"):
        fields = [(4, "<I")]
        if (vp8x := _riff_chunk(data, b"VP8X")) is not None:
            fields += [(vp8x + 12, "<H"), (vp8x + 15, "<H"), (vp8x + 14, "<B")]
        if (vp8l := _riff_chunk(data, b"VP8L")) is not None:
            fields += [(vp8l + 9, "<I")]
        if (vp8 := _riff_chunk(data, b"VP8 ")) is not None:
            fields += [(vp8 + 14, "<H"), (vp8 + 16, "<H")]
        if (anmf := _riff_chunk(data, b"ANMF")) is not None:
            fields += [(anmf + 8, "<H"), (anmf + 14, "<H"), (anmf + 17, "<H")]
        return fields
    return []


@st.composite
def mutation(draw, data: bytes) -> bytes:
    out = bytearray(data)
    n = len(out)
    kind = draw(st.sampled_from(["flip", "truncate", "overwrite", "splice", "dims",
                                 "chunk-length", "append"]))
    near_header = st.integers(0, max(0, min(n, 64) - 1))
    anywhere = st.integers(0, max(0, n - 1))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.one_of(near_header, anywhere))
            if i < len(out):
                out[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":   # every length class: empty, inside the magic, the header, any
        cut = draw(st.one_of(st.integers(0, 16), st.integers(0, 64), anywhere,
                             st.sampled_from([max(0, n - 1), max(0, n - 4), max(0, n - 12)])))
        del out[cut:]
    elif kind == "overwrite":
        i = draw(st.one_of(near_header, anywhere))
        patch = draw(st.one_of(st.binary(min_size=1, max_size=16),
                               st.sampled_from([b"\x00" * 4, b"\xff" * 4, b"\x7f\xff\xff\xff",
                                                b"\x80\x00\x00\x00"])))
        out[i:i + len(patch)] = patch
    elif kind == "splice":
        i, j = sorted((draw(anywhere), draw(anywhere)))
        if draw(st.booleans()):
            del out[i:j]
        else:
            out[j:j] = out[i:j] * draw(st.integers(1, 4))
    elif kind == "dims":
        fields = dimension_fields(bytes(out))
        if fields:
            offset, fmt = draw(st.sampled_from(fields))
            size = struct.calcsize(fmt)
            value = draw(st.one_of(st.sampled_from(INTERESTING), st.integers(0, 2**32 - 1)))
            value %= 1 << (8 * size)
            if fmt[-1].islower() and value >= 1 << (8 * size - 1):
                value -= 1 << (8 * size)   # signed fields get negative values too
            if offset + size <= len(out):
                out[offset:offset + size] = struct.pack(fmt, value)
                if out.startswith(b"\x89PNG") and draw(st.booleans()):
                    _fix_png_crc(out, 8)   # a believable IHDR
    elif kind == "chunk-length":
        chunks = _png_chunks(bytes(out)) if out.startswith(b"\x89PNG") else []
        if out.startswith(b"RIFF"):
            chunks = [i for i in (_riff_chunk(bytes(out), c)
                                  for c in (b"VP8 ", b"VP8L", b"VP8X", b"ANMF", b"EXIF",
                                            b"ALPH"))
                      if i is not None]
        if chunks:
            at = draw(st.sampled_from(chunks))
            value = draw(st.one_of(st.sampled_from(INTERESTING), st.integers(0, 2**32 - 1)))
            fmt = ">I" if out.startswith(b"\x89PNG") else "<I"
            field = at if fmt == ">I" else at + 4
            if field + 4 <= len(out):
                out[field:field + 4] = struct.pack(fmt, value % 2**32)
    else:  # append: trailing garbage, or a second file
        out += draw(st.one_of(st.binary(max_size=64), st.sampled_from(list(SEEDS.values()))))
    return bytes(out)


@st.composite
def mutated_image(draw) -> bytes:
    data = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
    for _ in range(draw(st.integers(1, 3))):
        data = draw(mutation(data))
    return data


random_bytes = st.one_of(
    st.binary(max_size=512),
    st.builds(lambda magic, rest: magic + rest, st.sampled_from(MAGICS),
              st.binary(max_size=512)),
)
hostile_bytes = st.one_of(random_bytes, mutated_image(), mutated_image())


# ---- prepare_image ------------------------------------------------------------------------

@fuzz(500)
@given(data=random_bytes)
def test_prepare_image_random_bytes(data):
    check_contract(lambda: prepare_image(data, LIMITS), source=data)


@fuzz(3000)
@given(data=mutated_image())
def test_prepare_image_mutated_files(data):
    check_contract(lambda: prepare_image(data, FUZZ_LIMITS), FUZZ_LIMITS, source=data)


@fuzz(1000)
@given(data=mutated_image(), detail=st.sampled_from(["low", "auto", "high"]),
       max_pixels=st.sampled_from([LIMITS.max_pixels, 1_000, 100]),
       max_bytes=st.sampled_from([LIMITS.max_bytes, 500]))
def test_prepare_image_mutated_under_tighter_limits(data, detail, max_pixels, max_bytes):
    limits = limits_for_detail(ImageLimits(max_pixels=max_pixels, max_bytes=max_bytes), detail)
    result = check_contract(lambda: prepare_image(data, limits), limits, source=data)
    if len(data) > max_bytes:
        assert isinstance(result, PayloadTooLargeError)


# ---- decompression bombs and lying headers: refused from the header, fast -------------------

def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int, height: int, idat: bytes | None = None, *, extra: bytes = b"",
        color_type: int = 2) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64) if idat is None else idat
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


def _zeros_compressed(n: int, chunk: int = 1 << 22) -> bytes:
    z, parts = zlib.compressobj(9), []
    block = b"\x00" * chunk
    for _ in range(n // chunk):
        parts.append(z.compress(block))
    parts.append(z.compress(b"\x00" * (n % chunk)))
    parts.append(z.flush())
    return b"".join(parts)


def gif(screen: tuple[int, int], frame: tuple[int, int] = (1, 1)) -> bytes:
    header = b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, *frame, 0)
    return header + descriptor + b"\x02\x02\x44\x01\x00;"


def bmp(width: int, height: int, bpp: int = 24, pixels: bytes = b"\x00" * 16) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bpp, 0, len(pixels), 2835, 2835,
                       0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + len(pixels), 0, 0, 54) + info + pixels


def jpeg_with_size(width: int, height: int) -> bytes:
    data = bytearray(SEEDS["jpeg"])
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp_vp8x(width: int, height: int) -> bytes:
    data = bytearray(SEEDS["webp-exif"])
    at = data.find(b"VP8X") + 8
    data[at + 4:at + 10] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


BOMBS = {   # built when their test runs: some take a moment to compress
    "png-ihdr-100000x100000": lambda: png(100_000, 100_000),
    "png-ihdr-2^31-1-square": lambda: png(2**31 - 1, 2**31 - 1),
    "png-ihdr-zero-width": lambda: png(0, 10),
    "png-ihdr-1x50000001": lambda: png(1, 50_000_001),
    "png-8000x8000-zeros": lambda: png(8000, 8000, _zeros_compressed((8000 * 3 + 1) * 8000)),
    "png-ztxt-bomb": lambda: png(4, 4, extra=_chunk(b"zTXt", b"k\x00\x00"
                                                    + _zeros_compressed(64 << 20))),
    "png-iccp-bomb": lambda: png(4, 4, extra=_chunk(b"iCCP", b"p\x00\x00"
                                                    + _zeros_compressed(64 << 20))),
    "gif-screen-65535x65535": lambda: gif((65535, 65535)),
    "gif-frame-65535x65535-in-1x1": lambda: gif((1, 1), (65535, 65535)),
    "bmp-2^31-1-wide": lambda: bmp(2**31 - 1, 1),
    "bmp-negative-height-huge": lambda: bmp(100_000, -100_000),
    "bmp-zero": lambda: bmp(0, 0),
    "jpeg-sof-65535x65535": lambda: jpeg_with_size(65535, 65535),
    "jpeg-sof-0x0": lambda: jpeg_with_size(0, 0),
    "webp-vp8x-16384x16384": lambda: webp_vp8x(16384, 16384),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bombs_and_lying_headers_are_refused_quickly(name):
    """Over the pixel limit (or no pixels at all): refused from the header, before any
    pixel is decoded; text and ICC chunks that inflate to 64 MB are refused too."""
    data = BOMBS[name]()
    t0 = time.monotonic()
    result = check_contract(lambda: prepare_image(data, LIMITS), source=data)
    elapsed = time.monotonic() - t0
    assert isinstance(result, APIError), f"{name} was accepted: {result}"
    assert elapsed < 2, f"{name} took {elapsed:.2f}s"


WITHIN_LIMIT = {   # 49M pixels: under the default 50M limit, so the decoder runs
    "png-7000x7000-zeros": lambda: png(7000, 7000, _zeros_compressed((7000 * 3 + 1) * 7000)),
    "png-7000x7000-no-data": lambda: png(7000, 7000),
    "png-24x2041666-no-data": lambda: png(24, 2_041_666),
    "gif-7000x7000-one-pixel-frame": lambda: gif((7000, 7000)),
    "bmp-7000x7000-no-data": lambda: bmp(7000, 7000),
    "jpeg-sof-7000x7000": lambda: jpeg_with_size(7000, 7000),
    "webp-vp8x-7000x7000": lambda: webp_vp8x(7000, 7000),
}


@pytest.mark.parametrize("name", sorted(WITHIN_LIMIT))
def test_lying_headers_within_the_pixel_limit_are_bounded(name):
    """A header that claims the most the limit allows, with or without the data (a real
    bomb: 147 MB of pixels from 140 kB): decoded and downscaled, or refused, in bounded
    time (the decoder may allocate the whole bitmap first)."""
    data = WITHIN_LIMIT[name]()
    t0 = time.monotonic()
    check_contract(lambda: prepare_image(data, LIMITS), source=data)
    assert time.monotonic() - t0 < 10


# ---- base64 and data: URLs ----------------------------------------------------------------

PREFIXES = ["data:image/png;base64,", "data:image/jpeg;base64,", "data:;base64,",
            "DATA:IMAGE/PNG;BASE64,", "data:image/png;charset=utf-8;base64,",
            " \n data:image/webp;base64,", "data:image/png; base64 ,", "data:image/png,",
            "data:base64,", "data:image/png;base64", "data:,", "data:", "", ",",
            "data:image/svg+xml;base64,", "http://example.com/x.png?", "https://[::1]/",
            "file:///etc/passwd#", "javascript:", "blob:", "ftp://x/", "c:\\x.png",
            "data:image/png;base64,data:image/png;base64,"]


def _wrapped(text: str, width: int) -> str:
    return "\n".join(text[i:i + width] for i in range(0, len(text), width))


@st.composite
def base64_payload(draw) -> str:
    raw = draw(st.one_of(mutated_image(), st.sampled_from(list(SEEDS.values())),
                         st.binary(max_size=256)))
    text = base64.b64encode(raw).decode()
    how = draw(st.sampled_from(["plain", "wrapped", "spaces", "unpadded", "overpadded",
                                "urlsafe", "garbage", "truncated", "non-ascii"]))
    if how == "wrapped":
        text = _wrapped(text, draw(st.sampled_from([1, 4, 64, 76])))
    elif how == "spaces":
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.sampled_from([" ", "\t", "\r\n", "\x0b", "\u00a0"])) + text[i:]
    elif how == "unpadded":
        text = text.rstrip("=")
    elif how == "overpadded":
        text += "=" * draw(st.integers(1, 4))
    elif how == "urlsafe":
        text = base64.urlsafe_b64encode(raw).decode()
    elif how == "garbage":
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.text(min_size=1, max_size=4)) + text[i:]
    elif how == "truncated":
        text = text[:draw(st.integers(0, len(text)))]
    elif how == "non-ascii":
        text += draw(st.text(st.characters(min_codepoint=128), min_size=1, max_size=4))
    return text


data_urls = st.one_of(
    st.text(max_size=300),
    st.builds(str.__add__, st.sampled_from(PREFIXES), base64_payload()),
    st.builds(lambda p, t: p + t, st.sampled_from(PREFIXES), st.text(max_size=200)),
)


@fuzz(1500)
@given(url=data_urls)
@example(url="data:image/png;base64," + "A" * 4 + "=" * 100)
@example(url="data:image/png;base64,====")
@example(url="data:image/png;base64,\u0660\u0661")     # non-ASCII digits
def test_decode_data_url_hostile_urls(url):
    check_contract(lambda: decode_data_url(url, FUZZ_LIMITS, param="messages"), FUZZ_LIMITS)


@fuzz(300)
@given(url=data_urls, max_bytes=st.sampled_from([0, 1, 100, 10_000]))
def test_decode_data_url_size_limit_before_decoding(url, max_bytes):
    limits = replace(FUZZ_LIMITS, max_bytes=max_bytes)
    check_contract(lambda: decode_data_url(url, limits), limits)


def test_oversized_base64_is_refused_without_decoding():
    """A 30 MB payload over a 20 MB limit: 413 from its length alone."""
    url = "data:image/png;base64," + "A" * (30 * 1024 * 1024)
    t0 = time.monotonic()
    result = check_contract(lambda: decode_data_url(url, LIMITS))
    assert isinstance(result, PayloadTooLargeError)
    assert time.monotonic() - t0 < 2


@fuzz(300)
@given(url=data_urls)
def test_image_cache_decode_hostile_urls(url):
    """What the app calls: the cache in front of decode_data_url."""
    cache = ImageCache(1 << 20)
    check_contract(lambda: cache.decode(url, FUZZ_LIMITS, param="messages"), FUZZ_LIMITS)


@pytest.mark.parametrize("url", ["\ud800", "data:image/png;base64,\udcff",
                                 "data:image/png\ud800;base64,AAAA"])
def test_image_cache_decode_lone_surrogates(url):
    """JSON can carry lone surrogates ("\\ud800"); json.loads keeps them in the str."""
    check_contract(lambda: ImageCache(1 << 20).decode(url, LIMITS, param="messages"))


# ---- through the chat endpoint ------------------------------------------------------------

@pytest.fixture(scope="module")
def fuzz_client(engine, settings):
    app = create_app(settings.replace(images=FUZZ_LIMITS), engine=engine)
    worker = app.extensions["vlserve"]["worker"]
    assert worker.wait_ready(60), worker.reason
    yield app.test_client()
    worker.stop()


def _error_validator():
    from vlserve.web import openapi
    doc = openapi.build_document()
    return jsonschema_rs.Draft202012Validator({"$ref": "#/components/schemas/Error",
                                               "components": doc["components"]})


ERROR_SCHEMA = _error_validator()


def post_image(client, image_url) -> None:
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "?"}, {"type": "image_url", "image_url": image_url}]}],
        "max_tokens": 1, "temperature": 0}
    with no_hang():
        response = client.post("/v1/chat/completions", json=body)
    payload = response.get_json()
    note(f"status {response.status_code}")
    assert response.status_code < 500, payload
    assert response.status_code in (200, 400, 413), payload
    if response.status_code == 200:
        assert payload["object"] == "chat.completion"
    else:
        ERROR_SCHEMA.validate(payload)
        assert payload["error"]["param"] == "messages"


@fuzz(300)
@given(data=hostile_bytes, detail=st.sampled_from([None, "low", "auto", "high"]))
def test_chat_with_hostile_image_bytes(fuzz_client, data, detail):
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    post_image(fuzz_client, {"url": url, **({"detail": detail} if detail else {})})


@fuzz(200)
@given(url=data_urls)
def test_chat_with_hostile_data_urls(fuzz_client, url):
    post_image(fuzz_client, url)
