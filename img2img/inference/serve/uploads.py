"""What a translate request carries: its fields, checked one by one, and its image, decoded the way
`img2img translate` reads files and encoded the way it writes them.

Every problem is an `ApiError`: an HTTP status, a short code, the field it concerns and a message
that says what to send instead. Nothing here knows about HTTP frameworks.
"""
from __future__ import annotations

import io
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from img2img.data.images import ImageReadError, decode_image_bytes, encode_image, image_bit_depth
from img2img.errors import did_you_mean
from img2img.inference.serve.models import ServedModel, TileOptions
from img2img.inference.tiling import TILE_NORMS, tile_plan, tile_spans

FIELDS = ("direction", "format", "tile", "overlap", "tile_norm", "keep_depth")
IMAGE_FIELD = "image"
MAX_TILE = 2048
MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp", "tif": "image/tiff", "bmp": "image/bmp"}
FORMAT_NAMES = {"png": "png", "jpg": "jpg", "jpeg": "jpg", "webp": "webp", "tif": "tif", "tiff": "tif", "bmp": "bmp"}
_PIL_FORMATS = {"PNG": "png", "JPEG": "jpg", "MPO": "jpg", "WEBP": "webp", "TIFF": "tif", "BMP": "bmp"}
READ_FORMATS = "PNG, JPEG, WebP, TIFF or BMP"  # what `img2img translate` reads, and so the server
FORMAT_SIDE_LIMITS = {"webp": 16383, "jpg": 65535}  # the most pixels per side each format can hold
_DIGITS = re.compile(r"[0-9]+")
# a body that is a URL or a file path typed where the image's bytes belong (`--data-binary "http://..."`)
_REFERENCE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://\S+|[~./\\]\S*|[A-Za-z]:[\\/]\S*|\S+\.[A-Za-z0-9]{2,5})")


class ApiError(Exception):
    """A request the server refuses: `status` (4xx, or 503 when busy), a `code`, the `field` at fault."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None,
                 headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "code": self.code, "field": self.field, "message": self.message}}


@dataclass(frozen=True)
class TranslateOptions:
    direction: str
    format: str | None  # None: the upload's own format, as translate keeps the input's
    tiling: TileOptions
    keep_depth: bool


def _suggest(name: str, known: tuple[str, ...]) -> str:
    hint = did_you_mean(name, known)
    return f"{hint} " if hint else ""


def _whole(field: str, raw: str, low: int, high: int | None = None) -> int:
    text = raw.strip()
    if not _DIGITS.fullmatch(text):  # ASCII digits only: int() would also take '٣٢' or '3_2'
        raise ApiError(400, "invalid_field", f"{field}={raw!r} is not a whole number (write it with the digits "
                       "0-9)", field=field)
    value = int(text)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ApiError(400, "invalid_field", f"{field}={value}: must be {bound}", field=field)
    return value


def _boolean(field: str, raw: str) -> bool:
    text = raw.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ApiError(400, "invalid_field", f"{field}={raw!r}: use true or false", field=field)


def parse_options(values: Mapping[str, str], model: ServedModel, defaults: TileOptions) -> TranslateOptions:
    """The request's fields (query string and multipart form together) for `model`."""
    for name in values:
        if name not in FIELDS:
            raise ApiError(400, "unknown_field", f"unknown field '{name}'; {_suggest(name, FIELDS)}the fields are "
                           f"{', '.join(FIELDS)} (and the file field '{IMAGE_FIELD}' in a multipart upload)",
                           field=name)
    direction = values.get("direction") or model.default_direction
    if direction not in model.directions:
        hint = did_you_mean(direction, model.directions)
        raise ApiError(400, "unknown_direction", f"direction={direction!r}: model '{model.name}' translates "
                       f"{', '.join(model.directions)}" + (f"; {hint}" if hint else ""), field="direction")
    fmt = values.get("format")
    if fmt is not None:
        key = fmt.strip().lower().lstrip(".")
        if key not in FORMAT_NAMES:
            raise ApiError(400, "invalid_field", f"format={fmt!r}: use png, jpg, webp, tif or bmp", field="format")
        fmt = FORMAT_NAMES[key]
    tile = _whole("tile", values["tile"], 16, MAX_TILE) if values.get("tile") else defaults.tile
    overlap = _whole("overlap", values["overlap"], 0) if values.get("overlap") else defaults.overlap
    if tile is not None and overlap is not None and overlap >= tile:
        field = "overlap" if values.get("overlap") else "tile"
        raise ApiError(400, "invalid_field", f"overlap={overlap} must be smaller than tile={tile} "
                       f"(try overlap={tile // 4})", field=field)
    tile_norm = values.get("tile_norm") or defaults.tile_norm
    if tile_norm not in TILE_NORMS:
        raise ApiError(400, "invalid_field", f"tile_norm={tile_norm!r}: use auto (chosen per image), global "
                       "(statistics of the whole image) or local (each tile its own)", field="tile_norm")
    keep_depth = _boolean("keep_depth", values["keep_depth"]) if "keep_depth" in values else False
    tiling = TileOptions(tile=tile, overlap=overlap, tile_norm=tile_norm, tile_above=defaults.tile_above)
    return TranslateOptions(direction=direction, format=fmt, tiling=tiling, keep_depth=keep_depth)


