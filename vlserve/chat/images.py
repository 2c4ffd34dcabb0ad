"""Untrusted image bytes from a client -> a bounded RGB bitmap for the vision encoder.

This is the only module that touches raw image bytes. Every failure becomes an
`ImageError` (400) or a `PayloadTooLargeError` (413) whose message says why; messages
carry sizes, dimensions and format names only, never image bytes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import re
import struct
import threading
import time
from dataclasses import dataclass, field, replace

import cachetools
import numpy as np
from PIL import Image, ImageOps

from ..errors import ImageError, PayloadTooLargeError
from .remote import RemotePolicy, fetch_image


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024      # decoded (base64-decoded) file size cap
    max_pixels: int = 50_000_000           # width*height cap, checked from the header BEFORE full decode
    max_long_side: int = 1024              # resize so the long side <= this
    max_short_side: int = 768              # and the short side <= this, keeping aspect ratio; never upscale
    max_images: int = 32                   # per request (history included: clients resend it)


@dataclass(frozen=True)
class PreparedImage:
    rgb: bytes = field(repr=False)  # raw RGB888, row-major; kept out of repr so logging this never dumps pixels
    width: int
    height: int
    sha256: str         # hex digest of dims + RGB bytes: the prefix cache key
    source_bytes: int   # size of the decoded upload
    format: str         # "PNG", "JPEG", ...


# Only these Pillow decoders ever see client bytes: every other plugin (TIFF, PSD, EPS, ...)
# is extra attack surface for formats a chat client has no reason to send.
_OPEN_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_SUPPORTED = "PNG, JPEG, WebP, GIF, BMP"
# Phones save multi-picture JPEGs (MPO); Pillow reads the first picture as a plain JPEG.
_FORMAT_ALIASES = {"MPO": "JPEG"}

# Magic numbers used only to name a refused format in the error message; no decoder runs.
_SIGNATURES = (
    (0, b"II*\x00", "TIFF"), (0, b"MM\x00*", "TIFF"),
    (0, b"\x00\x00\x01\x00", "ICO"), (0, b"\x00\x00\x02\x00", "CUR"),
    (0, b"%PDF", "PDF"), (0, b"8BPS", "PSD"), (0, b"%!PS", "PostScript"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (0, b"\xff\x0a", "JPEG XL"), (0, b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (4, b"ftypavif", "AVIF"), (4, b"ftypheic", "HEIC"), (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIF"), (0, b"qoif", "QOI"), (0, b"DDS ", "DDS"),
)

# What Pillow raises on malformed input: OSError covers "image file is truncated" and
# UnidentifiedImageError; the rest come from header and chunk parsers on corrupt data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError,
                  EOFError, ArithmeticError, struct.error)
# Pillow's own bomb guard fires inside Image.open for images far beyond any sane limit;
# the warning is caught too because it is raised when warnings are turned into errors.
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)

# Modes with an alpha band; palette and RGB/L images may instead carry a transparent colour in info.
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_SEND_DATA_URL = "send the image as a base64 data: URL (data:image/png;base64,...)"
# A remote image can change behind its URL; a prepared one is reused this long (seconds),
# which covers a client resending the conversation's images turn after turn, retries and
# regenerations, without serving a stale picture for long.
REMOTE_TTL = 60.0


# OpenAI's detail "low" is a 512x512 image; for Qwen-VL (a token per 32x32 pixels) that is
# at most 256 tokens, plenty for chat. "auto" and "high" use the server's limits (raise
# --image-max-side for OCR and grounding, which want 1024+ tokens).
LOW_DETAIL_SIDE = 512


def limits_for_detail(limits: ImageLimits, detail: str) -> ImageLimits:
    if detail != "low":
        return limits
    return replace(limits, max_long_side=min(limits.max_long_side, LOW_DETAIL_SIDE),
                   max_short_side=min(limits.max_short_side, LOW_DETAIL_SIDE))


class ImageCache:
    """Prepared images by (hash of the data URL, limits). Chat clients resend every image of
    the conversation on every turn; decoding and resizing a 12-megapixel photo again costs
    about 0.2 s of CPU here, more than the rest of a follow-up's preparation. Images fetched
    from remote URLs (when a `RemotePolicy` allows them) are kept only `REMOTE_TTL` seconds."""

    def __init__(self, max_bytes: int):
        # Values are (expiry on the monotonic clock, image); uploads never expire.
        self._lru = cachetools.LRUCache(max(1, max_bytes), getsizeof=lambda e: len(e[1].rgb))
        self._lock = threading.Lock()  # shared by the HTTP threads

    def decode(self, url: str, limits: ImageLimits, *, param: str | None = None,
               remote: RemotePolicy | None = None) -> PreparedImage:
        fetch = remote is not None and remote.enabled and _is_http(url)
        # surrogatepass: a lone surrogate from JSON ("\ud800") is refused below, not a 500 here
        key = (hashlib.sha256(url.encode("utf-8", "surrogatepass")).digest(), limits, fetch)
        with self._lock:
            expires, image = self._lru.get(key, (0.0, None))
        if image is None or expires <= time.monotonic():
            if fetch:
                if remote.max_bytes > limits.max_bytes:
                    remote = replace(remote, max_bytes=limits.max_bytes)
                image = prepare_image(fetch_image(url, remote, param=param), limits, param=param)
                expires = time.monotonic() + REMOTE_TTL
            else:
                image = decode_data_url(url, limits, param=param)
                expires = math.inf
            if len(image.rgb) <= self._lru.maxsize and expires > time.monotonic():
                with self._lock:
                    self._lru[key] = (expires, image)
        return image

    def __len__(self) -> int:
        return len(self._lru)


def _is_http(url) -> bool:
    match = _SCHEME.match(url.strip()) if isinstance(url, str) else None
    return bool(match) and match.group(1).lower() in ("http", "https")


def decode_data_url(url: str, limits: ImageLimits, *, param: str | None = None) -> PreparedImage:
    """Decode a `data:...;base64,` URL from a request into a prepared image."""
    # MIME-wrapped base64 has line breaks; clients also pad with spaces.
    payload = "".join(_data_url_payload(url, param).split())
    _check_bytes(_decoded_length(payload), limits, param)
    try:
        data = base64.b64decode(payload, validate=True)
    except ValueError:  # binascii.Error, or non-ASCII characters
        raise ImageError("image data URL is not valid base64", param=param) from None
    return prepare_image(data, limits, param=param)


def prepare_image(data: bytes, limits: ImageLimits, *, param: str | None = None) -> PreparedImage:
    """Validate, decode, orient, flatten to RGB and downscale one uploaded image."""
    _check_bytes(len(data), limits, param)
    if not data:
        raise ImageError("image data is empty", param=param)
    try:
        rgb, width, height, fmt = _decode(data, limits, param)
    except Image.UnidentifiedImageError:
        raise ImageError(_unrecognised_message(data), param=param) from None
    except _BOMB_ERRORS:
        raise ImageError(f"image too large: exceeds {limits.max_pixels} pixels", param=param) from None
    except _DECODE_ERRORS:
        # Pillow's message may quote bytes from the file, so it is not passed on.
        raise ImageError("image data is corrupt or truncated", param=param) from None
    digest = hashlib.sha256(b"%dx%d:" % (width, height))
    digest.update(rgb)
    return PreparedImage(rgb=rgb, width=width, height=height, sha256=digest.hexdigest(),
                         source_bytes=len(data), format=fmt)


def _data_url_payload(url: str, param: str | None) -> str:
    """The base64 text of a data: URL; every other kind of URL is refused with the reason."""
    if not isinstance(url, str):
        raise ImageError("image URL must be a string", param=param)
    url = url.strip()
    match = _SCHEME.match(url)
    scheme = match.group(1).lower() if match else None
    if scheme in ("http", "https"):
        raise ImageError("remote image URLs are not fetched: this server is offline; "
                         + _SEND_DATA_URL + ", or ask its operator to allow the image's host "
                         "with --remote-image-host", param=param)
    if scheme == "file":
        raise ImageError("file: URLs are refused: this server does not read local files; "
                         + _SEND_DATA_URL, param=param)
    if scheme != "data":
        what = f"image URL scheme '{scheme[:32]}:' is not supported" if scheme else "image URL is not a data: URL"
        raise ImageError(f"{what}; {_SEND_DATA_URL}", param=param)
    meta, comma, payload = url[len("data:"):].partition(",")
    if not comma:
        raise ImageError("malformed data: URL: no ',' before the payload", param=param)
    # The media type is ignored on purpose: the bytes decide the format.
    if "base64" not in (part.strip().lower() for part in meta.split(";")):
        raise ImageError("image data URL is not base64-encoded; " + _SEND_DATA_URL, param=param)
    return payload


def _decoded_length(payload: str) -> int:
    """Exact decoded size of valid base64, known without decoding it."""
    return len(payload) * 3 // 4 - payload[-2:].count("=")


def _check_bytes(size: int, limits: ImageLimits, param: str | None) -> None:
    if size > limits.max_bytes:
        raise PayloadTooLargeError(
            f"image too large: {size} bytes (decoded) exceeds the limit of {limits.max_bytes} bytes",
            param=param)


def _check_pixels(size: tuple[int, int], limits: ImageLimits, param: str | None) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels: {width}x{height}", param=param)
    if width * height > limits.max_pixels:
        raise ImageError(f"image too large: {width}x{height} pixels exceeds {limits.max_pixels}",
                         param=param)


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)


def _decode(data: bytes, limits: ImageLimits, param: str | None) -> tuple[bytes, int, int, str]:
    """Decode to (rgb, width, height, format); Pillow exceptions are left to the caller."""
    with _open(data) as probe:
        fmt = _FORMAT_ALIASES.get(probe.format, probe.format)
        _check_pixels(probe.size, limits, param)  # from the header, before any pixel is decoded
        probe.verify()  # structural check (PNG CRCs); it leaves the image unusable, hence the reopen
    with _open(data) as im:  # a GIF or animated WebP opens on its first frame
        target = _fit_size(im.size, limits)
        # JPEG can decode at 1/2..1/8 scale for free; keep 2x headroom for LANCZOS quality.
        im.draft(None, (target[0] * 2, target[1] * 2))
        im.load()
        stored_size = im.size
        ImageOps.exif_transpose(im, in_place=True)
        if im.size != stored_size:
            target = target[::-1]  # a 90-degree turn swaps the sides; the fit is symmetric
        rgb = _resize(_to_rgb(im), target)
        return rgb.tobytes(), rgb.width, rgb.height, fmt


def _fit_size(size: tuple[int, int], limits: ImageLimits) -> tuple[int, int]:
    """Largest size within both side limits that keeps the aspect ratio; never upscales."""
    width, height = size
    scale = min(1.0, limits.max_long_side / max(width, height),
                limits.max_short_side / min(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode.startswith("I"):
        # 16-bit samples ("I;16", or "I" from older Pillow): Pillow's convert clips them at
        # 255, which turns most of the picture white, so scale to 8 bits instead.
        im = Image.fromarray((np.asarray(im).clip(0, 65535) >> 8).astype(np.uint8))
    if im.mode in _ALPHA_MODES or "transparency" in im.info:  # has_transparency_data needs Pillow 10.1
        # The encoder sees no alpha; transparent areas read as white, as on a web page.
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def _resize(im: Image.Image, target: tuple[int, int]) -> Image.Image:
    return im if im.size == target else im.resize(target, Image.Resampling.LANCZOS)


def _unrecognised_message(data: bytes) -> str:
    for offset, magic, name in _SIGNATURES:
        if data[offset:offset + len(magic)] == magic:
            return f"unsupported image format {name}; supported formats: {_SUPPORTED}"
    return f"image data is not a recognised image; supported formats: {_SUPPORTED}"