@dataclass
class Upload:
    """A decoded upload: the model's input array, its size, the format to answer in and bit depth."""

    array: np.ndarray
    width: int
    height: int
    format: str
    bit_depth: int


@dataclass(frozen=True)
class _Header:
    format: str | None
    width: int
    height: int
    frames: int


def _header(data: bytes) -> _Header | None:
    """What the image header alone says, or None (decoding then says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return _Header(im.format, im.width, im.height, int(getattr(im, "n_frames", 1) or 1))
    except Exception:  # whatever the header's problem is, the full decode below reports it
        return None


def _reference(data: bytes) -> str | None:
    """The text of a body that is a URL or a file path rather than an image's bytes, else None."""
    if len(data) > 2048:
        return None
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    return text if text and "\n" not in text and _REFERENCE.fullmatch(text) else None


def check_format_limit(fmt: str, width: int, height: int, requested: bool) -> None:
    """Refuse, before any computing, an answer its format cannot hold (WebP and JPEG have a largest side)."""
    side = FORMAT_SIDE_LIMITS.get(fmt)
    if side is not None and max(width, height) > side:
        how = f"format={fmt}" if requested else f"the upload's format ({fmt}, the default answer format)"
        raise ApiError(400, "format_limit", f"{how} holds at most {side} pixels per side and the image is "
                       f"{width}x{height}; ask for format=png (or tif)", field="format")


def tile_count(height: int, width: int, tile: int, overlap: int, multiple: int) -> int:
    return len(tile_spans(height, tile, overlap, multiple)) * len(tile_spans(width, tile, overlap, multiple))


def check_tile_budget(fields: Mapping[str, str], options: TranslateOptions, height: int, width: int, multiple: int,
                      max_tiles: int | None) -> None:
    """Refuse tiling a request asks for (`tile`, `overlap`) that would take more than `max_tiles` tiles.

    The server's own defaults (--tile, --overlap, --tile-above) are its operator's choice and not bounded.
    """
    asked = [name for name in ("tile", "overlap") if fields.get(name)]
    if max_tiles is None or not asked:
        return
    tiling = options.tiling
    plan = tile_plan(height, width, tile=tiling.tile, overlap=tiling.overlap, max_pixels=tiling.tile_above,
                     multiple=multiple)
    if plan is None:
        return
    count = tile_count(height, width, *plan, multiple)
    if count <= max_tiles:
        return
    overlap = plan[1]
    better = next((t for t in range(plan[0] + 16 - plan[0] % 16, 4097, 16)
                   if tile_count(height, width, t, min(overlap, t // 4), multiple) <= max_tiles), None)
    hint = f"use tile={better} overlap={min(overlap, better // 4)}" if better else "send a smaller image"
    raise ApiError(400, "too_many_tiles", f"{' and '.join(f'{n}={fields[n]}' for n in asked)} on this "
                   f"{width}x{height} image makes {count} tiles, more than this server computes for one request "
                   f"({max_tiles}, its --max-tiles); {hint}, or leave tiling to the server", field=asked[0])


def decode_upload(data: bytes, channels: int, options: TranslateOptions, max_pixels: int | None) -> Upload:
    """Check the header (format, frames, pixel count, the answer's format), then decode as `img2img
    translate` reads a file."""
    if not data:
        raise ApiError(400, "empty_image", f"the '{IMAGE_FIELD}' is empty (0 bytes); send the image file's bytes "
                       "as the request body or as the multipart field 'image'", field=IMAGE_FIELD)
    header = _header(data)
    if header is None:
        reference = _reference(data)
        if reference is not None:
            shown = reference if len(reference) <= 80 else reference[:77] + "..."
            raise ApiError(400, "invalid_field", f"the {IMAGE_FIELD} is the text {shown!r}, not an image: the server "
                           "never reads files or URLs for a client; send the image's bytes (curl --data-binary "
                           "@horse.jpg, or -F image=@horse.jpg)", field=IMAGE_FIELD)
    else:
        if header.format not in _PIL_FORMATS:
            raise ApiError(415, "unsupported_format", f"{IMAGE_FIELD}: a {header.format or 'unknown'} image; this "
                           f"server reads {READ_FORMATS}, as img2img translate does (convert it to PNG)",
                           field=IMAGE_FIELD)
        if header.frames > 1 and header.format != "MPO":  # MPO: a camera's JPEG with previews, its first is the photo
            raise ApiError(415, "animated_image", f"{IMAGE_FIELD}: an image of {header.frames} frames (an animation "
                           "or a multi-page file); this server translates still images: send one frame as PNG",
                           field=IMAGE_FIELD)
        if max_pixels is not None and header.width * header.height > max_pixels:
            w, h = header.width, header.height
            raise ApiError(413, "too_many_pixels", f"the image is {w}x{h} = {w * h} pixels, more than this server "
                           f"accepts ({max_pixels}, its --max-pixels); send a smaller image", field=IMAGE_FIELD)
        fmt = options.format or _PIL_FORMATS[header.format]
        check_format_limit(fmt, header.width, header.height, options.format is not None)
    try:
        array = decode_image_bytes(data, channels, name=IMAGE_FIELD)
    except ImageReadError as exc:
        reason = exc.reason
        if "more than the limit" in reason:
            raise ApiError(413, "too_many_pixels", f"{IMAGE_FIELD}: {reason.split(' (')[0]}, a decompression bomb "
                           "guard; send a smaller image", field=IMAGE_FIELD) from None
        if "not an image Pillow can read" in reason:
            raise ApiError(415, "not_an_image", f"{IMAGE_FIELD}: not an image (send {READ_FORMATS} bytes)",
                           field=IMAGE_FIELD) from None
        raise ApiError(400, "unreadable_image", f"{IMAGE_FIELD}: {reason}", field=IMAGE_FIELD) from None
    height, width = array.shape[:2]
    if max_pixels is not None and width * height > max_pixels:  # a header the probe could not read
        raise ApiError(413, "too_many_pixels", f"the image is {width}x{height} = {width * height} pixels, more than "
                       f"this server accepts ({max_pixels}, its --max-pixels)", field=IMAGE_FIELD)
    fmt = options.format or _PIL_FORMATS.get(header.format if header else "", "png")
    check_format_limit(fmt, width, height, options.format is not None)
    depth = 16 if options.keep_depth and fmt in ("png", "tif") and image_bit_depth(data) >= 16 else 8
    return Upload(array=array, width=width, height=height, format=fmt, bit_depth=depth)


def encode_result(array: np.ndarray, upload: Upload) -> bytes:
    """The bytes `img2img translate` would write for this output."""
    return encode_image(array, upload.format, bit_depth=upload.bit_depth, name=IMAGE_FIELD)
